"""CandelaHook: an Airflow connection -> authenticated HTTP -> the wire models of :mod:`models`.

One hook = one validated configuration, one ``requests.Session`` (keep-alive) and one cached
bearer token.  Every endpoint of the Gen A Sessions and Slots APIs is a typed method returning
models, never a ``requests.Response``.  Retries (tenacity) honour ``Retry-After``; calls that
start a session are reconciled instead of being replayed blindly, and prompts are never replayed
once the server may have received them.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeVar
from urllib.request import getproxies

import requests
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook, mask_secret
from pydantic import TypeAdapter, ValidationError

from airflow_provider_candela import __version__
from airflow_provider_candela._validation import IF_SESSION_RUNNING, require_prompt
from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaAuthError,
    CandelaCancelledError,
    CandelaConnectionConfigError,
    CandelaError,
    CandelaInputError,
    CandelaResponseError,
    CandelaSessionRunningError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks._auth import TokenManager
from airflow_provider_candela.hooks._config import DEFAULT_SLOT_TYPE, CandelaConfig, load_config
from airflow_provider_candela.hooks._retry import (
    RETRY_STATUSES,
    Retryable,
    RetrySettings,
    call_with_retries,
    failed_before_sending,
    parse_retry_after,
)
from airflow_provider_candela.hooks._stream import CandelaEventStream
from airflow_provider_candela.hooks._transport import CandelaAdapter, Exchange, tracking
from airflow_provider_candela.models import (
    DEFAULT_SCOPE,
    MAX_PROMPT_BYTES,
    CircuitDTO,
    DevSessionStartRequest,
    Directive,
    HTTPValidationError,
    ObjectId,
    ObjectMetadata,
    Session,
    SessionStartRequest,
    SlotData,
    SlotState,
    SubmitPrompt,
    ToolModule,
)

__all__ = ["CandelaEventStream", "CandelaHook"]

T = TypeVar("T")
_Kind = Literal["idempotent", "start", "submit"]

USER_AGENT: Final = f"airflow-provider-candela/{__version__}"

_OBJECT_METADATA = TypeAdapter(ObjectMetadata)
_OBJECT_METADATA_LIST = TypeAdapter(list[ObjectMetadata])
_SESSION = TypeAdapter(Session)
_SLOT_DATA = TypeAdapter(SlotData)
_BOOL = TypeAdapter(bool)
_INT = TypeAdapter(int)
_JSON_OBJECT = TypeAdapter(dict[str, Any])


@dataclass(frozen=True)
class _Call:
    """One API call: what to send and how it may be retried."""

    method: str
    path: str
    kind: _Kind = "idempotent"
    params: Mapping[str, str] | None = None
    body: Any = None
    stream: bool = False

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"


class _Ambiguous(Exception):
    """A start call failed after the server may have acted on it; reconcile before any retry."""

    def __init__(self, error: CandelaError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _DeadlinePassed(requests.exceptions.Timeout):
    """An attempt ran past its overall deadline (e.g. a server sending its answer a byte at a time)."""


#: Candela's answer when a start finds another session running on the slot (409, or a 400 saying so).
_SESSION_RUNNING = re.compile(r"already running|session is running|running session", re.IGNORECASE)


def _keep_request(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Session auth that changes nothing (it only keeps requests from applying ~/.netrc)."""
    return request


class CandelaHook(BaseHook):
    """Talk to the FINBOURNE Candela Sessions API through an Airflow connection.

    The connection (type ``candela``): ``host`` is the API base URL
    (``https://<domain>.lusid.com/candela``), ``login``/``password`` the FINBOURNE user; the extras
    ``token_url``, ``client_id``, ``client_secret`` configure the OAuth2 password grant, or
    ``access_token`` holds a personal access token (then no OAuth2 grant is made).  Optional extras:
    ``app_name`` (sent as ``X-LUSID-Application``), ``verify`` (true/false/CA bundle path),
    ``proxy``, ``timeout`` (``"connect,read"`` seconds, default ``10,300``), ``max_retries``
    (default 5), ``slot_type`` (default ``gpu-medium``) and ``secrets_file`` (a FINBOURNE
    ``secrets.json`` that fills whatever the connection leaves empty).  Extras may carry the
    ``extra__candela__`` prefix.

    :param candela_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout: seconds, ``(connect, read)`` or ``"c,r"``.
    :param max_retries: overrides the connection's ``max_retries``.

    The class attributes ``retry_wait_base``, ``retry_wait_max``, ``retry_after_cap`` and
    ``retry_deadline`` (seconds) tune the backoff; set them on an instance to change one hook.
    """

    conn_name_attr = "candela_conn_id"
    default_conn_name = "candela_default"
    conn_type = "candela"
    hook_name = "Candela"

    #: First backoff step in seconds (waits grow as ``base * 2**n`` with jitter).
    retry_wait_base: float = 1.0
    #: Longest single backoff wait in seconds.
    retry_wait_max: float = 30.0
    #: Longest wait honoured from a ``Retry-After`` header, in seconds.
    retry_after_cap: float = 60.0
    #: No retry starts later than this many seconds after the first attempt of a call.
    retry_deadline: float = 900.0
    #: Clock skew tolerated when looking for a session started by a lost request (server clock known).
    reconcile_skew: float = 2.0
    #: Same, when the server sent no ``Date`` header to measure its clock against ours.
    reconcile_skew_unknown_clock: float = 30.0
    #: Bytes read at a time from the agent stream.
    stream_chunk_size: int = 8192
    #: Largest prompt sent (UTF-8 bytes).  A prompt is text for a language model: one far larger than any
    #: model's context is a mistake (a file read whole, a template rendering a table) and is refused before
    #: it is uploaded.  Raise it on a subclass or an instance if your deployment takes larger prompts.
    max_prompt_bytes: int = MAX_PROMPT_BYTES

    def __init__(
        self,
        candela_conn_id: str = default_conn_name,
        *,
        timeout: float | tuple[float, float] | str | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__()
        self.candela_conn_id = candela_conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries
        self._config: CandelaConfig | None = None
        self._session: requests.Session | None = None
        self._tokens: TokenManager | None = None
        self._secrets: set[str] = set()
        self._server_clock_offset: float | None = None
        self._me: str | None = None
        self._cancelled: str | None = None
        self._cancel_event = threading.Event()
        # Exchanges in flight, by id: plain dict operations, so that cancel() needs no lock (it may run in a
        # signal handler that interrupted a thread of this hook).
        self._exchanges: dict[int, Exchange] = {}

    # ------------------------------------------------------------------------------------------
    # configuration, session, lifecycle

    @property
    def config(self) -> CandelaConfig:
        """The validated connection, read once (lazily, before the first HTTP call).

        :raises CandelaConnectionConfigError: naming the missing or malformed field and the fix.
        """
        if self._config is None:
            try:
                conn = self.get_connection(self.candela_conn_id)
            except AirflowNotFoundException:
                env = f"AIRFLOW_CONN_{self.candela_conn_id.upper()}"
                raise CandelaConnectionConfigError(
                    f"Connection {self.candela_conn_id!r} is not defined: create it (type 'Candela') in the "
                    f"Airflow UI or CLI, or set the environment variable {env} to its JSON form"
                ) from None
            conn_type = getattr(conn, "conn_type", None)
            if conn_type and conn_type != self.conn_type:
                self.log.warning(
                    "Connection %r has type %r; a Candela connection has type %r",
                    self.candela_conn_id,
                    conn_type,
                    self.conn_type,
                )
            config = load_config(
                self.candela_conn_id,
                host=conn.host,
                login=conn.login,
                password=conn.password,
                extra=conn.extra,
                port=conn.port,
                schema=conn.schema,
                timeout=self._timeout_override,
                max_retries=self._max_retries_override,
            )
            for secret in config.secrets():
                self._register_secret(secret)
            self._config = config
        return self._config

    def get_conn(self) -> requests.Session:
        """The hook's ``requests.Session`` (created on first use; keep-alive across calls)."""
        if self._session is None:
            cfg = self.config
            session = requests.Session()
            adapter = CandelaAdapter()
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
            if cfg.app_name:
                session.headers["X-LUSID-Application"] = cfg.app_name
            session.verify = cfg.verify
            # Our Authorization header is set on every call: never let requests replace it with ~/.netrc.
            session.auth = _keep_request
            if cfg.proxy:
                session.proxies = {"http": cfg.proxy, "https": cfg.proxy}
                session.trust_env = False
            elif not getproxies():
                # No proxy in the environment: stop requests from re-reading the environment on every
                # call (about 0.3 ms each); the one setting left to take from it is the CA bundle.
                session.trust_env = False
            if not session.trust_env and cfg.verify is True:
                session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            self._session = session
        return self._session

    def cancel(self, reason: str) -> None:
        """Abort every call of this hook at once and refuse new ones; safe from any thread or a signal handler.

        A blocked read returns immediately, and the call raises :class:`CandelaCancelledError` (never
        retried).  Used by the operators' ``on_kill``.  A cancelled hook stays cancelled.

        :param reason: what cancelled it, for the error message (e.g. ``"task 'prompt' was killed"``).
        """
        self._cancelled = reason
        self._cancel_event.set()
        for exchange in list(self._exchanges.values()):
            exchange.abort("cancelled")

    @property
    def cancelled(self) -> str | None:
        """Why the hook was cancelled (:meth:`cancel`), or None."""
        return self._cancelled

    def _raise_if_cancelled(self, what: str, progress: str = "") -> None:
        if self._cancelled is not None:
            raise CandelaCancelledError(
                f"{what} was abandoned{progress}: {self._cancelled}. Nothing was retried; a retry of the task "
                "starts afresh"
            )

    def _sleep(self, seconds: float) -> None:
        """Sleep that a :meth:`cancel` cuts short (then raises :class:`CandelaCancelledError`)."""
        self._cancel_event.wait(seconds)
        self._raise_if_cancelled("A wait")

    def _http(
        self, method: str, url: str, what: str, *, fix: str, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        """Send one request: redirects refused, the whole answer bounded by connect + read timeout, cancellable.

        For ``stream=True`` the exchange stays open (see :meth:`_release`) until the stream is closed.

        :param fix: the connection setting to check when the answer is a redirect (e.g. ``"host"``).
        :raises _DeadlinePassed: the answer did not complete within connect + read timeout.
        :raises CandelaCancelledError: the hook was cancelled meanwhile.
        """
        self._raise_if_cancelled(what)
        connect, read = self.config.timeout
        exchange = Exchange(what, time.monotonic() + connect + read, f"{connect:g} s to connect + {read:g} s to read")
        self._exchanges[id(exchange)] = exchange
        try:
            with tracking(exchange):
                resp = self.get_conn().request(
                    method, url, timeout=(connect, read), stream=stream, allow_redirects=False, **kwargs
                )
            if exchange.aborted is not None:
                resp.close()
                raise requests.ConnectionError("aborted")
        except requests.RequestException as exc:
            self._release(exchange)
            self._raise_if_cancelled(what)
            if exchange.aborted == "deadline":
                raise _DeadlinePassed(
                    f"no complete answer within {connect + read:g} s ({exchange.budget} bound each attempt)"
                ) from exc
            raise
        except BaseException:
            self._release(exchange)
            raise
        if 300 <= resp.status_code < 400:
            self._release(exchange)
            location = self._scrub(resp.headers.get("Location", "?"))
            resp.close()
            raise CandelaApiError(
                f"{what} was answered with {resp.status_code} redirecting to {location}: redirects are not "
                f"followed (the request and its credentials would go to another address). Set the {fix} of "
                f"connection {self.candela_conn_id!r} to the right URL",
                status=resp.status_code,
                method=method,
                path=what.split(" ", 1)[-1],
                detail=location,
            )
        if stream and resp.ok:
            resp.candela_exchange = exchange  # type: ignore[attr-defined]
            return resp
        try:
            if stream:
                resp.content  # noqa: B018 (an error's body is read within the deadline, like any answer)
        except requests.RequestException as exc:
            resp.close()
            self._raise_if_cancelled(what)
            if exchange.aborted == "deadline":
                raise _DeadlinePassed(f"the error's body did not arrive within {exchange.budget}") from exc
            raise
        finally:
            self._release(exchange)
        return resp

    def _release(self, exchange: Exchange) -> None:
        exchange.finish()
        self._exchanges.pop(id(exchange), None)

    def _post_form(self, url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        """The token endpoint's POST (for :class:`TokenManager`), through the same HTTP core."""
        return self._http("POST", url, f"POST {url}", fix="extra token_url", data=body, headers=headers)

    def close(self) -> None:
        """Close the HTTP session (its pooled connections).  The hook stays usable."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> CandelaHook:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def _auth(self) -> TokenManager:
        if self._tokens is None:
            self._tokens = TokenManager(
                self.config,
                post=self._post_form,
                settings=self._retry_settings,
                register_secret=self._register_secret,
                scrub=self._scrub,
                log=self.log,
            )
        return self._tokens

    def _retry_settings(self) -> RetrySettings:
        return RetrySettings(
            max_retries=self.config.max_retries,
            wait_base=self.retry_wait_base,
            wait_max=self.retry_wait_max,
            retry_after_cap=self.retry_after_cap,
            deadline=self.retry_deadline,
            sleep=self._sleep,
        )

    def _register_secret(self, value: str) -> None:
        if value and value not in self._secrets:
            self._secrets.add(value)
            mask_secret(value)

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------------------------------
    # connection form (Airflow 2.11; Airflow 3.2+ reads get_provider_info's conn-fields instead)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the connection form, rendered from ``get_provider_info.CONN_FIELDS``."""
        from flask_appbuilder.fieldwidgets import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
            BS3PasswordFieldWidget,
            BS3TextFieldWidget,
        )
        from wtforms import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
            IntegerField,
            PasswordField,
            StringField,
        )
        from wtforms.validators import Optional  # type: ignore[import-not-found, import-untyped, unused-ignore]

        from airflow_provider_candela.get_provider_info import CONN_FIELDS

        widgets: dict[str, Any] = {}
        for name, field in CONN_FIELDS.items():
            schema = field.get("schema", {})
            types = schema.get("type", "string")
            types = [types] if isinstance(types, str) else list(types)
            kwargs: dict[str, Any] = {
                "label": field["label"],
                "description": field.get("description", ""),
                "render_kw": {"placeholder": field["placeholder"]} if field.get("placeholder") else None,
            }
            if schema.get("format") == "password":
                widgets[name] = PasswordField(widget=BS3PasswordFieldWidget(), **kwargs)
            elif "integer" in types:
                widgets[name] = IntegerField(widget=BS3TextFieldWidget(), validators=[Optional()], **kwargs)
            else:
                widgets[name] = StringField(widget=BS3TextFieldWidget(), **kwargs)
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden fields, relabels and placeholders, from ``get_provider_info.UI_FIELD_BEHAVIOUR``.

        The provider-info schema spells the keys ``hidden-fields``; the hook method (Airflow 2.11)
        must use ``hidden_fields``, as Airflow 3 itself converts them.
        """
        import copy

        from airflow_provider_candela.get_provider_info import UI_FIELD_BEHAVIOUR

        return {key.replace("-", "_"): copy.deepcopy(value) for key, value in UI_FIELD_BEHAVIOUR.items()}

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and make one real call (``GET /slot/user_has_slot``).  Never raises.

        :return: ``(True, message)`` on success, ``(False, reason)`` otherwise; no secret in either.
        """
        saved = self.retry_deadline
        self.retry_deadline = min(self.retry_deadline, 20.0)
        try:
            has_slot = self.user_has_slot()
            cfg = self.config
            auth = "a personal access token" if cfg.uses_pat else f"user {cfg.username!r}"
            slot = "has a slot" if has_slot else "has no slot yet"
            return True, f"Connected to Candela at {cfg.base_url} with {auth}; the user {slot}."
        except CandelaError as exc:
            return False, self._scrub(str(exc))
        except Exception as exc:
            return False, self._scrub(f"{type(exc).__name__}: {exc}")
        finally:
            self.retry_deadline = saved

    # ------------------------------------------------------------------------------------------
    # HTTP core

    def _note_server_clock(self, resp: requests.Response) -> None:
        date = resp.headers.get("Date")
        if not date:
            return
        try:
            server = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        self._server_clock_offset = server.timestamp() - time.time()

    def _send(self, call: _Call, authorization: str) -> requests.Response:
        headers = {"Authorization": authorization, "CorrelationId": str(uuid.uuid4())}
        resp = self._http(
            call.method,
            self.config.base_url + call.path,
            call.what,
            fix="host",
            params=call.params,
            json=call.body,
            headers=headers,
            stream=call.stream,
        )
        self._note_server_clock(resp)
        return resp

    def _attempt(self, call: _Call) -> requests.Response:
        """One attempt (with at most one re-authentication and replay after a 401).

        :raises Retryable: when another attempt is safe and useful.
        :raises _Ambiguous: (start calls) when the server may have acted on the request.
        :raises CandelaError: otherwise.
        """
        refused: list[str] = []
        renewed = False
        while True:
            authorization = self._auth.authorization()
            try:
                resp = self._send(call, authorization)
            except requests.exceptions.SSLError as exc:
                raise CandelaApiError(
                    f"TLS verification failed for {call.what} at {self.config.base_url} ({type(exc).__name__}): "
                    f"set the extra verify of connection {self.candela_conn_id!r} to the path of your CA bundle",
                    method=call.method,
                    path=call.path,
                    detail=self._scrub(str(exc)),
                ) from exc
            except requests.RequestException as exc:
                raise self._transport_failure(call, exc) from exc
            # On 401: renew and replay.  This call makes at most one grant; when another thread had already
            # renewed the refused token, its token is used and no grant is made (bounded: 3 replays).
            if (
                resp.status_code == 401
                and self._auth.can_reauthenticate
                and not renewed
                and authorization not in refused
                and len(refused) < 3
            ):
                resp.close()
                refused.append(authorization)
                self.log.info("Candela refused the token on %s; re-authenticating", call.what)
                renewed = self._auth.reauthenticate(authorization)
                continue
            break
        reauthenticated = bool(refused)
        if resp.ok:
            return resp
        error = self._api_error(resp, call, reauthenticated=reauthenticated)
        resp.close()
        status = resp.status_code
        if status not in RETRY_STATUSES:
            raise error
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if call.kind == "idempotent" or status == 429:
            # 429: the server refused the request without acting on it, so even a start or a prompt may be resent.
            raise Retryable(error, retry_after)
        if call.kind == "start":
            raise _Ambiguous(error, retry_after)
        raise error.amended(
            "The prompt may or may not have run; it is not resubmitted automatically. Check the session's "
            "output before submitting it again"
        )

    def _transport_failure(self, call: _Call, exc: requests.RequestException) -> Exception:
        cfg = self.config
        if isinstance(exc, _DeadlinePassed):
            failure = (
                f"Candela sent no complete answer to {call.what} at {cfg.base_url} in time: {exc} (the server "
                "answered too slowly or trickled its body)"
            )
        else:
            reason = self._scrub(str(exc))[:300]
            failure = f"Could not complete {call.what} at {cfg.base_url} ({type(exc).__name__}: {reason})"
        error = CandelaApiError(
            f"{failure}. "
            f"Check the host{', proxy' if cfg.proxy else ''} and timeout of connection {self.candela_conn_id!r} "
            "and that Candela is reachable from this worker",
            method=call.method,
            path=call.path,
            detail=self._scrub(str(exc)),
        )
        if call.kind == "idempotent" or failed_before_sending(exc):
            return Retryable(error)
        if call.kind == "start":
            return _Ambiguous(error)
        return CandelaApiError(
            f"{call.what} failed after the prompt was sent ({type(exc).__name__}: {self._scrub(str(exc))[:300]}). "
            "The prompt may or may not have run; it is not resubmitted automatically. Check the session's "
            "output before submitting it again",
            method=call.method,
            path=call.path,
            detail=self._scrub(str(exc)),
        )

    def _execute(self, call: _Call, *, done_statuses: frozenset[int] = frozenset()) -> requests.Response | None:
        """Run an idempotent or prompt call with retries; return its 2xx response.

        :param done_statuses: statuses that, on a *retried* attempt, mean an earlier attempt already
            did the work (e.g. 404 after a DELETE whose response was lost); the call then returns None.
        """
        attempts = 0

        def attempt() -> requests.Response | None:
            nonlocal attempts
            attempts += 1
            try:
                return self._attempt(call)
            except CandelaApiError as exc:
                if attempts > 1 and exc.status in done_statuses:
                    self.log.info("%s answered %s on a retry: an earlier attempt already did it", call.what, exc.status)
                    return None
                raise

        return call_with_retries(attempt, self._retry_settings(), call.what, self.log)

    def _request(self, call: _Call) -> requests.Response:
        resp = self._execute(call)
        assert resp is not None
        return resp

    # ------------------------------------------------------------------------------------------
    # errors and parsing

    def _detail(self, resp: requests.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            text = " ".join(resp.text.split())[:300]
            return self._scrub(text or resp.reason or "no detail")
        if resp.status_code == 422 or (isinstance(data, dict) and isinstance(data.get("detail"), list)):
            try:
                lines = HTTPValidationError.model_validate(data).lines()
            except ValidationError:
                lines = []
            if lines:
                return self._scrub("; ".join(lines))
        if isinstance(data, dict):
            parts = [str(data[k]) for k in ("detail", "title", "message", "error_description", "error") if data.get(k)]
            if isinstance(data.get("errorDetails"), list):
                parts.extend(str(item) for item in data["errorDetails"])
            if parts:
                return self._scrub("; ".join(parts)[:500])
        return self._scrub(str(data)[:300])

    def _api_error(self, resp: requests.Response, call: _Call, *, reauthenticated: bool) -> CandelaApiError:
        status = resp.status_code
        detail = self._detail(resp)
        conn = self.candela_conn_id
        verb = "rejected" if status < 500 else "failed"
        cls: type[CandelaApiError] = CandelaApiError
        if status == 401:
            cls = CandelaAuthError
            if self.config.uses_pat:
                hint = f"The personal access token (extra access_token of connection {conn!r}) was refused: renew it"
            else:
                hint = (
                    f"The token was refused{' even after re-authenticating' if reauthenticated else ''}: check "
                    f"that connection {conn!r} has the token_url, client_id and client_secret of the same "
                    "FINBOURNE domain as its host"
                )
        elif status == 403:
            cls = CandelaAuthError
            who = "the personal access token" if self.config.uses_pat else f"user {self.config.username!r}"
            hint = (
                f"Candela does not allow {who} (connection {conn!r}) to call {call.what}: check the user's "
                "Candela entitlements and the extra app_name"
            )
        elif status == 422:
            hint = f"Candela did not accept the arguments of {call.what}; fix the fields listed"
        elif status == 429:
            hint = "Candela is rate limiting; lower the task concurrency or raise max_retries"
        elif status >= 500:
            hint = "Candela is failing; it is retried automatically when that is safe"
        else:
            hint = ""
        message = f"Candela {verb} {call.what} ({status}): {detail}"
        if hint:
            message = f"{message.rstrip('.')}. {hint}"
        return cls(message, status=status, method=call.method, path=call.path, detail=detail, hint=hint)

    def _parse(self, resp: requests.Response, adapter: TypeAdapter[T], expected: str, call: _Call) -> T:
        try:
            data = resp.json()
        except ValueError:
            snippet = self._scrub(" ".join(resp.text.split())[:200])
            content_type = resp.headers.get("Content-Type", "no content type")
            raise CandelaResponseError(
                f"Candela answered {call.what} with {resp.status_code} but the body is not JSON ({content_type}): "
                f"{snippet!r}. Check that the host of connection {self.candela_conn_id!r} is the Candela API URL, "
                f"e.g. https://<domain>.lusid.com/candela",
                status=resp.status_code,
                method=call.method,
                path=call.path,
                detail=snippet,
            ) from None
        try:
            return adapter.validate_python(data, strict=expected in ("true/false", "an integer"))
        except ValidationError as exc:
            problems: list[str] = []
            for err in exc.errors()[:5]:
                loc = ".".join(str(part) for part in err["loc"])
                if err["type"] == "missing":
                    problems.append(f"missing field {loc!r}")
                elif loc:
                    problems.append(f"field {loc!r}: {err['msg']}")
                else:
                    problems.append(f"expected {expected}, got {type(data).__name__}")
            detail = "; ".join(problems)
            raise CandelaResponseError(
                f"Candela answered {call.what} with {resp.status_code} but not with {expected}: {detail}. "
                "The server may speak another API version than this provider (Gen A Sessions API)",
                status=resp.status_code,
                method=call.method,
                path=call.path,
                detail=detail,
            ) from None

    # ------------------------------------------------------------------------------------------
    # argument helpers

    @staticmethod
    def _object_id(value: ObjectId | str | Mapping[str, Any], argument: str) -> ObjectId:
        try:
            if isinstance(value, ObjectId):
                oid = value
            elif isinstance(value, str):
                oid = ObjectId.parse(value)
            elif isinstance(value, Mapping):
                data = value.get("obj_id", value) if isinstance(value.get("obj_id"), Mapping) else value
                oid = ObjectId.model_validate(data)
            else:
                raise ValueError(f"got {type(value).__name__}")
            return oid.validate_names()
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                reason = f"{where}: {first['msg']}" if where else first["msg"]
            else:
                reason = str(exc)
            raise CandelaInputError(
                f"Argument {argument!r} is not a Candela object id ({reason}): pass an ObjectId, "
                "a dict with scope/identifier/version, or 'scope/identifier:version'"
            ) from None

    @staticmethod
    def _model(value: Any, model: type[T], argument: str) -> T:
        adapter = TypeAdapter(model)
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            lines = "; ".join(
                (".".join(str(p) for p in e["loc"]) or argument) + f": {e['msg']}" for e in exc.errors()[:5]
            )
            raise CandelaInputError(f"Argument {argument!r} is not a valid {model.__name__}: {lines}") from None

    @staticmethod
    def _session_params(session: ObjectId) -> dict[str, str]:
        params = {"scope": session.scope, "identifier": session.identifier}
        if session.version:
            params["version"] = session.version
        return params

    @staticmethod
    def _require_text(value: Any, argument: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise CandelaInputError(f"Argument {argument!r} must be a non-empty string, got {_short(value)}")
        return value

    @staticmethod
    def _scope(value: Any, argument: str = "scope") -> str:
        """A well-formed scope name (checked before any request)."""
        if not isinstance(value, str):
            raise CandelaInputError(
                f"Argument {argument!r} must be a scope name such as 'default', got {type(value).__name__} "
                f"{_short(value)}"
            )
        try:
            ObjectId(scope=value, identifier="x").validate_names()
        except ValueError as exc:
            raise CandelaInputError(f"Argument {argument!r} is not a valid scope: {exc}") from None
        return value

    def _prompt(self, session_id: Any, prompt: Any, scope: Any) -> SubmitPrompt:
        """The body of a prompt call, every argument checked before any request."""
        text = require_prompt(prompt, max_bytes=self.max_prompt_bytes)
        identifier = self._require_text(session_id, "session_id")
        scope = self._scope(scope)
        try:
            ObjectId(scope=scope, identifier=identifier).validate_names()
        except ValueError as exc:
            raise CandelaInputError(
                f"Argument 'session_id' is not a session identifier ({exc}): pass obj_id.identifier of the "
                "session start_session returned"
            ) from None
        return SubmitPrompt(prompt=text, session_id=identifier, scope=scope)

    # ------------------------------------------------------------------------------------------
    # sessions

    def start_session(
        self,
        app: ObjectId | str,
        model: ObjectId | str,
        *,
        scope: str | None = None,
        parent_session: ObjectId | str | None = None,
        circuit_override: ObjectId | str | None = None,
        directive_override: ObjectId | str | None = None,
        if_session_running: str = "fail",
    ) -> ObjectMetadata:
        """Start an app (agent or pipeline) with a model on the user's slot (``POST /session``).

        If the request may have reached Candela but no answer came back, the hook looks for the
        session it started (created by this user since the call began, same app and model) and
        returns it instead of starting a second one; otherwise it retries.

        :param app: the app to run, e.g. ``"default/my-agent:1.0.0"``.
        :param model: the model configuration, e.g. ``"default/llama-3-8b"``.
        :param scope: the scope of the new session (Candela's default: ``"default"``).
        :param parent_session: a session this one continues.
        :param circuit_override: a circuit replacing the app's (same scope as the app).
        :param directive_override: a directive replacing the app's (same scope as the app).
        :param if_session_running: when Candela answers that a session already runs on the user's slot:
            ``"fail"`` (raise :class:`CandelaSessionRunningError`) or ``"stop"`` (stop it and start again).
        :return: the new session's metadata (``obj_id.identifier`` is the session id for prompts).
        """
        app_id = self._object_id(app, "app")
        model_id = self._object_id(model, "model")
        request = SessionStartRequest(
            app=app_id,
            model_cfg=model_id,
            scope=None if scope is None else self._scope(scope),
            parent_session=self._object_id(parent_session, "parent_session") if parent_session else None,
            circuit_override=self._object_id(circuit_override, "circuit_override") if circuit_override else None,
            directive_override=(
                self._object_id(directive_override, "directive_override") if directive_override else None
            ),
        )

        def matches(session: Session) -> bool:
            return _same(session.app, app_id) and _same(session.model_cfg, model_id)

        return self._start(
            _Call("POST", "/session", "start", body=request.model_dump(mode="json", exclude_none=True)),
            matches,
            if_session_running,
        )

    def start_dev_session(
        self,
        model: ObjectId | str,
        circuit: CircuitDTO | dict[str, Any],
        directive: Directive | dict[str, Any],
        *,
        scope: str | None = None,
        parent_session: ObjectId | str | None = None,
        tool_module: ToolModule | dict[str, Any] | str | None = None,
        if_session_running: str = "fail",
    ) -> ObjectMetadata:
        """Run an inline circuit and directive with a model (``POST /session/dev``).

        Reconciled like :meth:`start_session` when the answer is lost.

        :param model: the model configuration.
        :param circuit: ``{"first": <node id>, "nodes": {<node id>: {...}}}``.
        :param directive: the directive (identity, purpose, style, restriction, ...).
        :param scope: the scope of the new session.
        :param parent_session: a session this one continues.
        :param tool_module: Python source of tool classes (a string) or a ``ToolModule``.
        :param if_session_running: as for :meth:`start_session`.
        """
        model_id = self._object_id(model, "model")
        if isinstance(tool_module, str):
            tool_module = ToolModule(content=tool_module)
        request = DevSessionStartRequest(
            model_id=model_id,
            circuit=self._model(circuit, CircuitDTO, "circuit"),
            directive=self._model(directive, Directive, "directive"),
            scope=None if scope is None else self._scope(scope),
            parent_session=self._object_id(parent_session, "parent_session") if parent_session else None,
            tool_module_override=self._model(tool_module, ToolModule, "tool_module") if tool_module else None,
        )

        def matches(session: Session) -> bool:
            return (session.dev_session is True or session.app is None) and _same(session.model_cfg, model_id)

        body = request.model_dump(mode="json", exclude_none=True)
        return self._start(_Call("POST", "/session/dev", "start", body=body), matches, if_session_running)

    def _start(self, call: _Call, matches: Callable[[Session], bool], if_session_running: str) -> ObjectMetadata:
        """Start; when Candela answers that a session runs and ``if_session_running="stop"``, stop it and start again.

        Only that answer stops anything: a refused app or model (or any other error) stops nothing.

        :raises CandelaSessionRunningError: a session runs on the user's slot (``"fail"``, or again after the stop).
        """
        if if_session_running not in IF_SESSION_RUNNING:
            raise CandelaInputError(
                f"Argument 'if_session_running' must be one of {', '.join(map(repr, IF_SESSION_RUNNING))}, "
                f"got {_short(if_session_running)}"
            )
        try:
            return self._start_once(call, matches)
        except CandelaSessionRunningError:
            if if_session_running != "stop":
                raise
            self.log.info("A session already runs on the Candela user's slot: stopping it and starting again.")
            self.stop_session()
            return self._start_once(call, matches)

    def _start_once(self, call: _Call, matches: Callable[[Session], bool]) -> ObjectMetadata:
        """One start with retries and reconciliation; a "session running" refusal as its own error."""
        try:
            return self._start_reconciled(call, matches)
        except CandelaApiError as exc:
            if exc.status == 409 or (exc.status == 400 and _SESSION_RUNNING.search(exc.detail)):
                raise exc.amended(
                    "Another session runs on the Candela user's slot: stop it first (stop_session), or wait "
                    "until it ends",
                    CandelaSessionRunningError,
                ) from exc
            raise

    def _start_reconciled(self, call: _Call, matches: Callable[[Session], bool]) -> ObjectMetadata:
        began = time.time()

        def attempt() -> ObjectMetadata:
            try:
                resp = self._attempt(call)
            except _Ambiguous as signal:
                found = self._reconcile_start(call, began, matches, signal.error)
                if found is not None:
                    self.log.warning(
                        "%s: no answer received, but session %s was started by it; using that session",
                        call.what,
                        found.obj_id,
                    )
                    return found
                self.log.info("%s: no session was started by the failed attempt; a retry is safe", call.what)
                raise Retryable(signal.error, signal.retry_after) from signal.__cause__
            return self._parse(resp, _OBJECT_METADATA, "an ObjectMetadata object", call)

        return call_with_retries(attempt, self._retry_settings(), call.what, self.log)

    def _whoami(self) -> str | None:
        """The user name sessions are created by (login, or the slot's owner for a personal access token)."""
        if self._me is None:
            if not self.config.uses_pat and self.config.username:
                self._me = self.config.username
            else:
                try:
                    self._me = self.get_slot_metadata().assigned_to
                except CandelaApiError:
                    self._me = None
        return self._me

    def _reconcile_start(
        self, call: _Call, began: float, matches: Callable[[Session], bool], error: CandelaError
    ) -> ObjectMetadata | None:
        """The session a lost start request created, if any (created by us, since ``began``, same app/model)."""
        try:
            sessions = self.list_sessions()
            me = self._whoami()
            if self._server_clock_offset is None:
                since = began - self.reconcile_skew_unknown_clock
            else:
                since = began + self._server_clock_offset - self.reconcile_skew
            candidates = [
                meta
                for meta in sessions
                if (me is None or meta.created_by == me) and _timestamp(meta.created_at) >= since
            ]
            for meta in sorted(candidates, key=lambda m: _timestamp(m.created_at), reverse=True):
                if matches(self.get_session(meta.obj_id)):
                    return meta
        except CandelaError as exc:
            raise CandelaApiError(
                f"{str(error).rstrip('.')}. The session may or may not have been started, and checking failed too "
                f"({exc}). Call list_sessions (or look in Candela) before starting it again",
                status=getattr(error, "status", None),
                method=call.method,
                path=call.path,
            ) from exc
        return None

    def submit_pipeline_prompt(self, session_id: str, prompt: str, *, scope: str = DEFAULT_SCOPE) -> dict[str, Any]:
        """Send a prompt to a running pipeline session (``POST /session/pipeline_submit``).

        Not replayed once the request may have reached Candela (a pipeline may have side effects).

        :param session_id: ``obj_id.identifier`` of the session (from :meth:`start_session`).
        :param prompt: the prompt text.
        :param scope: the session's scope.
        :return: the pipeline's JSON answer (``metadata.request_id`` and the result).
        """
        body = self._prompt(session_id, prompt, scope)
        call = _Call("POST", "/session/pipeline_submit", "submit", body=body.model_dump(mode="json"))
        return self._parse(self._request(call), _JSON_OBJECT, "a JSON object", call)

    def submit_prompt_to_agent(self, session_id: str, prompt: str, *, scope: str = DEFAULT_SCOPE) -> CandelaEventStream:
        """Send a prompt to a running agent session and stream its answer (``POST /session/agent_submit``).

        The request is sent now; the returned :class:`CandelaEventStream` yields each :class:`Event`
        as soon as its line arrives.  Read it to the end (or ``close()`` it / use it in a ``with``)
        so the connection is released.  Not replayed once the request may have reached Candela.

        :param session_id: ``obj_id.identifier`` of the session.
        :param prompt: the prompt text.
        :param scope: the session's scope.
        """
        body = self._prompt(session_id, prompt, scope)
        call = _Call("POST", "/session/agent_submit", "submit", body=body.model_dump(mode="json"), stream=True)
        resp = self._request(call)
        exchange: Exchange = resp.candela_exchange  # type: ignore[attr-defined]
        return CandelaEventStream(
            resp,
            what=call.what,
            scrub=self._scrub,
            chunk_size=self.stream_chunk_size,
            exchange=exchange,
            event_gap=self.config.timeout[1],
            total=self.config.stream_timeout,
            release=lambda: self._release(exchange),
            cancelled=lambda: self._cancelled,
        )

    def stop_session(self) -> None:
        """Stop whatever session runs on the user's slot (``GET /session/stop``); fine when none runs."""
        self._request(_Call("GET", "/session/stop")).close()

    def delete_session(self, session: ObjectId | str) -> list[ObjectMetadata]:
        """Delete a session and its data (``DELETE /sessions/``); without a version, every version.

        :return: the metadata of the deleted versions (empty when a retried call found them already gone).
        """
        oid = self._object_id(session, "session")
        call = _Call("DELETE", "/sessions/", params=self._session_params(oid))
        resp = self._execute(call, done_statuses=frozenset({404}))
        if resp is None:
            return []
        return self._parse(resp, _OBJECT_METADATA_LIST, "a list of ObjectMetadata", call)

    def get_session(self, session: ObjectId | str) -> Session:
        """The stored session (``GET /sessions/``): app, model, host, overrides."""
        oid = self._object_id(session, "session")
        call = _Call("GET", "/sessions/", params=self._session_params(oid))
        return self._parse(self._request(call), _SESSION, "a Session object", call)

    def get_session_metadata(self, session: ObjectId | str) -> ObjectMetadata:
        """The session's metadata (``GET /sessions/metadata``)."""
        oid = self._object_id(session, "session")
        call = _Call("GET", "/sessions/metadata", params=self._session_params(oid))
        return self._parse(self._request(call), _OBJECT_METADATA, "an ObjectMetadata object", call)

    def list_sessions(self, all_versions: bool = False) -> list[ObjectMetadata]:
        """The sessions the user can see (``GET /sessions/list``); latest versions unless ``all_versions``."""
        call = _Call("GET", "/sessions/list", params={"all_versions": "true" if all_versions else "false"})
        return self._parse(self._request(call), _OBJECT_METADATA_LIST, "a list of ObjectMetadata", call)

    def session_exists(self, session: ObjectId | str) -> bool:
        """Whether the session exists (``GET /sessions/exists``)."""
        oid = self._object_id(session, "session")
        call = _Call("GET", "/sessions/exists", params=self._session_params(oid))
        return self._parse(self._request(call), _BOOL, "true/false", call)

    # ------------------------------------------------------------------------------------------
    # slots

    def user_has_slot(self) -> bool:
        """Whether the user has a slot (``GET /slot/user_has_slot``)."""
        call = _Call("GET", "/slot/user_has_slot")
        return self._parse(self._request(call), _BOOL, "true/false", call)

    def assign_slot(self, slot_type: str | None = None) -> None:
        """Ask for a slot (``PUT /slot``); a no-op when the user already has one.

        :param slot_type: e.g. ``"gpu-medium"``; default: the connection's ``slot_type`` extra.
        """
        if slot_type is not None and not isinstance(slot_type, str):
            raise CandelaInputError(
                f"Argument 'slot_type' must be a slot type name such as {DEFAULT_SLOT_TYPE!r} (or None for the "
                f"connection's), got {type(slot_type).__name__} {_short(slot_type)}"
            )
        slot = (slot_type or "").strip() or self.config.slot_type or DEFAULT_SLOT_TYPE
        self._request(_Call("PUT", "/slot", params={"slot_type": slot})).close()

    def get_slot_state(self) -> SlotState:
        """The state of the user's slot (``GET /slot/state``); HOST_READY (3) means sessions can start."""
        call = _Call("GET", "/slot/state")
        value = self._parse(self._request(call), _INT, "an integer", call)
        try:
            return SlotState(value)
        except ValueError:
            raise CandelaResponseError(
                f"Candela answered {call.what} with the unknown slot state {value}; known states are "
                + ", ".join(f"{s.value} {s.name}" for s in SlotState),
                status=200,
                method=call.method,
                path=call.path,
                detail=str(value),
            ) from None

    def get_slot_metadata(self) -> SlotData:
        """The user's slot (``GET /slot/metadata``)."""
        call = _Call("GET", "/slot/metadata")
        return self._parse(self._request(call), _SLOT_DATA, "a SlotData object", call)

    def dispose_slot(self) -> None:
        """Give the user's slot back (``DELETE /slot``).  Candela answers 400 when there is none."""
        call = _Call("DELETE", "/slot")
        resp = self._execute(call, done_statuses=frozenset({400}))
        if resp is None:
            if self.user_has_slot():
                raise CandelaApiError(
                    f"Candela rejected a retried {call.what} (400) and the user still has a slot: dispose it again",
                    status=400,
                    method=call.method,
                    path=call.path,
                )
            return
        resp.close()

    def ensure_slot(self, slot_type: str | None = None, timeout: float = 600.0, poll_interval: float = 1.0) -> SlotData:
        """Make sure the user has a ready slot: assign one when absent, then wait for HOST_READY.

        :param slot_type: the slot type to assign (default: the connection's ``slot_type``).
        :param timeout: seconds to wait for HOST_READY.
        :param poll_interval: seconds between state checks.
        :raises CandelaInputError: ``timeout`` or ``poll_interval`` is not a positive number (no request made).
        :raises CandelaSlotError: the slot went to ERRORED or HOST_GONE.
        :raises CandelaTimeoutError: the slot was not ready within ``timeout``.
        """
        for argument, value in (("timeout", timeout), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise CandelaInputError(
                    f"Argument {argument!r} of ensure_slot must be a positive number of seconds, got {_short(value)}"
                )
        deadline = time.monotonic() + timeout
        if not self.user_has_slot():
            self.log.info("The Candela user has no slot; assigning one of type %s", slot_type or self.config.slot_type)
            self.assign_slot(slot_type)
        last: SlotState | None = None
        while True:
            state = self.get_slot_state()
            if state != last:
                self.log.info("Candela slot state: %s (%d)", state.name, state.value)
                last = state
            if state == SlotState.HOST_READY:
                return self.get_slot_metadata()
            if state in (SlotState.ERRORED, SlotState.HOST_GONE):
                slot_id = "?"
                with contextlib.suppress(CandelaError):
                    slot_id = self.get_slot_metadata().slot_id
                raise CandelaSlotError(
                    f"The Candela slot {slot_id} went to {state.name} ({state.value}) while waiting for HOST_READY: "
                    "dispose it (dispose_slot) and assign a new one, or ask FINBOURNE support if it keeps failing"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CandelaTimeoutError(
                    f"The Candela slot was not ready after {timeout:g} s (last state {state.name} ({state.value})): "
                    "raise the timeout, or check the slot type and Candela's capacity"
                )
            self._sleep(min(poll_interval, remaining))


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 10 MB prompt must not become a 10 MB message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same(actual: ObjectId | None, wanted: ObjectId) -> bool:
    """Whether ``actual`` is the object ``wanted`` names (any version when ``wanted`` has none)."""
    if actual is None:
        return False
    if (actual.scope, actual.identifier) != (wanted.scope, wanted.identifier):
        return False
    return wanted.version is None or actual.version in (None, wanted.version)


def _timestamp(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
