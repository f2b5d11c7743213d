"""Injected faults: status (+Retry-After, body), delay, drop, after, stream cut, malformed answers."""

from __future__ import annotations

import email.utils
import json
import time

import pytest
import requests

from airflow_provider_candela.testing import CandelaEmulator, CandelaEmulatorError, wait_until

from ._helpers import AGENT, MODEL, Api, password_grant

EXISTS = {"scope": "default", "identifier": "x"}


def test_status_fault_with_retry_after_seconds(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="GET /sessions/exists", status=503, retry_after="2")
    response = api.get("/sessions/exists", params=EXISTS)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "detail" in response.json()
    assert api.get("/sessions/exists", params=EXISTS).status_code == 200, "count defaults to 1"
    assert emulator.faults() == []


def test_status_fault_with_retry_after_http_date(emulator: CandelaEmulator, api: Api) -> None:
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    emulator.add_fault(match="/sessions/list", status=429, retry_after=when)
    response = api.get("/sessions/list")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == when


def test_status_fault_with_body(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="POST /session", status=400, body={"detail": "custom failure"})
    response = api.post("/session", json={})
    assert response.status_code == 400
    assert response.json() == {"detail": "custom failure"}
    assert "Retry-After" not in response.headers


def test_fault_count_and_until_cleared(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="GET /sessions/list", status=500, count=2)
    assert [api.get("/sessions/list").status_code for _ in range(3)] == [500, 500, 200]
    emulator.add_fault(match="GET /sessions/list", status=502, count=-1)
    assert [api.get("/sessions/list").status_code for _ in range(4)] == [502] * 4
    assert emulator.faults()[0]["remaining"] == -1
    emulator.clear_faults()
    assert api.get("/sessions/list").status_code == 200


def test_fault_match_is_exact_method_and_path(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="POST /sessions/list", status=500)
    assert api.get("/sessions/list").status_code == 200
    assert api.get("/sessions/exists", params=EXISTS).status_code == 200
    assert len(emulator.faults()) == 1


def test_fault_on_the_token_endpoint(emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /oauth2/token", status=429, retry_after="1")
    assert password_grant(emulator).status_code == 429
    assert password_grant(emulator).status_code == 200


def test_delay_fault(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="GET /sessions/list", delay=0.5)
    started = time.monotonic()
    response = api.get("/sessions/list")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.5
    with pytest.raises(requests.Timeout):
        emulator.add_fault(match="GET /sessions/list", delay=2)
        api.get("/sessions/list", timeout=0.3)


def test_detach_fault_carries_the_request_out_after_the_client_has_gone(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", delay=1.5, detach=True)
    with pytest.raises(requests.Timeout):
        ready.post("/session", json={"app": AGENT, "model_cfg": MODEL}, timeout=0.3)
    assert emulator.stats()["sessions_started"] == 0, "not yet: the server carries it out after its delay"
    running = wait_until(lambda: emulator.stats()["running_sessions"]["demo"], timeout=10)
    assert emulator.stats()["sessions_started"] == 1
    assert ready.get("/sessions/list").json()[0]["obj_id"] == running


def test_detach_fault_needs_a_delay(emulator: CandelaEmulator) -> None:
    with pytest.raises(CandelaEmulatorError, match="'detach' needs a 'delay'"):
        emulator.add_fault(match="POST /session", detach=True)


def test_drop_fault_resets_the_connection(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="GET /sessions/list", drop=True)
    with pytest.raises(requests.ConnectionError):
        api.get("/sessions/list")
    assert api.get("/sessions/list").status_code == 200, "the next request works on a new connection"
    assert emulator.stats()["requests"]["GET /sessions/list"] == {"dropped": 1, "200": 1}


def test_drop_after_the_handler_ran(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", drop=True, after=True)
    with pytest.raises(requests.ConnectionError):
        ready.start()
    running = emulator.stats()["running_sessions"]["demo"]
    assert running is not None, "the session was started although the client saw no answer"
    assert ready.get("/sessions/list").json()[0]["obj_id"] == running


def test_status_after_the_handler_ran(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", status=504, after=True)
    assert ready.start().status_code == 504
    assert emulator.stats()["sessions_started"] == 1
    response = ready.start()
    assert response.status_code == 409
    assert "already running" in response.json()["detail"]


def test_status_before_the_handler_changes_nothing(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", status=503)
    assert ready.start().status_code == 503
    assert emulator.stats()["sessions_started"] == 0


def agent_session(api: Api) -> str:
    api.ready_slot()
    return str(api.started(AGENT)["obj_id"]["identifier"])


def test_cut_after_events_ends_the_stream_early(emulator: CandelaEmulator, api: Api) -> None:
    sid = agent_session(api)
    emulator.configure(agent_chat_events=10)
    emulator.add_fault(match="POST /session/agent_submit", cut_after_events=3)
    response = api.post("/session/agent_submit", json={"prompt": "a table", "session_id": sid})
    assert response.status_code == 200
    lines = response.content.split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["event_type"] for line in lines[:-1]] == ["user", "chat", "chat"]


def test_cut_after_events_with_drop_breaks_the_stream(emulator: CandelaEmulator, api: Api) -> None:
    sid = agent_session(api)
    emulator.configure(agent_chat_events=10)
    emulator.add_fault(match="POST /session/agent_submit", cut_after_events=2, drop=True)
    response = api.post("/session/agent_submit", json={"prompt": "x", "session_id": sid}, stream=True)
    assert response.status_code == 200
    received = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in response.iter_lines():
            received.append(line)
    assert len(received) == 2


def test_not_json_fault(emulator: CandelaEmulator, api: Api) -> None:
    emulator.add_fault(match="GET /sessions/list", not_json=True)
    response = api.get("/sessions/list")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_not_json_fault_on_the_stream(emulator: CandelaEmulator, api: Api) -> None:
    sid = agent_session(api)
    emulator.add_fault(match="POST /session/agent_submit", not_json=True)
    lines = api.post("/session/agent_submit", json={"prompt": "x", "session_id": sid}).content.splitlines()
    with pytest.raises(ValueError):
        json.loads(lines[0])
    assert json.loads(lines[1])["event_type"] == "chat"


def test_missing_field_fault(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", missing_field="obj_id")
    response = ready.start()
    assert response.status_code == 200
    body = response.json()
    assert "obj_id" not in body
    assert body["created_by"] == "demo"
    assert int(response.headers["content-length"]) == len(response.content)


def test_missing_field_fault_on_lists_and_events(emulator: CandelaEmulator, api: Api) -> None:
    sid = agent_session(api)
    emulator.add_fault(match="GET /sessions/list", missing_field="created_at")
    assert all("created_at" not in item for item in api.get("/sessions/list").json())
    emulator.add_fault(match="POST /session/agent_submit", missing_field="content")
    lines = api.post("/session/agent_submit", json={"prompt": "x", "session_id": sid}).content.splitlines()
    assert all(set(json.loads(line)) == {"event_type"} for line in lines)


def test_extra_field_fault(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_fault(match="POST /session", extra_field=True)
    body = ready.start().json()
    assert "unexpected_extra_field" in body
    assert body["obj_id"]["version"] == "1.0.0"


def test_invalid_faults_are_rejected(emulator: CandelaEmulator) -> None:
    for fault in ({"match": "GET /x"}, {"status": 99}, {"status": 500, "bogus": 1}, {"status": 500, "count": 0}):
        with pytest.raises(CandelaEmulatorError, match="400"):
            emulator.add_fault(**fault)
    assert emulator.faults() == []


def test_faults_are_listed_and_cleared_by_reset(emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /slot/state", status=503, count=3)
    emulator.add_fault(delay=0.1)
    listed = emulator.faults()
    assert [(f.get("match"), f["remaining"]) for f in listed] == [
        ("GET /slot/state", 3),
        (None, 1),
    ]
    emulator.reset()
    assert emulator.faults() == []


def test_control_routes_are_never_faulted(emulator: CandelaEmulator) -> None:
    emulator.add_fault(status=500, count=-1)
    assert emulator.stats()["requests_total"] == 0
    emulator.clear_faults()


def test_faults_given_at_start_up() -> None:
    with CandelaEmulator(fault=[{"match": "GET /sessions/list", "status": 503, "retry_after": 1}]) as emulator:
        headers = {"Authorization": f"Bearer {emulator.access_token}"}
        response = requests.get(emulator.url + "/sessions/list", headers=headers, timeout=10)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert requests.get(emulator.url + "/sessions/list", headers=headers, timeout=10).status_code == 200
