"""In-memory state of the Candela emulator: users, tokens, slots, sessions, faults and statistics.

Everything runs on the server's single event loop (all handlers are ``async``), so no locks are
needed.  Domain errors are raised as :class:`ApiError` and turned into ``{"detail": ...}`` bodies.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from airflow_provider_candela.emulator.config import AppSpec, Catalog, EmulatorConfig, ModelSpec
from airflow_provider_candela.models import (
    DEFAULT_SCOPE,
    DevSessionStartRequest,
    ObjectId,
    ObjectMetadata,
    Session,
    SessionStartRequest,
    SlotData,
    SlotState,
)

__all__ = ["ApiError", "EmulatorState", "Fault", "SlotRecord", "StoredSession"]

FIRST_VERSION: Final = "1.0.0"
_FAULT_KEYS: Final = frozenset(
    {
        "match",
        "count",
        "skip",
        "status",
        "retry_after",
        "body",
        "delay",
        "drop",
        "after",
        "detach",
        "cut_after_events",
        "not_json",
        "missing_field",
        "extra_field",
        "user",
        "lose",
    }
)
_ACTION_KEYS: Final = (
    "status",
    "delay",
    "drop",
    "cut_after_events",
    "not_json",
    "missing_field",
    "extra_field",
    "lose",
)
#: What the ``lose`` fault takes from the caller before its request is handled (as if done from outside).
_LOSSES: Final = ("slot", "session", "slot_errored")
_NO_BODY: Final = object()


class ApiError(Exception):
    """An error answer of the emulated API: ``status`` and FastAPI-style ``detail``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers


@dataclass
class Fault:
    """An injected fault; see ``POST /_emulator/faults``."""

    fault_id: int
    method: str | None
    path: str | None
    remaining: int
    spec: dict[str, Any]
    #: Matching requests still to let through before the fault applies.
    skip: int = 0

    @property
    def status(self) -> int | None:
        value = self.spec.get("status")
        return int(value) if value is not None else None

    @property
    def drop(self) -> bool:
        return bool(self.spec.get("drop"))

    @property
    def after(self) -> bool:
        return bool(self.spec.get("after"))

    @property
    def delay(self) -> float:
        return float(self.spec.get("delay") or 0.0)

    @property
    def detach(self) -> bool:
        """Read the whole request first, then act on it after ``delay`` even if the client has gone."""
        return bool(self.spec.get("detach"))

    @property
    def cut_after_events(self) -> int | None:
        value = self.spec.get("cut_after_events")
        return int(value) if value is not None else None

    @property
    def transforms(self) -> bool:
        """True when the handler's response must be rewritten (not_json, missing/extra field, cut)."""
        return bool(
            self.spec.get("not_json")
            or self.spec.get("missing_field")
            or self.spec.get("extra_field")
            or self.spec.get("cut_after_events") is not None
        )

    @property
    def user(self) -> str | None:
        """Only this user's requests match (the bearer token's user)."""
        value = self.spec.get("user")
        return str(value) if value is not None else None

    @property
    def lose(self) -> str | None:
        """Before the request is handled: dispose the caller's slot, stop its session, or make its slot ERRORED."""
        value = self.spec.get("lose")
        return str(value) if value is not None else None

    def matches(self, method: str, path: str, user: str | None = None) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path is None or self.path == path)
            and (self.user is None or self.user == user)
        )

    def to_json(self) -> dict[str, Any]:
        return {"id": self.fault_id, **self.spec, "remaining": self.remaining, "skip": self.skip}


def parse_fault(raw: Any, fault_id: int) -> Fault:
    """Validate a fault dict.

    :raises ValueError: naming the offending key.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"a fault must be a JSON object, got {raw!r}")
    unknown = set(raw) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys {sorted(unknown)}; allowed: {sorted(_FAULT_KEYS)}")
    if raw.get("detach") and not raw.get("delay"):
        raise ValueError("'detach' needs a 'delay': the seconds after which the request is carried out")
    if not any(raw.get(key) not in (None, False) for key in _ACTION_KEYS):
        raise ValueError(f"a fault needs at least one of {', '.join(_ACTION_KEYS)}")
    method: str | None = None
    path: str | None = None
    match = raw.get("match")
    if match is not None:
        if not isinstance(match, str) or not match.strip():
            raise ValueError("'match' must be a string such as 'POST /session' or '/sessions/exists'")
        parts = match.split()
        if len(parts) == 1:
            path = parts[0]
        elif len(parts) == 2:
            method, path = parts[0].upper(), parts[1]
        else:
            raise ValueError(f"'match' {match!r} must be 'METHOD /path' or '/path'")
        if not path.startswith("/"):
            raise ValueError(f"'match' path {path!r} must start with '/'")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise ValueError("'count' must be a positive integer, or -1 for 'until cleared'")
    skip = raw.get("skip", 0)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise ValueError("'skip' must be a non-negative integer: matching requests let through first")
    status = raw.get("status")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599):
        raise ValueError(f"'status' must be an HTTP status code (100-599), got {status!r}")
    for key in ("delay",):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise ValueError(f"'{key}' must be a non-negative number of seconds, got {value!r}")
    cut = raw.get("cut_after_events")
    if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool) or cut < 0):
        raise ValueError(f"'cut_after_events' must be a non-negative integer, got {cut!r}")
    retry_after = raw.get("retry_after")
    if retry_after is not None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, str | int | float):
            raise ValueError("'retry_after' must be seconds (number or string) or an HTTP date string")
        raw = {**raw, "retry_after": _format_retry_after(retry_after)}
    if raw.get("lose") is not None and raw.get("lose") not in _LOSSES:
        raise ValueError(f"'lose' must be one of {', '.join(_LOSSES)}, got {raw.get('lose')!r}")
    if raw.get("user") is not None and not isinstance(raw.get("user"), str):
        raise ValueError("'user' must be a username")
    missing = raw.get("missing_field")
    if missing is not None and (not isinstance(missing, str) or not missing):
        raise ValueError("'missing_field' must be the name of a JSON field, e.g. 'obj_id'")
    spec = {key: value for key, value in raw.items() if key not in ("count", "skip")}
    return Fault(fault_id=fault_id, method=method, path=path, remaining=count, spec=spec, skip=skip)


def _format_retry_after(value: str | int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two credentials, any characters (``compare_digest`` on str takes ASCII only)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@dataclass
class SlotRecord:
    """A slot bound to a user.  Its state is computed from the clock (no background work)."""

    slot_id: str
    host_id: str
    slot_type: str
    owner: str
    created: datetime
    started_at: float
    startup_seconds: float
    fails: bool = False

    def state(self, now: float | None = None) -> SlotState:
        """START_REQUEST, NODE_STARTING, HOST_STARTING, then HOST_READY (ERRORED if it ``fails``)."""
        end = SlotState.ERRORED if self.fails else SlotState.HOST_READY
        if self.startup_seconds <= 0:
            return end
        elapsed = (time.monotonic() if now is None else now) - self.started_at
        step = int(elapsed / (self.startup_seconds / 3.0))
        return end if step >= int(SlotState.HOST_READY) else SlotState(step)

    def to_model(self, domain: str) -> SlotData:
        state = self.state()
        return SlotData(
            slot_id=self.slot_id,
            slot_type=self.slot_type,
            domain=domain,
            state=int(state),
            assigned_to=self.owner,
            url=None,
            created=self.created,
            assigned=self.created,
            disposed=None,
            ready=self.created + timedelta(seconds=self.startup_seconds) if state == SlotState.HOST_READY else None,
        )


@dataclass
class StoredSession:
    """One version of a session."""

    metadata: ObjectMetadata
    session: Session
    kind: str  # "pipeline" or "agent"
    app_label: str  # "scope/identifier:version" of the app, or "dev circuit"


@dataclass
class Stats:
    """Counters reported by ``GET /_emulator/stats``."""

    requests: defaultdict[str, defaultdict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    requests_total: int = 0
    token_grants: dict[str, int] = field(default_factory=lambda: {"password": 0, "refresh": 0})
    tcp_connections: int = 0
    sessions_started: int = 0

    def count(self, key: str, status: int | str) -> None:
        self.requests[key][str(status)] += 1


class EmulatorState:
    """The emulated Candela deployment (one domain)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.catalog: Catalog = config.catalog
        self.users: dict[str, str] = {config.username: config.password, **config.catalog.users}
        self.stats = Stats()
        self.faults: list[Fault] = []
        self._fault_ids = 0
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}
        self.slots: dict[str, SlotRecord] = {}
        self.sessions: dict[tuple[str, str], dict[str, StoredSession]] = {}
        self.running: dict[str, tuple[str, str, str]] = {}
        for raw in config.faults:
            self.add_fault(raw)

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        """Forget sessions, slots, tokens, faults and statistics; keep users and config."""
        self.stats = Stats()
        self.faults.clear()
        self._access.clear()
        self._refresh.clear()
        self.slots.clear()
        self.sessions.clear()
        self.running.clear()

    def add_fault(self, raw: Any) -> Fault:
        self._fault_ids += 1
        fault = parse_fault(raw, self._fault_ids)
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str, authorization: str | None = None) -> Fault | None:
        """The first fault matching this request (its count is used up), or None."""
        user = self.user_of(authorization) if any(f.user is not None for f in self.faults) else None
        for fault in self.faults:
            if fault.matches(method, path, user):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                return fault
        return None

    def user_of(self, authorization: str | None) -> str | None:
        """The user of an ``Authorization`` header, or None (never an error: faults match on it)."""
        try:
            return self.authenticate(authorization)
        except ApiError:
            return None

    def lose(self, username: str | None, what: str) -> None:
        """Take ``what`` (see :data:`_LOSSES`) from ``username``, as an administrator or a failure would."""
        if username is None:
            return
        if what == "slot":
            self.slots.pop(username, None)
            self.running.pop(username, None)
        elif what == "session":
            self.running.pop(username, None)
        elif username in self.slots:
            self.slots[username].fails = True
            self.slots[username].startup_seconds = 0
            self.running.pop(username, None)

    def expire_tokens(self) -> int:
        """Invalidate every issued access token (refresh tokens and the PAT stay valid)."""
        count = len(self._access)
        for token, (user, _) in list(self._access.items()):
            self._access[token] = (user, 0.0)
        return count

    def issued_tokens(self) -> dict[str, list[str]]:
        """The access and refresh tokens issued since the last reset (expired ones included)."""
        return {"access_tokens": list(self._access), "refresh_tokens": list(self._refresh)}

    def snapshot(self) -> dict[str, Any]:
        sessions_stored = sum(len(versions) for versions in self.sessions.values())
        return {
            "requests": {key: dict(by_status) for key, by_status in self.stats.requests.items()},
            "requests_total": self.stats.requests_total,
            "token_grants": dict(self.stats.token_grants),
            "tcp_connections": self.stats.tcp_connections,
            "sessions_started": self.stats.sessions_started,
            "sessions_stored": sessions_stored,
            "running_sessions": {
                user: (
                    {"scope": run[0], "identifier": run[1], "version": run[2]}
                    if (run := self.running.get(user))
                    else None
                )
                for user in self.users
            },
            "slots": {
                user: (
                    {"slot_type": slot.slot_type, "state": int(slot.state())}
                    if (slot := self.slots.get(user))
                    else None
                )
                for user in self.users
            },
        }

    # ------------------------------------------------------------------ auth
    def _issue(self, username: str, refresh_token: str | None = None) -> dict[str, Any]:
        ttl = self.config.token_ttl
        access = secrets.token_urlsafe(32)
        self._access[access] = (username, time.monotonic() + ttl)
        if refresh_token is None:
            refresh_token = secrets.token_urlsafe(32)
            self._refresh[refresh_token] = username
        return {
            "access_token": access,
            "refresh_token": refresh_token,
            "expires_in": max(1, math.ceil(ttl)),
            "token_type": "Bearer",
            "scope": "openid client groups offline_access",
        }

    def check_client(self, client_id: str | None, client_secret: str | None) -> None:
        if client_id is None or client_secret is None:
            raise ApiError(
                401,
                {"error": "invalid_client", "error_description": "Client authentication is required."},
            )
        if not (
            _same_secret(client_id, self.config.client_id) and _same_secret(client_secret, self.config.client_secret)
        ):
            raise ApiError(401, {"error": "invalid_client", "error_description": "The client credentials are invalid."})

    def password_grant(self, username: str | None, password: str | None) -> dict[str, Any]:
        if not username or password is None:
            raise ApiError(
                400,
                {"error": "invalid_request", "error_description": "The password grant needs username and password."},
            )
        expected = self.users.get(username)
        if expected is None or not _same_secret(password, expected):
            raise ApiError(
                400, {"error": "invalid_grant", "error_description": "The credentials provided were invalid."}
            )
        self.stats.token_grants["password"] += 1
        return self._issue(username)

    def refresh_grant(self, refresh_token: str | None) -> dict[str, Any]:
        if not refresh_token:
            raise ApiError(
                400, {"error": "invalid_request", "error_description": "The refresh grant needs refresh_token."}
            )
        username = self._refresh.get(refresh_token)
        if username is None:
            raise ApiError(
                400, {"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."}
            )
        self.stats.token_grants["refresh"] += 1
        return self._issue(username, refresh_token)

    def authenticate(self, authorization: str | None) -> str:
        """Username for an ``Authorization`` header value.

        :raises ApiError: 401 with ``WWW-Authenticate: Bearer`` when missing, unknown or expired.
        """
        challenge = {"WWW-Authenticate": "Bearer"}
        if not authorization:
            raise ApiError(401, "Not authenticated: send 'Authorization: Bearer <token>'", challenge)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Invalid authorization header: expected 'Bearer <token>'", challenge)
        entry = self._access.get(token)
        if entry is not None:
            if entry[1] > time.monotonic():
                return entry[0]
            raise ApiError(
                401,
                "The access token has expired: get a new one from the token URL (refresh grant)",
                {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="token expired"'},
            )
        pat = self.config.access_token
        if pat and _same_secret(token, pat):
            return self.config.username
        raise ApiError(
            401,
            "The access token is not valid: get a token from the token URL or use a valid personal access token",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    # ------------------------------------------------------------------ slots
    def assign_slot(self, username: str, slot_type: str) -> None:
        if slot_type not in self.catalog.slot_types:
            raise ApiError(
                400,
                f"Unknown slot type {slot_type!r}: no slots of this type are available. "
                f"Available slot types: {', '.join(self.catalog.slot_types)}",
            )
        if username in self.slots:
            return
        self.slots[username] = SlotRecord(
            slot_id=f"slot-{secrets.token_hex(6)}",
            host_id=f"host-{secrets.token_hex(6)}",
            slot_type=slot_type,
            owner=username,
            created=datetime.now(UTC),
            started_at=time.monotonic(),
            startup_seconds=self.config.slot_startup_seconds,
            fails=self.config.slot_start_fails,
        )

    def _slot(self, username: str) -> SlotRecord:
        slot = self.slots.get(username)
        if slot is None:
            raise ApiError(
                400,
                f"User {username!r} has no slot: assign one with PUT /slot?slot_type="
                f"{self.catalog.slot_types[0]} first",
            )
        return slot

    def dispose_slot(self, username: str) -> None:
        self._slot(username)
        del self.slots[username]
        self.running.pop(username, None)

    def slot_state(self, username: str) -> int:
        return int(self._slot(username).state())

    def slot_metadata(self, username: str) -> SlotData:
        return self._slot(username).to_model(self.config.domain)

    # ------------------------------------------------------------------ sessions
    def _ready_slot(self, username: str) -> SlotRecord:
        slot = self.slots.get(username)
        if slot is None:
            raise ApiError(
                400,
                f"Cannot start a session: user {username!r} has no slot. Assign a slot with "
                f"PUT /slot?slot_type={self.catalog.slot_types[0]} and wait until GET /slot/state is "
                f"{int(SlotState.HOST_READY)} (HOST_READY)",
            )
        state = slot.state()
        if state != SlotState.HOST_READY:
            raise ApiError(
                400,
                f"Cannot start a session: your slot {slot.slot_id} is not ready (state {int(state)} {state.name}). "
                f"Wait until GET /slot/state is {int(SlotState.HOST_READY)} (HOST_READY)",
            )
        return slot

    def _slot_is_free(self, username: str) -> None:
        """The last check of a start, once the request itself is known to be valid (409 otherwise)."""
        running = self.running.get(username)
        if running is not None:
            raise ApiError(
                409,
                f"A session is already running on your slot: {running[0]}/{running[1]}:{running[2]}; "
                "stop it first (GET /session/stop)",
            )

    @staticmethod
    def _resolve(kind: str, ref: ObjectId, known: dict[tuple[str, str], Any]) -> tuple[Any, str]:
        spec: AppSpec | ModelSpec | None = known.get((ref.scope, ref.identifier))
        if spec is None:
            listing = ", ".join(f"{s}/{i}:{v.versions[-1]}" for (s, i), v in sorted(known.items())) or "none"
            raise ApiError(400, f"Unknown {kind} '{ref.scope}/{ref.identifier}'. Available {kind}s: {listing}")
        if ref.version is None:
            return spec, spec.versions[-1]
        if ref.version not in spec.versions:
            raise ApiError(
                400,
                f"{kind.capitalize()} '{ref.scope}/{ref.identifier}' has no version {ref.version!r}. "
                f"Available versions: {', '.join(spec.versions)} (omit the version for the latest)",
            )
        return spec, ref.version

    def _new_identity(self, scope: str | None, parent: ObjectId | None) -> tuple[str, str, str]:
        if parent is None:
            return scope or DEFAULT_SCOPE, f"session-{secrets.token_hex(6)}", FIRST_VERSION
        versions = self.sessions.get((parent.scope, parent.identifier))
        if not versions or (parent.version is not None and parent.version not in versions):
            raise ApiError(
                400,
                f"Parent session '{parent}' does not exist: give the scope/identifier (and optionally the "
                "version) of an existing session",
            )
        latest = list(versions)[-1]
        return parent.scope, parent.identifier, _bump(latest)

    def _store(
        self, username: str, identity: tuple[str, str, str], session: Session, *, kind: str, label: str
    ) -> ObjectMetadata:
        scope, identifier, version = identity
        metadata = ObjectMetadata(
            obj_id=ObjectId(scope=scope, identifier=identifier, version=version),
            domain=self.config.domain,
            created_by=username,
            created_at=datetime.now(UTC),
            description=f"{kind} session of {label}",
        )
        self.sessions.setdefault((scope, identifier), {})[version] = StoredSession(metadata, session, kind, label)
        self.running[username] = identity
        self.stats.sessions_started += 1
        return metadata

    def start_session(self, username: str, request: SessionStartRequest) -> ObjectMetadata:
        slot = self._ready_slot(username)
        app, app_version = self._resolve("app", request.app, self.catalog.apps)
        _, model_version = self._resolve("model", request.model_cfg, self.catalog.models)
        for name in ("circuit_override", "directive_override"):
            override: ObjectId | None = getattr(request, name)
            if override is not None and override.scope != request.app.scope:
                raise ApiError(
                    400,
                    f"{name} '{override}' must be in the same scope as the app ('{request.app.scope}')",
                )
        identity = self._new_identity(request.scope, request.parent_session)
        self._slot_is_free(username)
        app_id = ObjectId(scope=request.app.scope, identifier=request.app.identifier, version=app_version)
        session = Session(
            app=app_id,
            model_cfg=ObjectId(
                scope=request.model_cfg.scope, identifier=request.model_cfg.identifier, version=model_version
            ),
            host_id=slot.host_id,
            parent_session=request.parent_session,
            circuit_override=request.circuit_override,
            directive_override=request.directive_override,
            dev_session=False,
        )
        return self._store(username, identity, session, kind=app.kind, label=str(app_id))

    def start_dev_session(self, username: str, request: DevSessionStartRequest) -> ObjectMetadata:
        slot = self._ready_slot(username)
        _, model_version = self._resolve("model", request.model_id, self.catalog.models)
        if request.circuit.first not in request.circuit.nodes:
            raise ApiError(
                400,
                f"circuit.first {request.circuit.first!r} is not a node of the circuit "
                f"(nodes: {', '.join(request.circuit.nodes)})",
            )
        identity = self._new_identity(request.scope, request.parent_session)
        self._slot_is_free(username)
        session = Session(
            app=None,
            model_cfg=ObjectId(
                scope=request.model_id.scope, identifier=request.model_id.identifier, version=model_version
            ),
            host_id=slot.host_id,
            parent_session=request.parent_session,
            dev_session=True,
        )
        return self._store(username, identity, session, kind="agent", label="a dev circuit")

    def stop_session(self, username: str) -> None:
        self.running.pop(username, None)

    def _versions(self, scope: str, identifier: str, version: str | None) -> dict[str, StoredSession]:
        versions = self.sessions.get((scope, identifier))
        label = f"{scope}/{identifier}" + (f":{version}" if version else "")
        if not versions or (version is not None and version not in versions):
            raise ApiError(404, f"Session '{label}' not found")
        return versions if version is None else {version: versions[version]}

    def get_session(self, scope: str, identifier: str, version: str | None) -> StoredSession:
        return list(self._versions(scope, identifier, version).values())[-1]

    def session_exists(self, scope: str, identifier: str, version: str | None) -> bool:
        versions = self.sessions.get((scope, identifier))
        return bool(versions) and (version is None or version in versions)  # type: ignore[operator]

    def list_sessions(self, all_versions: bool) -> list[ObjectMetadata]:
        if all_versions:
            return [stored.metadata for versions in self.sessions.values() for stored in versions.values()]
        return [list(versions.values())[-1].metadata for versions in self.sessions.values() if versions]

    def delete_session(self, scope: str, identifier: str, version: str | None) -> list[ObjectMetadata]:
        targets = self._versions(scope, identifier, version)
        deleted = [stored.metadata for stored in targets.values()]
        versions = self.sessions[(scope, identifier)]
        for ver in list(targets):
            del versions[ver]
            for user, run in list(self.running.items()):
                if run == (scope, identifier, ver):
                    del self.running[user]
        if not versions:
            del self.sessions[(scope, identifier)]
        return deleted

    def prompt_target(self, username: str, scope: str, session_id: str, wanted: str) -> StoredSession:
        """The running session a prompt goes to; checks it runs on the caller's slot and its kind."""
        versions = self.sessions.get((scope, session_id))
        if not versions:
            raise ApiError(
                400,
                f"Session '{scope}/{session_id}' does not exist: start one with POST /session and send "
                "its obj_id.identifier as session_id",
            )
        running = self.running.get(username)
        if running is None or running[:2] != (scope, session_id):
            now = f"{running[0]}/{running[1]}:{running[2]}" if running else "nothing"
            raise ApiError(
                400,
                f"Session '{scope}/{session_id}' is not running on your slot (running: {now}); "
                "start it (POST /session) before sending prompts",
            )
        stored = versions[running[2]]
        if stored.kind != wanted:
            right = "/session/agent_submit" if stored.kind == "agent" else "/session/pipeline_submit"
            raise ApiError(
                400,
                f"Session '{scope}/{session_id}' runs {stored.kind} app {stored.app_label}: "
                f"send its prompts with POST {right}",
            )
        return stored


def _bump(version: str) -> str:
    """Next minor version: ``1.0.0`` -> ``1.1.0`` (non-semver versions get ``.1`` appended)."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return f"{version}.1"
