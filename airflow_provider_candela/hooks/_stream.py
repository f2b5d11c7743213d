"""The NDJSON event stream of ``POST /session/agent_submit``, parsed line by line as bytes arrive."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Final

import requests
import urllib3.exceptions
from pydantic import ValidationError

from airflow_provider_candela.exceptions import CandelaApiError, CandelaResponseError
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
    the end of the body is the end of the answer (there is no terminator event).
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        what: str,
        scrub: Callable[[str], str],
        chunk_size: int = 8192,
    ) -> None:
        self._response = response
        self._what = what
        self._scrub = scrub
        self._chunk_size = chunk_size
        self._line_number = 0
        #: Events yielded so far.
        self.count = 0
        self._events: Generator[Event, None, None] = self._generate()

    def __iter__(self) -> CandelaEventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop reading and release the response (the connection is dropped if the body was not finished)."""
        self._events.close()
        self._response.close()

    def __enter__(self) -> CandelaEventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # best effort at garbage collection
            self._response.close()

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

    def _generate(self) -> Generator[Event, None, None]:
        buffer = bytearray()
        try:
            for chunk in self._chunks():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    event = self._parse(bytes(buffer[start:end]))
                    start = end + 1
                    if event is not None:
                        self.count += 1
                        yield event
                del buffer[:start]
                if len(buffer) > MAX_LINE_BYTES:
                    raise CandelaResponseError(
                        f"Candela streamed a line longer than {MAX_LINE_BYTES} bytes from {self._what}",
                        status=self._response.status_code,
                        method="POST",
                        path=self._what.split(" ", 1)[-1],
                    )
            event = self._parse(bytes(buffer))
            if event is not None:
                self.count += 1
                yield event
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise CandelaApiError(
                f"The agent answer from {self._what} broke off after {self.count} events "
                f"({type(exc).__name__}: {self._scrub(str(exc))[:200]}): the answer is incomplete. The prompt "
                "was not resubmitted; submit it again if the agent's partial answer is not enough",
                method="POST",
                path=self._what.split(" ", 1)[-1],
                detail=self._scrub(str(exc)),
            ) from exc
        finally:
            self._response.close()

    def _parse(self, line: bytes) -> Event | None:
        self._line_number += 1
        line = line.strip()
        if not line:
            return None
        path = self._what.split(" ", 1)[-1]
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
            return Event.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                (f"missing field {'.'.join(map(str, e['loc']))!r}" if e["type"] == "missing" else e["msg"])
                if e["loc"]
                else f"expected an object with event_type and content, got {type(data).__name__}"
                for e in exc.errors()
            )
            raise CandelaResponseError(
                f"Line {self._line_number} of the agent stream from {self._what} is not an event: {problems}",
                status=self._response.status_code,
                method="POST",
                path=path,
                detail=problems,
            ) from None
