"""The agent transcript: a stream of agent events as readable log lines.

The summary of the same events is :class:`AgentAnswer`, read by
:meth:`~airflow_provider_candela.hooks.candela.CandelaHook.agent_answer`, which hands each event here too.

Imported by the agent prompt operator at every DAG parse: the standard library and the models only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_candela._validation import shorten
from airflow_provider_candela.models import AgentAnswer

if TYPE_CHECKING:
    pass

__all__ = ["AgentTranscript"]

_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)\s+")
_SPACES = re.compile(" *")
_STREAMED_TYPES = ("chat", "intent")


class AgentTranscript:
    """Writes a stream of agent events as readable log lines (``hook.agent_answer(..., on_event=transcript.add)``).

    Chat (and intent) fragments are buffered and written as whole lines: at each ``\\n``, at a
    sentence end once the line is ``soft_limit`` characters long, or at a word boundary when it
    reaches ``hard_limit``.  Other events are written at once with their type as a label, their
    long lines wrapped at ``hard_limit``.  No line is longer than ``hard_limit`` (plus the label),
    and the time taken grows linearly with the text, however it is split into events.

    :param write: where lines go (e.g. ``self.log.info``); called as ``write("%s", line)``.
    :param soft_limit: line length after which a sentence end flushes the line.
    :param hard_limit: line length at which the line is flushed at the last space.
    """

    def __init__(
        self,
        write: Callable[..., Any],
        *,
        soft_limit: int = 80,
        hard_limit: int = 300,
    ) -> None:
        self._write = write
        self._soft_limit = soft_limit
        self._hard_limit = hard_limit
        self._buffer = ""
        self._buffer_type: str | None = None

    def add(self, event_type: str, content: str) -> None:
        """Write one event (chat and intent fragments once a line is whole)."""
        if event_type in _STREAMED_TYPES:
            if self._buffer_type != event_type:
                self.flush()
                self._buffer_type = event_type
            self._buffer += content
            self._drain(final=False)
            return
        self.flush()
        if event_type == "result":
            self._emit("result", _describe_result(AgentAnswer.decoded(content)))
        elif event_type == "user":
            self._emit("user", _one_line(content, 200))
        else:
            lines = [line for line, _ in _lines(content, self._hard_limit, self._hard_limit, final=True) if line]
            for line in lines or [""]:
                self._emit(event_type, line)

    def flush(self) -> None:
        """Write what is left in the line buffer."""
        self._drain(final=True)
        self._buffer_type = None

    def _emit(self, label: str | None, text: str) -> None:
        self._write("%s", f"[{label}] {text}" if label else text)

    def _label(self) -> str | None:
        return None if self._buffer_type == "chat" else self._buffer_type

    def _drain(self, *, final: bool) -> None:
        consumed = 0
        for line, end in _lines(self._buffer, self._soft_limit, self._hard_limit, final=final):
            consumed = end
            if line:
                self._emit(self._label(), line)
        self._buffer = self._buffer[consumed:]


def _lines(text: str, soft_limit: int, hard_limit: int, *, final: bool) -> Iterator[tuple[str, int]]:
    """The lines of ``text`` (``""`` for a blank one), each with the index where the text after it begins.

    Stops where the last line needs more text to be cut well, unless ``final``.
    """
    start = 0
    while start < len(text):
        cut = _cut(text, start, soft_limit, hard_limit)
        if cut is None:
            if not final:
                return
            cut = len(text)
        line = text[start:cut].rstrip()
        if text.startswith("\n", cut):
            start = cut + 1
        else:
            spaces = _SPACES.match(text, cut)
            start = spaces.end() if spaces else cut
        yield (line if line.strip() else ""), start


def _cut(text: str, start: int, soft_limit: int, hard_limit: int) -> int | None:
    """Where the line beginning at ``start`` ends, or None to wait for more text.

    At a newline; else, once the line may be ``soft_limit`` long, at the last sentence end before
    ``soft_limit`` (and past half of it), or the first one after; else at the last space before
    ``hard_limit``.  It reads no more than ``hard_limit`` characters from ``start``: cutting a text into
    lines takes time linear in its length.
    """
    window = min(len(text), start + hard_limit)
    newline = text.find("\n", start, window + 1)
    if newline != -1:
        return newline
    if len(text) - start >= soft_limit:
        ends = [m.end() for m in _SENTENCE_END.finditer(text, start, window) if m.end() - start >= soft_limit // 2]
        early = [end for end in ends if end - start <= soft_limit]
        if early or ends:
            return early[-1] if early else ends[0]
    if len(text) - start >= hard_limit:
        space = text.rfind(" ", start, start + hard_limit)
        return space if space > start else start + hard_limit
    return None


def _one_line(text: str, limit: int) -> str:
    return shorten(" ".join(text.split()), limit)


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
