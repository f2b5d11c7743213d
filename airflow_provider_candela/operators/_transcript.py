"""The agent transcript: a stream of agent events as readable log lines and a compact summary.

Imported by the agent prompt operator at every DAG parse, so it imports only the standard library.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_candela.models import Event

__all__ = ["AgentTranscript"]

_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)\s+")
_STREAMED_TYPES = ("chat", "intent")


class AgentTranscript:
    """Turns a stream of agent events into readable log lines and a compact summary.

    Chat (and intent) fragments are buffered and written as whole lines: at each ``\\n``, at a
    sentence end once the line is ``soft_limit`` characters long, or at a word boundary when it
    reaches ``hard_limit``.  Other events are written at once with their type as a label.

    :param write: where lines go (e.g. ``self.log.info``); called as ``write("%s", line)``.
    :param keep_events: keep every event for :meth:`summary` (``return_events=True``).
    :param soft_limit: line length after which a sentence end flushes the line.
    :param hard_limit: line length at which the line is flushed at the last space.
    """

    def __init__(
        self,
        write: Callable[..., Any],
        *,
        keep_events: bool = False,
        soft_limit: int = 80,
        hard_limit: int = 300,
    ) -> None:
        self._write = write
        self._keep_events = keep_events
        self._soft_limit = soft_limit
        self._hard_limit = hard_limit
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, str]] = []
        self.results: list[Any] = []
        self._chat: list[str] = []
        self._buffer = ""
        self._buffer_type: str | None = None

    def consume(self, events: Iterable[Event]) -> None:
        """Handle every event of ``events`` as it arrives."""
        for event in events:
            self.add(event.event_type, event.content)

    def add(self, event_type: str, content: str) -> None:
        """Handle one event."""
        self.counts[event_type] += 1
        if self._keep_events:
            self.events.append({"event_type": event_type, "content": content})
        if event_type in _STREAMED_TYPES:
            if self._buffer_type != event_type:
                self.flush()
                self._buffer_type = event_type
            if event_type == "chat":
                self._chat.append(content)
            self._buffer += content
            self._drain(final=False)
            return
        self.flush()
        if event_type == "result":
            parsed = _parse_result(content)
            self.results.append(parsed)
            self._emit("result", _describe_result(parsed))
        elif event_type == "user":
            self._emit("user", _one_line(content, 200))
        else:
            for line in content.splitlines() or [""]:
                self._emit(event_type, line.rstrip())

    def flush(self) -> None:
        """Write what is left in the line buffer."""
        self._drain(final=True)
        self._buffer_type = None

    def _emit(self, label: str | None, text: str) -> None:
        self._write("%s", f"[{label}] {text}" if label else text)

    def _label(self) -> str | None:
        return None if self._buffer_type == "chat" else self._buffer_type

    def _drain(self, *, final: bool) -> None:
        while self._buffer:
            cut = self._cut()
            if cut is None:
                if not final:
                    return
                cut = len(self._buffer)
            line, rest = self._buffer[:cut].rstrip(), self._buffer[cut:]
            self._buffer = rest[1:] if rest.startswith("\n") else rest.lstrip(" ")
            if line.strip():
                self._emit(self._label(), line)

    def _cut(self) -> int | None:
        """Where to cut the buffer into a line, or None to wait for more text."""
        newline = self._buffer.find("\n")
        if newline != -1:
            return newline
        if len(self._buffer) >= self._soft_limit:
            ends = [m.end() for m in _SENTENCE_END.finditer(self._buffer) if m.end() >= self._soft_limit // 2]
            if ends:
                return ends[-1]
        if len(self._buffer) >= self._hard_limit:
            space = self._buffer.rfind(" ", 0, self._hard_limit)
            return space if space > 0 else self._hard_limit
        return None

    def summary(self, session: dict[str, Any]) -> dict[str, Any]:
        """The operator's XCom value."""
        out: dict[str, Any] = {
            "session": session,
            "response": "".join(self._chat),
            "results": self.results,
            "event_counts": dict(self.counts),
        }
        if self._keep_events:
            out["events"] = self.events
        return out


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _parse_result(content: str) -> Any:
    """A result event's content is a JSON string ``{"content_type": ..., "content": ...}``."""
    try:
        return json.loads(content)
    except ValueError:
        return content


def _describe_result(parsed: Any) -> str:
    if not isinstance(parsed, dict):
        return _one_line(str(parsed), 200)
    content_type = parsed.get("content_type", "unknown")
    content = parsed.get("content")
    if content_type == "table":
        data = content.get("data") if isinstance(content, dict) else content
        if isinstance(data, str):
            rows = [row for row in csv.reader(io.StringIO(data)) if any(cell.strip() for cell in row)]
            return f"table ({max(len(rows) - 1, 0)} rows)"
        if isinstance(data, list):
            return f"table ({len(data)} rows)"
        return "table"
    preview = content if isinstance(content, str) else json.dumps(content, default=str)
    return f"{content_type}: {_one_line(preview, 160)}"
