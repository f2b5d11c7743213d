"""A large agent answer in the task log: formatted as lines of bounded length, nothing lost.

An agent may stream a whole report as one chat event.  The transcript must cut it into lines a log
viewer can show, and must not slow the task down: how long 1 MiB takes, and the ratio of the 1 MiB
and 256 KiB times (linear, not quadratic), are figures of ``make bench``, not assertions here.
"""

from __future__ import annotations

import pytest

from airflow_provider_candela.operators._transcript import AgentTranscript

from ._support import TALLY

MIB = 1024 * 1024
HARD_LIMIT = 300  # the transcript's default longest line
SENTENCES = "The quarterly revenue grew by 4% while costs stayed flat. Is that sustainable? Perhaps! "
CHUNKS = {
    "prose": (SENTENCES * (MIB // len(SENTENCES) + 1))[:MIB],
    "one word": "x" * MIB,
    "paragraphs": ("word " * 20_000 + "\n") * (MIB // 100_001 + 1),
    "no sentence ends": ("lorem ipsum dolor sit amet " * (MIB // 27 + 1))[:MIB],
}


def _format(event_type: str, fragments: list[str]) -> list[str]:
    lines: list[str] = []
    transcript = AgentTranscript(lambda fmt, line: lines.append(fmt % line))
    for fragment in fragments:
        transcript.add(event_type, fragment)
    transcript.flush()
    return lines


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("kind", list(CHUNKS))
def test_a_1_mib_chat_chunk_becomes_bounded_lines(kind: str) -> None:
    text = CHUNKS[kind]
    with TALLY.fault(f"agent transcript: a 1 MiB chat chunk ({kind})"):
        lines = _format("chat", [text])
        assert max(len(line) for line in lines) <= HARD_LIMIT
        assert len(lines) <= len(text) // 40, "lines are cut far shorter than needed"
        assert _words(" ".join(lines)) == _words(text) or "".join(lines) == text, "text was lost or changed"


def test_a_1_mib_answer_streamed_in_small_fragments_becomes_bounded_lines_too() -> None:
    text = CHUNKS["prose"]
    with TALLY.fault("agent transcript: 1 MiB of chat in 64-byte fragments"):
        lines = _format("chat", [text[i : i + 64] for i in range(0, len(text), 64)])
        assert max(len(line) for line in lines) <= HARD_LIMIT
        assert _words(" ".join(lines)) == _words(text)


def test_a_1_mib_event_of_another_type_is_wrapped_with_its_label() -> None:
    text = CHUNKS["no sentence ends"]
    with TALLY.fault("agent transcript: a 1 MiB info event"):
        lines = _format("info", [text])
        assert all(line.startswith("[info] ") for line in lines)
        assert max(len(line) for line in lines) <= HARD_LIMIT + len("[info] ")
        assert _words(" ".join(line.removeprefix("[info] ") for line in lines)) == _words(text)
