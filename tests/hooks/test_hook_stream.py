"""The agent's NDJSON answer: parsed as it arrives, bounded memory, clear errors, connection released."""

from __future__ import annotations

import io
import tracemalloc

import pytest
import requests
import urllib3

from airflow_provider_candela.exceptions import CandelaApiError, CandelaResponseError
from airflow_provider_candela.hooks._stream import CandelaEventStream
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import Event, ObjectId
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, MODEL


@pytest.fixture
def agent(ready: CandelaHook) -> ObjectId:
    """The id of a running agent session."""
    return ready.start_session(AGENT, MODEL).obj_id


def test_first_event_arrives_before_the_stream_ends(
    ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId
) -> None:
    emulator.configure(event_delay=0.2, agent_chat_events=100)  # user + 100 chat events, one every 0.2 s
    stream = ready.submit_prompt_to_agent(agent, "tell me slowly")
    received = [next(stream)]
    # The session is stopped once the first event is here: the emulator breaks the answer off at its next event.
    # Had the hook waited for the end of the answer, every event would have come before the stop.
    ready.stop_session()
    with pytest.raises(CandelaApiError) as info:
        received.extend(stream)
    assert received[0].event_type == "user"
    assert len(received) < 101, "the whole answer came before the first event"
    assert f"broke off after {len(received)} events" in str(info.value)


def test_memory_does_not_grow_with_the_stream(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.configure(agent_chat_events=40_000)
    tracemalloc.start()
    try:
        count = 0
        received = 0
        for event in ready.submit_prompt_to_agent(agent, "a long answer please"):
            count += 1
            received += len(event.content) + 40
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40_001
    assert received > 1_500_000
    assert peak < 600_000, f"peak {peak} bytes for a {received} byte stream"


def test_stream_cut_short_by_the_server_is_the_end(
    ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId
) -> None:
    emulator.add_fault(match="POST /session/agent_submit", cut_after_events=2)
    events = list(ready.submit_prompt_to_agent(agent, "hello there world"))
    assert [e.event_type for e in events] == ["user", "chat"]


def test_connection_lost_mid_stream(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.add_fault(match="POST /session/agent_submit", cut_after_events=2, drop=True)
    stream = ready.submit_prompt_to_agent(agent, "hello there world")
    received: list[Event] = []
    with pytest.raises(CandelaApiError) as info:
        for event in stream:
            received.append(event)
    assert len(received) == 2
    assert "broke off after 2 events" in str(info.value)
    assert "The prompt was not resubmitted" in str(info.value)


def test_line_that_is_not_json(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.add_fault(match="POST /session/agent_submit", not_json=True)
    with pytest.raises(CandelaResponseError) as info:
        list(ready.submit_prompt_to_agent(agent, "hello"))
    message = str(info.value)
    assert message.startswith("Line 1 of the agent stream from POST /session/agent_submit is not JSON:")
    assert "'this line is not json'" in message
    assert "Traceback" not in message and "pydantic" not in message


def test_event_without_a_field(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.add_fault(match="POST /session/agent_submit", missing_field="content")
    with pytest.raises(CandelaResponseError, match="is not an event: missing field 'content'"):
        list(ready.submit_prompt_to_agent(agent, "hello"))


def test_unknown_fields_are_tolerated(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.add_fault(match="POST /session/agent_submit", extra_field=True)
    assert next(iter(ready.submit_prompt_to_agent(agent, "hello"))).content == "hello"


def test_a_finished_stream_gives_its_connection_back(
    ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId
) -> None:
    before = emulator.stats()["tcp_connections"]
    for _ in range(3):
        assert list(ready.submit_prompt_to_agent(agent, "again"))
    ready.list_sessions()
    assert emulator.stats()["tcp_connections"] == before


def test_a_closed_stream_drops_its_connection(ready: CandelaHook, emulator: CandelaEmulator, agent: ObjectId) -> None:
    emulator.configure(event_delay=0.2, agent_chat_events=20)
    stream = ready.submit_prompt_to_agent(agent, "long")
    assert next(stream).event_type == "user"
    before = emulator.stats()["tcp_connections"]
    stream.close()  # type: ignore[attr-defined]
    assert ready.list_sessions()  # the hook works on ...
    # ... on a new connection: the stream's was dropped, not read to its end and put back in the pool
    assert emulator.stats()["tcp_connections"] == before + 1


# The emulator never sends blank lines or a last line without "\n" (the spec forbids the first, the
# second is a server detail); these two cases are fed from memory instead of over HTTP.
def _response(body: bytes, chunk: int = 7) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.raw = urllib3.HTTPResponse(body=io.BufferedReader(io.BytesIO(body), chunk), preload_content=False)
    return response


def test_blank_lines_are_skipped_and_the_last_line_needs_no_newline() -> None:
    body = b'\n{"event_type":"user","content":"hi"}\r\n\n  \n{"event_type":"chat","content":"a\\nb"}'
    stream = CandelaEventStream(_response(body), method="POST", path="/session/agent_submit", scrub=str, chunk_size=5)
    assert [(e.event_type, e.content) for e in stream] == [("user", "hi"), ("chat", "a\nb")]
    assert stream.count == 2


def test_a_list_is_not_an_event() -> None:
    stream = CandelaEventStream(_response(b"[1, 2]\n"), method="POST", path="/session/agent_submit", scrub=str)
    with pytest.raises(CandelaResponseError, match="expected an object with event_type and content, got list"):
        next(stream)
