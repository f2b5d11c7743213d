"""Contract test: the agent stream read line by line, the way candela-kit 0.1.x / 0.2.1 reads it.

candela-kit posts with ``requests.post(..., stream=True)``, iterates ``iter_lines(chunk_size=1024)`` and
validates every line with ``Event.model_validate_json(line)``, where ``event_type`` is a ``Literal`` of
the seven Gen A types.  A blank line, SSE framing, keep-alive whitespace or an unknown event type
breaks it, and it shows the answer while it streams.  Plain ``requests`` with a bearer token, as the
kit does (no OAuth, no retries): only the emulator is under test here.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import pytest
import requests
from pydantic import BaseModel, ConfigDict

from airflow_provider_candela.testing import wait_until


class KitEvent(BaseModel):
    """candela-kit's Event: strict about the event type, like ``Literal[...]`` in the kit."""

    model_config = ConfigDict(extra="forbid")

    event_type: Literal["user", "chat", "intent", "info", "wait", "sys", "result"]
    content: str


def _agent_session(emulator: Any) -> tuple[requests.Session, str]:
    """Slot + agent session, the kit's sequence: has_slot -> assign -> poll state -> stop -> start."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {emulator.access_token}"
    base = emulator.url
    if not http.get(f"{base}/slot/user_has_slot", timeout=10).json():
        http.put(f"{base}/slot", params={"slot_type": "gpu-medium"}, timeout=10).raise_for_status()
    wait_until(lambda: http.get(f"{base}/slot/state", timeout=10).json() == 3, timeout=30, interval=0.05)
    assert http.get(f"{base}/session/stop", timeout=10).status_code == 204
    started = http.post(
        f"{base}/session",
        json={
            "app": {"scope": "default", "identifier": "demo-agent", "version": None},
            "model_cfg": {"scope": "default", "identifier": "demo-model", "version": None},
            "scope": "default",
            "parent_session": None,
            "circuit_override": None,
            "directive_override": None,
        },
        timeout=10,
    )
    started.raise_for_status()
    return http, started.json()["obj_id"]["identifier"]


@pytest.fixture
def agent_session(candela_emulator: Any) -> Any:
    http, session_id = _agent_session(candela_emulator)
    yield http, session_id
    http.get(f"{candela_emulator.url}/session/stop", timeout=10)
    http.close()


def _read_like_kit(http: requests.Session, url: str, prompt: str, session_id: str) -> list[tuple[float, KitEvent]]:
    events: list[tuple[float, KitEvent]] = []
    with http.post(
        f"{url}/session/agent_submit",
        json={"prompt": prompt, "session_id": session_id, "scope": "default"},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == "application/x-ndjson"
        for line in response.iter_lines(chunk_size=1024):
            events.append((time.monotonic(), KitEvent.model_validate_json(line)))
    return events


def test_agent_stream_reads_line_by_line(candela_emulator: Any, agent_session: Any) -> None:
    http, session_id = agent_session
    prompt = "Show the sales result as a table"
    events = [e for _, e in _read_like_kit(http, candela_emulator.url, prompt, session_id)]

    assert events[0] == KitEvent(event_type="user", content=prompt)
    chat = [e for e in events[1:] if e.event_type == "chat"]
    assert chat, "no chat fragments streamed"
    assert "".join(e.content for e in chat).strip()
    assert events[-1].event_type == "result"
    result = json.loads(events[-1].content)
    assert set(result) >= {"content_type", "content"}


def test_agent_stream_body_is_compact_ndjson(candela_emulator: Any, agent_session: Any) -> None:
    """Every line is one compact JSON object ended by a newline: no blank lines, no framing."""
    http, session_id = agent_session
    response = http.post(
        f"{candela_emulator.url}/session/agent_submit",
        json={"prompt": "Give me a result", "session_id": session_id},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.content
    assert body.endswith(b"\n")
    lines = body[:-1].split(b"\n")
    assert len(lines) >= 3
    for line in lines:
        assert line.strip() == line and line, f"blank or padded line {line!r}"
        parsed = json.loads(line)
        assert set(parsed) == {"event_type", "content"}
        assert json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode() == line


def test_agent_stream_arrives_while_it_is_generated(candela_emulator: Any, agent_session: Any) -> None:
    """With a delay between events, the kit sees the first event long before the last one."""
    http, session_id = agent_session
    delay = 0.25
    candela_emulator.configure(event_delay=delay, agent_chat_events=4)
    timed = _read_like_kit(http, candela_emulator.url, "Tell me a story", session_id)
    assert [e.event_type for _, e in timed][:2] == ["user", "chat"]
    assert len(timed) >= 5
    spread = timed[-1][0] - timed[0][0]
    # Buffered, every line would arrive at once; streamed, they are ~delay apart.
    assert spread >= (len(timed) - 1) * delay * 0.5, f"events arrived within {spread:.3f} s: buffered, not streamed"
