"""Retry policy of the Candela hook (tenacity): what is retried, how long to wait, when to stop.

An attempt function signals "try again" by raising :class:`Retryable`, which carries the error to
raise if no attempt is left and the server's ``Retry-After`` (if any).  Anything else propagates at
once.  Waits honour ``Retry-After`` (seconds or an HTTP date, capped) and otherwise grow
exponentially with full jitter; the loop stops after ``max_retries`` retries or when the next wait
would cross the total deadline.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import requests
import tenacity
from urllib3.exceptions import NewConnectionError

from airflow_provider_candela._validation import as_utc
from airflow_provider_candela.exceptions import CandelaError

__all__ = [
    "RETRY_STATUSES",
    "LogLike",
    "RetrySettings",
    "Retryable",
    "call_with_retries",
    "failed_before_sending",
    "http_date",
    "parse_retry_after",
    "retry_reason",
]

T = TypeVar("T")

#: Statuses retried (idempotent calls); 429 and 503 usually carry Retry-After.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class LogLike(Protocol):
    """What the helpers need of a logger (stdlib ``logging.Logger`` and Airflow's structlog logger both fit)."""

    def debug(self, event: Any, *args: Any, **kw: Any) -> Any: ...
    def info(self, event: Any, *args: Any, **kw: Any) -> Any: ...
    def warning(self, event: Any, *args: Any, **kw: Any) -> Any: ...


@dataclass
class RetrySettings:
    """How hard to retry.  All durations in seconds.

    :param max_retries: retries after the first attempt (0 = no retry).
    :param wait_base: first exponential backoff step (the waits are ``wait_base * 2**n`` with jitter).
    :param wait_max: ceiling of one backoff wait.
    :param retry_after_cap: ceiling of a wait asked by ``Retry-After``.
    :param deadline: no retry starts after this much time since the first attempt.
    :param sleep: waits between attempts (the hook's is cut short, with an error, when it is cancelled).
    """

    max_retries: int
    wait_base: float = 1.0
    wait_max: float = 30.0
    retry_after_cap: float = 60.0
    deadline: float = 900.0
    sleep: Callable[[float], None] = time.sleep


def retry_reason(error: BaseException) -> str:
    """Why a failed attempt is retried, for ``candela.request.retries``: ``429``, ``5xx`` or ``connection``."""
    status = getattr(error, "status", None)
    if status == 429:
        return "429"
    if isinstance(status, int) and status >= 500:
        return "5xx"
    return "connection"


class Retryable(Exception):
    """Raised by an attempt to ask for another one.

    :param error: what to raise when no attempt is left.
    :param retry_after: the server's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(self, error: CandelaError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = http_date(value)
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when - current)


def http_date(value: str) -> float | None:
    """An HTTP date (``Retry-After``, ``Date``) as seconds since the epoch (naive means UTC); None if malformed."""
    try:
        return as_utc(email.utils.parsedate_to_datetime(value)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def failed_before_sending(exc: requests.RequestException) -> bool:
    """True when ``exc`` happened before any byte of the request could reach the server.

    Connect timeouts, refused connections, DNS failures and proxy connect failures qualify; a read
    timeout or a connection dropped after sending does not (the server may have acted on it).
    """
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    if isinstance(exc, requests.exceptions.SSLError):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectionRefusedError):
            return True
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return False


class _Policy:
    """tenacity ``wait`` and ``stop`` sharing one computed wait per attempt (order-independent).

    :param started: ``time.monotonic()`` of the first attempt (the deadline counts from there).
    """

    def __init__(self, settings: RetrySettings, started: float) -> None:
        self.settings = settings
        self.started = started
        self._waits: dict[tuple[int, int], float] = {}

    def next_wait(self, state: tenacity.RetryCallState) -> float:
        key = (id(state), state.attempt_number)
        if key not in self._waits:
            exc = state.outcome.exception() if state.outcome is not None else None
            after = exc.retry_after if isinstance(exc, Retryable) else None
            if after is not None:
                wait = min(after, self.settings.retry_after_cap)
            else:
                ceiling = min(self.settings.wait_max, self.settings.wait_base * 2 ** (state.attempt_number - 1))
                wait = random.uniform(self.settings.wait_base / 2, max(ceiling, self.settings.wait_base / 2))
            self._waits[key] = wait
        return self._waits[key]

    def wait(self, state: tenacity.RetryCallState) -> float:
        return self.next_wait(state)

    def stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > self.settings.max_retries:
            return True
        return time.monotonic() - self.started + self.next_wait(state) > self.settings.deadline


def call_with_retries(
    fn: Callable[[], T],
    settings: Callable[[], RetrySettings],
    what: str,
    log: LogLike,
) -> T:
    """Run ``fn`` until it returns, raises something other than :class:`Retryable`, or retries run out.

    :param settings: returns the retry rules; called only when a first attempt asks for a retry.
    :param what: e.g. ``"GET /slot/state"``, for the log lines.
    :raises CandelaError: the error of the last :class:`Retryable`, with the attempt count appended.
    """
    started = time.monotonic()
    try:
        return fn()  # most calls succeed at once: tenacity is set up only for a retry
    except Retryable as exc:
        first: Retryable | None = exc

    def attempt() -> T:
        nonlocal first
        if first is not None:  # tenacity's attempt 1 is the one already made
            failed, first = first, None
            raise failed
        return fn()

    rules = settings()
    policy = _Policy(rules, started)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s failed (%s); retrying in %.1f s (attempt %d of at most %d)",
            what,
            exc,
            policy.next_wait(state),
            state.attempt_number + 1,
            rules.max_retries + 1,
        )

    retrying = tenacity.Retrying(
        stop=policy.stop,
        wait=policy.wait,
        retry=tenacity.retry_if_exception_type(Retryable),
        before_sleep=before_sleep,
        sleep=rules.sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except Retryable as signal:
        attempts = retrying.statistics.get("attempt_number", 1)
        error = signal.error
        if attempts > 1:
            elapsed = time.monotonic() - started
            error.args = (
                f"{error} (gave up after {attempts} attempts in {elapsed:.1f} s; max_retries={rules.max_retries})",
                *error.args[1:],
            )
        raise error from signal.__cause__
