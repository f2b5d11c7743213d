"""The NDJSON event stream of ``POST /session/agent_submit``, parsed line by line as bytes arrive."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Final

import requests
import urllib3.exceptions
from pydantic import ValidationError

from airflow_provider_candela._validation import validation_problems
from airflow_provider_candela.exceptions import (
    CandelaAmbiguousError,
    CandelaCancelledError,
    CandelaResponseError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks._telemetry import count
from airflow_provider_candela.hooks._transport import Exchange, watch
from airflow_provider_candela.models import Event

__all__ = ["CandelaEventStream"]

#: A single event larger than this is refused (the stream itself may be any length).
MAX_LINE_BYTES: Final = 64 * 1024 * 1024


class CandelaEventStream(Iterator[Event]):
    """Iterator of the agent's :class:`Event` objects.

    Each event is parsed as soon as its line is complete, so the first one is available while the
    agent is still working; only the current line is buffered.  The HTTP response is closed (and
    its connection returned to the pool when the body was read to the end) when the stream is
    exhausted, fails, or :meth:`close` is called; it is also a context manager.

    Blank lines are skipped; a line that is not a JSON event raises :class:`CandelaResponseError`;
    the end of the body is the end of the answer (there is no terminator event), and an answer of no
    event at all is an error (an agent always echoes the prompt as a ``user`` event).

    Deadlines: at most ``event_gap`` seconds between two events (a server trickling a line a byte at a
    time trips it too) and ``total`` seconds for the whole stream; the hook's ``exchange`` is aborted
    when either passes, or when the hook is cancelled, and the stream then raises saying which.

    :param response: the streamed HTTP response of the prompt (``stream=True``).
    :param method: the request's HTTP method, for messages.
    :param path: the request's API path, for messages.
    :param scrub: removes secrets from a text before it goes into a message.
    :param chunk_size: bytes read from the body at a time.
    :param exchange: the hook's exchange of this request (its deadline is moved as events arrive).
    :param release: called once when the stream is closed (the hook forgets the exchange).
    :param cancelled: why the hook was cancelled, or None.
    :param event_gap: seconds allowed between two events.
    :param total: seconds allowed for the whole stream.
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        method: str,
        path: str,
        scrub: Callable[[str], str],
        chunk_size: int = 8192,
        exchange: Exchange | None = None,
        event_gap: float = float("inf"),
        total: float = float("inf"),
        release: Callable[[], None] | None = None,
        cancelled: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._response = response
        self._path = path
        self._what = f"{method} {path}"
        self._scrub = scrub
        self._chunk_size = chunk_size
        self._exchange = exchange
        self._event_gap = event_gap
        self._total = total
        self._release = release
        self._cancelled = cancelled
        self._started = time.monotonic()
        self._line_number = 0
        #: Events yielded so far.
        self.count = 0
        self._types: Counter[str] = Counter()  # reported as candela.stream.events when the stream ends
        self._events: Generator[Event, None, None] = self._generate()

    def __iter__(self) -> CandelaEventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop reading and release the response (the connection is dropped if the body was not finished)."""
        self._events.close()
        self._close_response()

    def _close_response(self) -> None:
        self._response.close()
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> CandelaEventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # best effort at garbage collection
            self._close_response()

    # ------------------------------------------------------------------------------------------

    def _chunks(self) -> Iterator[bytes]:
        raw = self._response.raw
        if not getattr(raw, "chunked", False) and hasattr(raw, "read1"):
            # Length- or close-delimited body: read1 returns what has arrived instead of waiting for a full chunk.
            while True:
                data = raw.read1(self._chunk_size, decode_content=True)
                if not data:
                    return
                yield data
        else:
            # Chunked transfer encoding: urllib3 yields every HTTP chunk as soon as it arrives.
            yield from self._response.iter_content(chunk_size=self._chunk_size)

    def _arm(self) -> None:
        """The next event has ``event_gap`` seconds to arrive (within the whole stream's ``total``)."""
        exchange = self._exchange
        if exchange is not None:
            before = exchange.deadline
            exchange.deadline = min(time.monotonic() + self._event_gap, self._started + self._total)
            if exchange.deadline < before:
                watch(exchange)

    def _interrupted(self) -> Exception | None:
        """The error to raise when the stream ended because the hook was cancelled or a deadline passed."""
        reason = self._cancelled()
        if reason is not None:
            return CandelaCancelledError(
                f"The agent answer from {self._what} was abandoned after {self.count} events: {reason}. The "
                "prompt was not resubmitted"
            )
        if self._exchange is None or self._exchange.aborted != "deadline":
            return None
        elapsed = time.monotonic() - self._started
        if elapsed >= self._total - 0.001:
            which = f"the whole answer took longer than stream_timeout ({self._total:g} s)"
        else:
            which = f"no event arrived for {self._event_gap:g} s (the read timeout bounds the gap between events)"
        return CandelaTimeoutError(
            f"The agent answer from {self._what} was cut after {self.count} events and {elapsed:.0f} s: {which}. "
            "The prompt was not resubmitted; raise the connection's timeout or stream_timeout if the agent "
            "needs longer"
        )

    def _generate(self) -> Generator[Event, None, None]:
        buffer = bytearray()
        try:
            self._arm()
            for chunk in self._chunks():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    event = self._parse(bytes(buffer[start:end]))
                    start = end + 1
                    if event is not None:
                        self.count += 1
                        self._arm()
                        yield event
                del buffer[:start]
                if len(buffer) > MAX_LINE_BYTES:
                    raise CandelaResponseError(
                        f"Candela streamed a line longer than {MAX_LINE_BYTES} bytes from {self._what}",
                        status=self._response.status_code,
                        method="POST",
                        path=self._path,
                    )
            interrupted = self._interrupted()
            if interrupted is not None:
                raise interrupted
            event = self._parse(bytes(buffer))
            if event is not None:
                self.count += 1
                yield event
            if self.count == 0:
                raise CandelaResponseError(
                    f"Candela answered {self._what} with {self._response.status_code} but streamed no event: an "
                    "agent answer always starts with the prompt's 'user' event. Check that the session is an "
                    "agent session and that nothing between this worker and Candela empties the body",
                    status=self._response.status_code,
                    method="POST",
                    path=self._path,
                )
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            interrupted = self._interrupted()
            if interrupted is not None:
                raise interrupted from exc
            raise CandelaAmbiguousError(
                f"The agent answer from {self._what} broke off after {self.count} events "
                f"({type(exc).__name__}: {self._scrub(str(exc))[:200]}): the answer is incomplete. The prompt "
                "was not resubmitted; submit it again if the agent's partial answer is not enough",
                method="POST",
                path=self._path,
                detail=self._scrub(str(exc)),
            ) from exc
        finally:
            self._close_response()
            for event_type, n in self._types.items():
                count("stream.events", {"event_type": event_type}, n)
            self._types.clear()

    def _parse(self, line: bytes) -> Event | None:
        self._line_number += 1
        line = line.strip()
        if not line:
            return None
        path = self._path
        try:
            data = json.loads(line)
        except ValueError:
            snippet = self._scrub(line[:200].decode("utf-8", "replace"))
            raise CandelaResponseError(
                f"Line {self._line_number} of the agent stream from {self._what} is not JSON: {snippet!r}. "
                "Check that the host of the connection is the Candela API URL (no proxy rewriting the body)",
                status=self._response.status_code,
                method="POST",
                path=path,
                detail=snippet,
            ) from None
        try:
            event = Event.model_validate(data)
        except ValidationError as exc:
            problems = validation_problems(
                exc, root=f"expected an object with event_type and content, got {type(data).__name__}"
            )
            raise CandelaResponseError(
                f"Line {self._line_number} of the agent stream from {self._what} is not an event: {problems}",
                status=self._response.status_code,
                method="POST",
                path=path,
                detail=problems,
            ) from None
        self._types[event.event_type] += 1
        return event
