"""Prompts: pipeline_submit JSON answers and the agent_submit NDJSON stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_candela.models import Event
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, PIPELINE, Api


def submit(api: Api, kind: str, session_id: str, prompt: str, **kwargs: Any) -> requests.Response:
    return api.post(f"/session/{kind}_submit", json={"prompt": prompt, "session_id": session_id}, **kwargs)


def events_of(response: requests.Response) -> list[Event]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    body = response.content
    assert body.endswith(b"\n")
    lines = body.split(b"\n")[:-1]
    for line in lines:
        assert line, "no blank lines"
        assert line == json.dumps(json.loads(line), separators=(",", ":")).encode(), "one compact JSON per line"
    return [Event.model_validate_json(line) for line in lines]


@pytest.fixture
def agent(ready: Api) -> tuple[Api, str]:
    return ready, ready.started(AGENT)["obj_id"]["identifier"]


@pytest.fixture
def pipeline(ready: Api) -> tuple[Api, str]:
    return ready, ready.started(PIPELINE)["obj_id"]["identifier"]


def test_pipeline_answer(pipeline: tuple[Api, str]) -> None:
    api, sid = pipeline
    response = submit(api, "pipeline", sid, "Summarise the quarterly numbers")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    uuid.UUID(body["metadata"]["request_id"])
    result = body["result"]
    assert isinstance(result, dict)
    assert result["prompt"] == "Summarise the quarterly numbers"
    assert result["word_count"] == 4
    again = submit(api, "pipeline", sid, "Summarise the quarterly numbers").json()
    assert again["result"] == result, "the result is derived from the prompt"
    assert again["metadata"]["request_id"] != body["metadata"]["request_id"]
    assert submit(api, "pipeline", sid, "something else").json()["result"] != result


def test_pipeline_prompt_with_explicit_scope(pipeline: tuple[Api, str]) -> None:
    api, sid = pipeline
    response = api.post("/session/pipeline_submit", json={"prompt": "x", "session_id": sid, "scope": "default"})
    assert response.status_code == 200
    response = api.post("/session/pipeline_submit", json={"prompt": "x", "session_id": sid, "scope": "other"})
    assert response.status_code == 400


def test_prompt_validation_is_422(pipeline: tuple[Api, str]) -> None:
    api, _ = pipeline
    response = api.post("/session/pipeline_submit", json={"prompt": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "session_id"]


def test_agent_stream(agent: tuple[Api, str]) -> None:
    api, sid = agent
    events = events_of(submit(api, "agent", sid, "hello there agent"))
    assert events[0].event_type == "user"
    assert events[0].content == "hello there agent"
    chats = [e for e in events[1:] if e.event_type == "chat"]
    assert len(chats) == len(events) - 1 >= 2, "no result event unless asked for"
    assert "".join(e.content for e in chats).startswith("You asked:")


def test_agent_result_event_when_asked_for_a_table(agent: tuple[Api, str]) -> None:
    api, sid = agent
    events = events_of(submit(api, "agent", sid, "Show the result as a table"))
    assert events[-1].event_type == "result"
    assert {e.event_type for e in events[1:-1]} == {"chat"}
    content = json.loads(events[-1].content)
    assert content["content_type"] == "table"
    csv = content["content"]["data"]
    assert csv.splitlines()[0] == "index,word,length"
    assert "0,Show,4" in csv.splitlines()


def test_agent_chat_event_count_is_configurable(emulator: CandelaEmulator, agent: tuple[Api, str]) -> None:
    api, sid = agent
    emulator.configure(agent_chat_events=7)
    events = events_of(submit(api, "agent", sid, "hi"))
    assert [e.event_type for e in events] == ["user"] + ["chat"] * 7


def test_agent_stream_is_streamed_event_by_event(emulator: CandelaEmulator, agent: tuple[Api, str]) -> None:
    api, sid = agent
    emulator.configure(event_delay=0.3, agent_chat_events=100)
    started = time.monotonic()
    response = submit(api, "agent", sid, "hi", stream=True)
    lines = response.iter_lines(chunk_size=1)
    assert json.loads(next(lines))["event_type"] == "user"
    assert time.monotonic() - started >= 0.3 - 0.05, "the delay is applied before each event"
    # Stopped once the first event is here, the session's answer breaks off at its next event: had the
    # emulator sent the events at the end, all of them would have come with the first.
    assert api.get("/session/stop").status_code == 204
    rest: list[bytes] = []
    with pytest.raises(requests.RequestException):
        rest.extend(lines)
    assert len(rest) < 100, "events arrive one by one, not at the end"


def test_agent_stream_of_100000_events(emulator: CandelaEmulator, agent: tuple[Api, str]) -> None:
    api, sid = agent
    emulator.configure(agent_chat_events=100_000)
    response = submit(api, "agent", sid, "go", stream=True)
    assert response.headers["content-type"] == "application/x-ndjson"
    count = 0
    for line in response.iter_lines(chunk_size=65536):
        assert line
        count += 1
    assert count == 100_001


def test_pipeline_submit_to_an_agent_is_400(agent: tuple[Api, str]) -> None:
    api, sid = agent
    response = submit(api, "pipeline", sid, "hi")
    assert response.status_code == 400
    assert "/session/agent_submit" in response.json()["detail"]


def test_agent_submit_to_a_pipeline_is_400(pipeline: tuple[Api, str]) -> None:
    api, sid = pipeline
    response = submit(api, "agent", sid, "hi")
    assert response.status_code == 400
    assert "/session/pipeline_submit" in response.json()["detail"]


def test_prompt_to_an_unknown_session_is_400(ready: Api) -> None:
    response = submit(ready, "pipeline", "session-nope", "hi")
    assert response.status_code == 400
    assert "session-nope" in response.json()["detail"]


def test_prompt_to_a_stopped_session_is_400(pipeline: tuple[Api, str]) -> None:
    api, sid = pipeline
    assert api.get("/session/stop").status_code == 204
    response = submit(api, "pipeline", sid, "hi")
    assert response.status_code == 400
    assert "not running" in response.json()["detail"]


def test_dev_session_is_an_agent(ready: Api) -> None:
    response = ready.post(
        "/session/dev",
        json={
            "model_id": {"scope": "default", "identifier": "demo-model"},
            "circuit": {"first": "a", "nodes": {"a": {"type": "no-op", "node_id": "a"}}},
            "directive": {},
        },
    )
    sid = response.json()["obj_id"]["identifier"]
    assert events_of(submit(ready, "agent", sid, "hi"))[0].event_type == "user"


CATALOG = {
    "apps": [{"scope": "default", "identifier": "weather-agent", "kind": "agent", "versions": ["1.0.0", "2.0.0"]}],
    "models": [{"scope": "default", "identifier": "big-model"}],
    "users": [{"username": "carol", "password": "carol-password"}],
    "responses": [
        {
            "pattern": "(?i)weather",
            "app": "default/weather-agent",
            "events": [{"event_type": "user", "content": "weather?"}, {"event_type": "chat", "content": "Sunny."}],
        },
        {"pattern": "^sum ", "pipeline": {"answer": 42}},
    ],
}


@pytest.fixture(scope="module")
def catalog_emulator() -> Iterator[CandelaEmulator]:
    with CandelaEmulator(catalog=CATALOG, slot_startup_seconds=0) as emulator:
        yield emulator


def test_catalog_apps_models_users_and_canned_responses(catalog_emulator: CandelaEmulator) -> None:
    from ._helpers import login

    catalog_emulator.reset()
    carol = login(catalog_emulator, "carol", "carol-password")
    carol.ready_slot()
    app = {"scope": "default", "identifier": "weather-agent"}
    metadata = carol.post("/session", json={"app": app, "model_cfg": {"scope": "default", "identifier": "big-model"}})
    assert metadata.status_code == 200, metadata.text
    sid = metadata.json()["obj_id"]["identifier"]
    session = carol.get("/sessions/", params={"scope": "default", "identifier": sid}).json()
    assert session["app"]["version"] == "2.0.0", "latest version of the app"
    events = events_of(submit(carol, "agent", sid, "What is the WEATHER like?"))
    assert [(e.event_type, e.content) for e in events] == [("user", "weather?"), ("chat", "Sunny.")]
    assert events_of(submit(carol, "agent", sid, "hello"))[0].content == "hello", "no match: generated answer"
    carol.get("/session/stop")
    sid = carol.started(PIPELINE)["obj_id"]["identifier"]
    assert submit(carol, "pipeline", sid, "sum these").json()["result"] == {"answer": 42}
    assert submit(carol, "pipeline", sid, "please sum these").json()["result"] != {"answer": 42}
