"""Deterministic answers of the emulated apps: derived from the prompt, or canned by the catalogue."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any, Final

from airflow_provider_candela.emulator.config import CannedResponse

__all__ = ["agent_events", "find_canned", "pipeline_result", "wants_result"]

_WANTS_RESULT: Final = re.compile(r"table|result", re.IGNORECASE)
_WORD: Final = re.compile(r"\w+")


def find_canned(responses: list[CannedResponse], app: str, prompt: str, *, agent: bool) -> CannedResponse | None:
    """First catalogue response whose pattern matches the prompt (and app, when it names one)."""
    for canned in responses:
        if canned.app is not None and canned.app != app:
            continue
        if (canned.events if agent else canned.pipeline) is None:
            continue
        if canned.pattern.search(prompt):
            return canned
    return None


def _words(prompt: str) -> list[str]:
    return _WORD.findall(prompt) or ["nothing"]


def pipeline_result(prompt: str, app: str, session_id: str) -> dict[str, Any]:
    """The ``result`` object of a pipeline answer: a pure function of the prompt."""
    words = _words(prompt)
    return {
        "app": app,
        "session_id": session_id,
        "prompt": prompt,
        "answer": f"Processed {len(words)} words: {' '.join(words[:12])}",
        "word_count": len(words),
        "words": words[:100],
        "checksum": hashlib.sha256(prompt.encode()).hexdigest()[:16],
    }


def wants_result(prompt: str) -> bool:
    """Agents emit a ``result`` event when the prompt mentions a table or a result."""
    return _WANTS_RESULT.search(prompt) is not None


def _table(prompt: str) -> str:
    rows = ["index,word,length"]
    rows += [f"{i},{word},{len(word)}" for i, word in enumerate(_words(prompt)[:20])]
    return "\n".join(rows) + "\n"


def agent_events(prompt: str, chat_events: int | None) -> Iterator[tuple[str, str]]:
    """``(event_type, content)`` of the agent stream: ``user`` echo, ``chat`` fragments, maybe ``result``.

    Generated lazily, so a stream of 100,000 events never exists in memory at once.
    """
    words = _words(prompt)
    yield "user", prompt
    if chat_events is None:
        # Default: a readable, deterministic answer that repeats the whole prompt, word by word.
        yield "chat", "You asked:"
        for word in words:
            yield "chat", f" {word}"
        yield "chat", f". This answer comes from the Candela emulator ({len(words)} words).\n"
    else:
        for i in range(chat_events):
            yield "chat", ("You asked:" if i == 0 else f" {words[(i - 1) % len(words)]}")
    if wants_result(prompt):
        yield (
            "result",
            json.dumps({"content_type": "table", "content": {"data": _table(prompt)}}, separators=(",", ":")),
        )
