"""The HTTP core of the Candela hook: connection -> authenticated, retried, deadline-bound HTTP -> parsed models.

:class:`CandelaHttpCore` reads and validates the connection once, keeps one ``requests.Session``
(keep-alive) and one token manager, sends every request (:meth:`CandelaHttpCore._http`: no
redirects, an overall deadline per exchange, cancellable), applies the retry rules (``Retry-After``,
prompts never replayed, ambiguous starts signalled for reconciliation), maps failures to the
package's exceptions and parses answers into models.  :class:`~airflow_provider_candela.hooks.candela.CandelaHook`
adds the endpoints on top.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.request import getproxies

import requests
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook, mask_secret
from pydantic import TypeAdapter, ValidationError

from airflow_provider_candela import __version__
from airflow_provider_candela._validation import DEFAULT_CONN_ID, validation_problems
from airflow_provider_candela.exceptions import (
    CandelaAmbiguousError,
    CandelaApiError,
    CandelaAuthError,
    CandelaCancelledError,
    CandelaConnectionConfigError,
    CandelaError,
    CandelaResponseError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks._auth import TokenManager
from airflow_provider_candela.hooks._config import CandelaConfig, load_config
from airflow_provider_candela.hooks._retry import (
    RETRY_STATUSES,
    Retryable,
    RetrySettings,
    call_with_retries,
    failed_before_sending,
    http_date,
    parse_retry_after,
    retry_reason,
)
from airflow_provider_candela.hooks._telemetry import Telemetry, count, route, timing
from airflow_provider_candela.hooks._transport import CandelaAdapter, Exchange, tracking
from airflow_provider_candela.models import (
    HTTPValidationError,
)

__all__ = ["SESSION_RUNNING", "USER_AGENT", "Ambiguous", "Call", "CandelaHttpCore"]

T = TypeVar("T")
_Kind = Literal["idempotent", "start", "submit"]

USER_AGENT: Final = f"airflow-provider-candela/{__version__}"
#: Said of a prompt whose call failed after it was sent (the server may or may not have acted on it).
PROMPT_MAY_HAVE_RUN: Final = (
    "The prompt may or may not have run; it is not resubmitted automatically. Check the session's output "
    "before submitting it again"
)


@dataclass(frozen=True)
class Call:
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


class Ambiguous(Exception):
    """A start call failed after the server may have acted on it; reconcile before any retry."""

    def __init__(self, error: CandelaError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _DeadlinePassed(requests.exceptions.Timeout):
    """An attempt ran past its overall deadline (e.g. a server sending its answer a byte at a time)."""


def _budget(connect: float, read: float) -> str:
    """An attempt's overall deadline, for messages: ``"5 s to connect + 30 s to read"``."""
    return f"{connect:g} s to connect + {read:g} s to read"


def _correlation_ids() -> Iterator[str]:
    """Unique ``CorrelationId`` values shaped like UUIDs: a random prefix per process, then a counter."""
    random_part = uuid.uuid4().hex
    prefix = f"{random_part[:8]}-{random_part[8:12]}-{random_part[12:16]}-{random_part[16:20]}-"
    return map(f"{prefix}{{:012x}}".format, itertools.count())


_CORRELATION_IDS = _correlation_ids()


def _reseed_correlation_ids() -> None:
    global _CORRELATION_IDS  # noqa: PLW0603 (a forked child must not repeat its parent's ids)
    _CORRELATION_IDS = _correlation_ids()


os.register_at_fork(after_in_child=_reseed_correlation_ids)

#: Candela's answer when a start finds another session running on the slot (409, or a 400 saying so).
SESSION_RUNNING = re.compile(r"already running|session is running|running session", re.IGNORECASE)


def _keep_request(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Session auth that changes nothing (it only keeps requests from applying ~/.netrc)."""
    return request


class CandelaHttpCore(BaseHook):
    """Connection, session, tokens, sending, retries, errors and parsing of a Candela hook.

    :param candela_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout: seconds, ``(connect, read)`` or ``"c,r"``.
    :param max_retries: overrides the connection's ``max_retries``.

    The class attributes ``retry_wait_base``, ``retry_wait_max``, ``retry_after_cap`` and
    ``retry_deadline`` (seconds) tune the backoff; set them on an instance to change one hook.
    """

    conn_name_attr = "candela_conn_id"
    default_conn_name = DEFAULT_CONN_ID
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
        self._telemetry: Telemetry | None = None
        # Held only while the connection, the session or the token manager is created (double-checked: a call
        # that finds them made takes no lock), so that threads making the first call together make one grant.
        self._setup_lock = threading.RLock()
        self._secrets: set[str] = set()
        # The last Date header and time.time() when it arrived; parsed only when the offset is needed.
        self._server_date: tuple[str, float] | None = None
        self._me: str | None = None
        self._cancelled: str | None = None
        self._cancel_event = threading.Event()
        # While a best-effort cleanup runs (``time.monotonic()`` deadline): calls proceed even on a cancelled
        # hook, and every exchange and wait ends by this deadline.
        self._cleanup_until: float | None = None
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
            with self._setup_lock:
                if self._config is None:
                    self._config = self._read_config()
        return self._config

    @property
    def telemetry(self) -> Telemetry:
        """The hook's tracing settings (read with the connection, once)."""
        if self._telemetry is None:
            self._telemetry = Telemetry.configured()
        return self._telemetry

    def _read_config(self) -> CandelaConfig:
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
        return config

    def get_conn(self) -> requests.Session:
        """The hook's ``requests.Session`` (created on first use; keep-alive across calls)."""
        if self._session is None:
            with self._setup_lock:
                if self._session is None:
                    self._session = self._new_session()
        return self._session

    def _new_session(self) -> requests.Session:
        """A session for this connection: its adapter, headers, TLS and proxy settings; no cookies kept."""
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
        if cfg.verify is True:  # what requests takes from the environment on every call, taken once
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # an API client: no state between calls
        return session

    def cancel(self, reason: str) -> None:
        """Abort every call of this hook at once and refuse new ones; safe from any thread or a signal handler.

        A blocked read returns immediately, and the call raises :class:`CandelaCancelledError` (never
        retried).  Used by the operators' ``on_kill``.  A cancelled hook stays cancelled.

        :param reason: what cancelled it, for the error message (e.g. ``"task 'prompt' was killed"``).
        """
        self._cancelled = reason
        self._cancel_event.set()
        if self._cleanup_until is not None:
            return  # a cleanup in progress finishes (within its own budget)
        for exchange in list(self._exchanges.values()):
            exchange.abort("cancelled")

    @property
    def cancelled(self) -> str | None:
        """Why the hook was cancelled (:meth:`cancel`), or None."""
        return self._cancelled

    def _raise_if_cancelled(self, what: str, progress: str = "") -> None:
        until = self._cleanup_until
        if until is not None:
            if time.monotonic() >= until:
                raise CandelaTimeoutError(f"{what} was abandoned{progress}: the cleanup ran out of time")
        elif self._cancelled is not None:
            raise CandelaCancelledError(
                f"{what} was abandoned{progress}: {self._cancelled}. Nothing was retried; a retry of the task "
                "starts afresh"
            )

    def _sleep(self, seconds: float) -> None:
        """Sleep that a :meth:`cancel` cuts short (then raises :class:`CandelaCancelledError`).

        During a cleanup the sleep ends by the cleanup's deadline instead (the hook may be cancelled already).
        """
        until = self._cleanup_until
        if until is None:
            self._cancel_event.wait(seconds)
        else:
            time.sleep(max(min(seconds, until - time.monotonic()), 0.0))
        self._raise_if_cancelled("A wait")

    @contextlib.contextmanager
    def _cleanup(self, budget: float) -> Iterator[None]:
        """Calls made inside run even on a cancelled hook, and end within ``budget`` seconds in all."""
        previous = self._cleanup_until
        until = time.monotonic() + budget
        self._cleanup_until = until if previous is None else min(previous, until)
        try:
            yield
        finally:
            self._cleanup_until = previous

    def _http(
        self, method: str, url: str, path: str, *, fix: str, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        """Send one request: redirects refused, the whole answer bounded by connect + read timeout, cancellable.

        For ``stream=True`` the exchange stays open (see :meth:`_release`) until the stream is closed.

        :param path: the API path of ``url`` (the whole URL for the token endpoint), for messages.
        :param fix: the connection setting to check when the answer is a redirect (e.g. ``"host"``).
        :param kwargs: ``params``, ``headers``, ``json`` or ``data`` of ``requests.Request``.
        :raises _DeadlinePassed: the answer did not complete within connect + read timeout.
        :raises CandelaCancelledError: the hook was cancelled meanwhile.
        """
        what = f"{method} {path}"
        self._raise_if_cancelled(what)
        timeout = connect, read = self.config.timeout
        session = self.get_conn()
        deadline = time.monotonic() + connect + read
        if self._cleanup_until is not None:
            deadline = min(deadline, self._cleanup_until)
        exchange = Exchange(what, deadline)
        self._exchanges[id(exchange)] = exchange
        try:
            # Prepared as requests prepares a request, sent with Session.send (both public): the session's
            # proxies, TLS settings and adapters apply, without Session.request's per-call merging of cookies,
            # auth and environment settings that an API client does not use.
            headers = {**session.headers, **(kwargs.pop("headers", None) or {})}
            prepared = requests.Request(method, url, headers=headers, **kwargs).prepare()
            with tracking(exchange):
                resp = session.send(prepared, timeout=timeout, stream=stream, allow_redirects=False)
            if exchange.aborted is not None:
                resp.close()
                raise requests.ConnectionError("aborted")
        except requests.RequestException as exc:
            self._release(exchange)
            self._raise_if_cancelled(what)
            if exchange.aborted == "deadline":
                raise _DeadlinePassed(
                    f"no complete answer within {connect + read:g} s ({_budget(connect, read)} bound each attempt)"
                ) from exc
            raise
        except BaseException:
            self._release(exchange)
            raise
        if 300 <= resp.status_code < 400:
            self._release(exchange)
            location = self.scrub(resp.headers.get("Location", "?"))
            resp.close()
            raise CandelaApiError(
                f"{what} was answered with {resp.status_code} redirecting to {location}: redirects are not "
                f"followed (the request and its credentials would go to another address). Set the {fix} of "
                f"connection {self.candela_conn_id!r} to the right URL",
                status=resp.status_code,
                method=method,
                path=path,
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
                raise _DeadlinePassed(f"the error's body did not arrive within {_budget(connect, read)}") from exc
            raise
        finally:
            self._release(exchange)
        return resp

    def _release(self, exchange: Exchange) -> None:
        exchange.finish()
        self._exchanges.pop(id(exchange), None)

    def _post_form(self, url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        """The token endpoint's POST (for :class:`TokenManager`), through the same HTTP core."""
        return self._http("POST", url, url, fix="extra token_url", data=body, headers=headers)

    def close(self) -> None:
        """Close the HTTP session (its pooled connections).  The hook stays usable."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def _auth(self) -> TokenManager:
        if self._tokens is None:
            with self._setup_lock:
                if self._tokens is None:
                    self._tokens = TokenManager(
                        self.config,
                        post=self._post_form,
                        settings=self._retry_settings,
                        register_secret=self._register_secret,
                        scrub=self.scrub,
                        log=self.log,
                    )
        return self._tokens

    def _retry_settings(self, deadline: float | None = None) -> RetrySettings:
        """The retry rules in force; ``deadline`` shortens the total time of one call (e.g. a connection test)."""
        return RetrySettings(
            max_retries=self.config.max_retries,
            wait_base=self.retry_wait_base,
            wait_max=self.retry_wait_max,
            retry_after_cap=self.retry_after_cap,
            deadline=self.retry_deadline if deadline is None else min(deadline, self.retry_deadline),
            sleep=self._sleep,
        )

    def _register_secret(self, value: str) -> None:
        if value and value not in self._secrets:
            self._secrets.add(value)
            mask_secret(value)

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this connection (password, client secret, tokens) replaced by ``***``.

        For messages built from what Candela or a library said, before they are shown or logged.
        """
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------------------------------
    # HTTP core

    @property
    def _server_clock_offset(self) -> float | None:
        """Seconds the server's clock is ahead of ours, from the last ``Date`` header; None if unknown."""
        if self._server_date is None:
            return None
        date, received = self._server_date
        server = http_date(date)
        return None if server is None else server - received

    def _send(self, call: Call, authorization: str, *, retries: int = 0) -> requests.Response:
        """One exchange of ``call``: timed (``candela.request``) and, when Airflow traces, a span of its own."""
        headers = {"Authorization": authorization, "CorrelationId": next(_CORRELATION_IDS)}
        began = time.monotonic()
        status = "error"
        span = self.telemetry.exchange(call.method, call.path, retries)
        try:
            resp = self._http(
                call.method,
                self.config.base_url + call.path,
                call.path,
                fix="host",
                params=call.params,
                json=call.body,
                headers=headers,
                stream=call.stream,
            )
            status = str(resp.status_code)
        except BaseException as exc:
            if span is not None:
                span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            timing("request", time.monotonic() - began, {"route": route(call.method, call.path), "status": status})
            if span is not None:
                if status != "error":
                    span.set_attribute("http.response.status_code", int(status))
                span.end()
        date = resp.headers.get("Date")
        if date:
            self._server_date = (date, time.time())
        return resp

    def _attempt(self, call: Call, *, retries: int = 0) -> requests.Response:
        """One attempt (with at most one re-authentication and replay after a 401).

        :raises Retryable: when another attempt is safe and useful.
        :raises Ambiguous: (start calls) when the server may have acted on the request.
        :raises CandelaError: otherwise.
        """
        refused: list[str] = []
        renewed = False
        while True:
            authorization = self._auth.authorization()
            try:
                resp = self._send(call, authorization, retries=retries)
            except requests.exceptions.SSLError as exc:
                raise CandelaApiError(
                    f"TLS verification failed for {call.what} at {self.config.base_url} ({type(exc).__name__}): "
                    f"set the extra verify of connection {self.candela_conn_id!r} to the path of your CA bundle",
                    method=call.method,
                    path=call.path,
                    detail=self.scrub(str(exc)),
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
            raise Ambiguous(error, retry_after)
        raise error.amended(PROMPT_MAY_HAVE_RUN, CandelaAmbiguousError)

    def _transport_failure(self, call: Call, exc: requests.RequestException) -> Exception:
        cfg = self.config
        if isinstance(exc, _DeadlinePassed):
            failure = (
                f"Candela sent no complete answer to {call.what} at {cfg.base_url} in time: {exc} (the server "
                "answered too slowly or trickled its body)"
            )
        else:
            reason = self.scrub(str(exc))[:300]
            failure = f"Could not complete {call.what} at {cfg.base_url} ({type(exc).__name__}: {reason})"
        error = CandelaApiError(
            f"{failure}. "
            f"Check the host{', proxy' if cfg.proxy else ''} and timeout of connection {self.candela_conn_id!r} "
            "and that Candela is reachable from this worker",
            method=call.method,
            path=call.path,
            detail=self.scrub(str(exc)),
        )
        if call.kind == "idempotent" or failed_before_sending(exc):
            return Retryable(error)
        if call.kind == "start":
            return Ambiguous(error)
        return CandelaAmbiguousError(
            f"{call.what} failed after the prompt was sent ({type(exc).__name__}: {self.scrub(str(exc))[:300]}). "
            f"{PROMPT_MAY_HAVE_RUN}",
            method=call.method,
            path=call.path,
            detail=self.scrub(str(exc)),
        )

    def _execute(
        self, call: Call, *, done_statuses: frozenset[int] = frozenset(), deadline: float | None = None
    ) -> requests.Response | None:
        """Run an idempotent or prompt call with retries; return its 2xx response.

        :param done_statuses: statuses that, on a *retried* attempt, mean an earlier attempt already
            did the work (e.g. 404 after a DELETE whose response was lost); the call then returns None.
        :param deadline: a shorter total time for this call than ``retry_deadline``.
        """
        attempts = 0
        failed = ""  # why the last attempt is retried (the ``reason`` tag of candela.request.retries)

        def attempt() -> requests.Response | None:
            nonlocal attempts, failed
            attempts += 1
            if failed:
                count("request.retries", {"route": route(call.method, call.path), "reason": failed})
            try:
                return self._attempt(call, retries=attempts - 1)
            except Retryable as retry:
                failed = retry_reason(retry.error)
                raise
            except CandelaApiError as exc:
                if attempts > 1 and exc.status in done_statuses:
                    self.log.info("%s answered %s on a retry: an earlier attempt already did it", call.what, exc.status)
                    return None
                raise

        return call_with_retries(attempt, lambda: self._retry_settings(deadline), call.what, self.log)

    def _request(self, call: Call, *, deadline: float | None = None) -> requests.Response:
        resp = self._execute(call, deadline=deadline)
        assert resp is not None
        return resp

    # ------------------------------------------------------------------------------------------
    # errors and parsing

    def _detail(self, resp: requests.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            text = " ".join(resp.text.split())[:300]
            return self.scrub(text or resp.reason or "no detail")
        if resp.status_code == 422 or (isinstance(data, dict) and isinstance(data.get("detail"), list)):
            try:
                lines = HTTPValidationError.model_validate(data).lines()
            except ValidationError:
                lines = []
            if lines:
                return self.scrub("; ".join(lines))
        if isinstance(data, dict):
            parts = [str(data[k]) for k in ("detail", "title", "message", "error_description", "error") if data.get(k)]
            if isinstance(data.get("errorDetails"), list):
                parts.extend(str(item) for item in data["errorDetails"])
            if parts:
                return self.scrub("; ".join(parts)[:500])
        return self.scrub(str(data)[:300])

    def _api_error(self, resp: requests.Response, call: Call, *, reauthenticated: bool) -> CandelaApiError:
        status = resp.status_code
        detail = self._detail(resp)
        conn = self.candela_conn_id
        verb = "rejected" if status < 500 else "failed"
        cls = CandelaApiError.class_for(status)
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
        return cls(message, status=status, method=call.method, path=call.path, detail=detail)

    def _parse(self, resp: requests.Response, adapter: TypeAdapter[T], expected: str, call: Call) -> T:
        try:
            data = resp.json()
        except ValueError:
            snippet = self.scrub(" ".join(resp.text.split())[:200])
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
            detail = validation_problems(exc, root=f"expected {expected}, got {type(data).__name__}")
            raise CandelaResponseError(
                f"Candela answered {call.what} with {resp.status_code} but not with {expected}: {detail}. "
                "The server may speak another API version than this provider (Gen A Sessions API)",
                status=resp.status_code,
                method=call.method,
                path=call.path,
                detail=detail,
            ) from None
