"""Retry rules: Retry-After, backoff on 5xx and dropped connections, max_retries and the deadline, and the
non-idempotent calls (a start is reconciled, never duplicated; a prompt is never replayed)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import pytest

from airflow_provider_candela.exceptions import CandelaApiError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, MODEL, PIPELINE, closed_port, record_waits, requests_of

MakeHook = Callable[..., CandelaHook]


def sessions(emulator: CandelaEmulator) -> tuple[int, int]:
    stats = emulator.stats()
    return stats["sessions_started"], stats["sessions_stored"]


# --------------------------------------------------------------------------------------------- idempotent calls


def test_429_honours_retry_after_seconds(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    emulator.add_fault(match="GET /slot/user_has_slot", status=429, retry_after="1")
    waits = record_waits(hook)
    assert hook.user_has_slot() is False
    assert waits == [1.0], "the server's Retry-After, not the backoff"
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 2, "429": 1}


def test_503_honours_retry_after_as_http_date(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    emulator.add_fault(
        match="GET /slot/user_has_slot", status=503, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True)
    )
    waits = record_waits(hook)
    hook.user_has_slot()
    [wait] = waits
    assert 20 < wait <= 30, f"waited {wait} s for a date 30 s ahead (1 s granularity)"
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 2, "503": 1}


def test_retry_after_is_capped(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    hook.retry_after_cap = 0.2
    emulator.add_fault(match="GET /slot/user_has_slot", status=429, retry_after="3600")
    waits = record_waits(hook)
    hook.user_has_slot()
    assert waits == [0.2], "Retry-After: 3600 waited only the cap"
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 2, "429": 1}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_once_is_retried(hook: CandelaHook, emulator: CandelaEmulator, status: int) -> None:
    emulator.add_fault(match="GET /sessions/list", status=status)
    assert hook.list_sessions() == []
    assert requests_of(emulator.stats(), "GET /sessions/list") == {str(status): 1, "200": 1}


def test_5xx_until_max_retries(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"max_retries": 3})
    emulator.add_fault(match="GET /sessions/list", status=502, count=-1, body={"detail": "bad gateway"})
    with pytest.raises(CandelaApiError) as info:
        hook.list_sessions()
    message = str(info.value)
    assert message.startswith("Candela failed GET /sessions/list (502): bad gateway.")
    assert "gave up after 4 attempts" in message and "max_retries=3" in message
    assert info.value.status == 502
    assert requests_of(emulator.stats(), "GET /sessions/list") == {"502": 4}


def test_no_retry_with_max_retries_zero(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(hook_kwargs={"max_retries": 0})
    emulator.add_fault(match="GET /sessions/list", status=503)
    with pytest.raises(CandelaApiError, match=r"\(503\)"):
        hook.list_sessions()
    assert requests_of(emulator.stats(), "GET /sessions/list") == {"503": 1}


def test_deadline_bounds_the_retries(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.retry_deadline = 0.5
    emulator.add_fault(match="GET /sessions/list", status=503, retry_after="2", count=-1)
    waits = record_waits(hook)
    with pytest.raises(CandelaApiError, match=r"\(503\)"):
        hook.list_sessions()
    assert waits == [], "a wait of 2 s would end past the 0.5 s deadline: none was started"
    assert requests_of(emulator.stats(), "GET /sessions/list") == {"503": 1}


def test_client_errors_are_not_retried(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /sessions/list", status=400, body={"detail": "no"})
    with pytest.raises(CandelaApiError, match=r"Candela rejected GET /sessions/list \(400\): no"):
        hook.list_sessions()
    assert requests_of(emulator.stats(), "GET /sessions/list") == {"400": 1}


def test_dropped_connection_on_a_get_is_retried(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /sessions/list", drop=True)
    assert hook.list_sessions() == []
    assert requests_of(emulator.stats(), "GET /sessions/list") == {"dropped": 1, "200": 1}


def test_unreachable_api_is_retried_then_explained(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    hook = make_hook(pat=True, host=url, extra={"max_retries": 2}, conn_id="candela_down")
    with pytest.raises(CandelaApiError) as info:
        hook.start_session(PIPELINE, MODEL)
    message = str(info.value)
    assert message.startswith(f"Could not complete POST /session at {url} (ConnectionError")
    assert "Check the host and timeout of connection 'candela_down'" in message
    assert "gave up after 3 attempts" in message  # refused before sending: safe to retry even a start
    assert info.value.status is None


def test_stop_and_put_slot_retry_freely(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /session/stop", drop=True, after=True)
    emulator.add_fault(match="PUT /slot", status=500, after=True)
    ready.stop_session()
    ready.assign_slot()
    stats = emulator.stats()
    assert requests_of(stats, "GET /session/stop") == {"dropped": 1, "204": 1}
    assert requests_of(stats, "PUT /slot") == {"204": 2, "500": 1}


def test_delete_whose_answer_was_lost(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    meta = ready.start_session(PIPELINE, MODEL)
    emulator.add_fault(match="DELETE /sessions/", drop=True, after=True)
    assert ready.delete_session(meta.obj_id) == []  # deleted by the lost attempt; the retry found it gone
    assert ready.session_exists(meta.obj_id) is False
    assert requests_of(emulator.stats(), "DELETE /sessions/") == {"dropped": 1, "404": 1}


def test_dispose_whose_answer_was_lost(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="DELETE /slot", drop=True, after=True)
    ready.dispose_slot()
    assert ready.user_has_slot() is False
    assert requests_of(emulator.stats(), "DELETE /slot") == {"dropped": 1, "400": 1}


# --------------------------------------------------------------------------------------------- starting sessions


@pytest.mark.parametrize(
    "fault",
    [
        {"drop": True},
        {"drop": True, "after": True},
        {"status": 502, "after": True},
        {"status": 503},
        {"status": 500, "after": True},
        {"delay": 0.5, "drop": True, "after": True},
    ],
    ids=["drop-before", "drop-after", "502-after", "503-before", "500-after", "slow-drop-after"],
)
def test_a_failed_start_leaves_exactly_one_session(
    ready: CandelaHook, emulator: CandelaEmulator, fault: dict[str, object]
) -> None:
    emulator.add_fault(match="POST /session", **fault)
    meta = ready.start_session(PIPELINE, MODEL)
    assert sessions(emulator) == (1, 1)
    assert ready.list_sessions() == [meta]
    assert emulator.stats()["running_sessions"][emulator.username] == meta.obj_id.model_dump(mode="json")
    posts = requests_of(emulator.stats(), "POST /session")
    # Reconciled, not replayed, when the lost attempt had created the session.
    assert posts.get("200", 0) == (0 if fault.get("after") else 1)
    assert requests_of(emulator.stats(), "GET /sessions/list")  # it looked before deciding


def test_a_failed_dev_start_is_reconciled(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /session/dev", drop=True, after=True)
    meta = ready.start_dev_session(MODEL, {"first": "a", "nodes": {"a": {"type": "no-op"}}}, {"identity": "x"})
    assert sessions(emulator) == (1, 1)
    assert ready.get_session(meta.obj_id).dev_session is True
    assert requests_of(emulator.stats(), "POST /session/dev") == {"dropped": 1}


def test_reconcile_ignores_other_sessions(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    older = ready.start_session(AGENT, MODEL)  # same user, other app: not the lost one
    ready.stop_session()
    emulator.add_fault(match="POST /session", drop=True)
    meta = ready.start_session(PIPELINE, MODEL)
    assert meta != older
    assert sessions(emulator) == (2, 2)


def test_reconcile_with_a_personal_access_token(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(pat=True)
    hook.ensure_slot(poll_interval=0.01)
    emulator.add_fault(match="POST /session", drop=True, after=True)
    meta = hook.start_session(PIPELINE, MODEL)
    assert meta.created_by == emulator.username
    assert sessions(emulator) == (1, 1)


def test_429_on_start_is_retried_without_reconciling(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /session", status=429, retry_after="0")
    ready.start_session(PIPELINE, MODEL)
    assert sessions(emulator) == (1, 1)
    assert requests_of(emulator.stats(), "POST /session") == {"429": 1, "200": 1}
    assert requests_of(emulator.stats(), "GET /sessions/list") == {}


def test_start_failing_until_max_retries(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"max_retries": 2})
    hook.ensure_slot(poll_interval=0.01)
    emulator.add_fault(match="POST /session", status=503, count=-1)
    with pytest.raises(CandelaApiError, match=r"Candela failed POST /session \(503\).*gave up after 3 attempts"):
        hook.start_session(PIPELINE, MODEL)
    assert sessions(emulator) == (0, 0)
    assert requests_of(emulator.stats(), "POST /session") == {"503": 3}


def test_start_whose_reconciliation_also_fails(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    ready.config.__dict__  # noqa: B018 - load the connection before the faults
    emulator.add_fault(match="POST /session", drop=True, after=True)
    emulator.add_fault(match="GET /sessions/list", status=500, count=-1)
    with pytest.raises(CandelaApiError) as info:
        ready.start_session(PIPELINE, MODEL)
    assert "The session may or may not have been started, and checking failed too" in str(info.value)
    assert sessions(emulator) == (1, 1)
    assert requests_of(emulator.stats(), "POST /session") == {"dropped": 1}  # no blind replay


# --------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("route", ["POST /session/pipeline_submit", "POST /session/agent_submit"])
@pytest.mark.parametrize(
    "fault",
    [{"drop": True}, {"drop": True, "after": True}, {"status": 502, "after": True}, {"status": 503}],
    ids=["drop-before", "drop-after", "502-after", "503"],
)
def test_prompts_are_not_replayed(
    ready: CandelaHook, emulator: CandelaEmulator, route: str, fault: dict[str, object]
) -> None:
    agent = route.endswith("agent_submit")
    meta = ready.start_session(AGENT if agent else PIPELINE, MODEL)
    emulator.add_fault(match=route, **fault)
    submit = ready.submit_prompt_to_agent if agent else ready.submit_pipeline_prompt
    with pytest.raises(CandelaApiError) as info:
        submit(meta.obj_id, "do it once")
    assert "The prompt may or may not have run; it is not resubmitted automatically" in str(info.value)
    assert sum(requests_of(emulator.stats(), route).values()) == 1


@pytest.mark.parametrize("route", ["POST /session/pipeline_submit", "POST /session/agent_submit"])
def test_429_on_a_prompt_is_retried(ready: CandelaHook, emulator: CandelaEmulator, route: str) -> None:
    agent = route.endswith("agent_submit")
    meta = ready.start_session(AGENT if agent else PIPELINE, MODEL)
    emulator.add_fault(match=route, status=429, retry_after="0")
    if agent:
        events = list(ready.submit_prompt_to_agent(meta.obj_id, "hi"))
        assert events[0].event_type == "user"
    else:
        assert ready.submit_pipeline_prompt(meta.obj_id, "hi").result
    assert requests_of(emulator.stats(), route) == {"429": 1, "200": 1}


def test_prompt_to_an_unreachable_api_is_retried(make_hook: MakeHook) -> None:
    hook = make_hook(pat=True, host=f"http://127.0.0.1:{closed_port()}", extra={"max_retries": 1})
    with pytest.raises(CandelaApiError, match="gave up after 2 attempts"):
        hook.submit_pipeline_prompt("default/s", "never sent")  # refused before sending: retrying cannot run it twice
