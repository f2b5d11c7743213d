"""CandelaSessionExistsTrigger: run with asyncio against the emulator, and its serialization."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest

from airflow_provider_candela.testing import wait_until
from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger


def _events(trigger: CandelaSessionExistsTrigger, limit: float = 30.0) -> list[dict[str, Any]]:
    """Run the trigger to its first event (as the triggerer would) and return the payloads.

    Checks that the trigger left nothing running once its event was out (no task still polling).
    """

    async def collect() -> list[dict[str, Any]]:
        out = []
        before = asyncio.all_tasks()
        async for event in trigger.run():
            out.append(event.payload)
            break
        assert asyncio.all_tasks() == before, "a task of the trigger runs on after its event"
        return out

    return asyncio.run(asyncio.wait_for(collect(), limit))


def _start_session(scope: str | None = None) -> Any:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        hook.stop_session()
        return hook.start_session("default/demo-agent", "default/demo-model", scope=scope)


def test_serialize_round_trip_carries_ids_and_timing_but_no_credentials(assert_serializes_safely: Any) -> None:
    trigger = CandelaSessionExistsTrigger(
        "team", "session-1", "1.0.0", poll_interval=5, timeout=60, hook_params={"timeout": [5, 30], "max_retries": 1}
    )
    kwargs = assert_serializes_safely(trigger)
    assert set(kwargs) == {
        "scope",
        "identifier",
        "version",
        "candela_conn_id",
        "hook_params",
        "poll_interval",
        "end_time",
    }
    assert kwargs["hook_params"] == {"timeout": [5, 30], "max_retries": 1}, (
        "the task's hook settings reach the triggerer"
    )


def test_fires_success_with_the_session_metadata(candela: Any) -> None:
    started = _start_session(scope="team")
    oid = started.obj_id
    [event] = _events(CandelaSessionExistsTrigger(oid.scope, oid.identifier, None, poll_interval=0.1, timeout=10))
    assert event["status"] == "success"
    assert event["session"] == started.model_dump(mode="json")


def test_polls_until_the_session_appears(candela: Any) -> None:
    # Candela names sessions itself; a continuation (parent_session) gets the parent's identifier
    # and the next version, so the awaited name is known before it exists.
    parent = _start_session().obj_id
    awaited = (parent.scope, parent.identifier, "1.1.0")

    def start_child_after_two_checks() -> None:
        from airflow_provider_candela.hooks.candela import CandelaHook

        wait_until(lambda: candela.request_count("GET /sessions/exists", "200") >= 2)
        with CandelaHook() as hook:
            hook.stop_session()
            hook.start_session("default/demo-agent", "default/demo-model", parent_session=parent)

    thread = threading.Thread(target=start_child_after_two_checks)
    thread.start()
    try:
        [event] = _events(CandelaSessionExistsTrigger(*awaited, poll_interval=0.1, timeout=20))
    finally:
        thread.join(30)
    assert event["status"] == "success"
    assert event["session"]["obj_id"] == dict(zip(("scope", "identifier", "version"), awaited, strict=True))
    assert candela.request_count("GET /sessions/exists", "200") >= 3


def test_times_out_with_a_clear_event(candela: Any) -> None:
    trigger = CandelaSessionExistsTrigger("default", "never", "1.0.0", poll_interval=0.1, timeout=1.5)
    [event] = _events(trigger)
    assert event["status"] == "timeout"
    assert event["session"] == {"scope": "default", "identifier": "never", "version": "1.0.0"}
    assert "default/never:1.0.0 did not appear before the deadline" in event["message"]
    # polled until the deadline, then stopped: Candela saw exactly the checks the event counts
    [checks] = re.findall(r"\((\d+) checks, every 0.1 s\)", event["message"])
    assert candela.request_count("GET /sessions/exists", "200") == int(checks) >= 1


def test_reports_an_error_event_for_a_missing_connection(candela: Any) -> None:
    trigger = CandelaSessionExistsTrigger("default", "x", candela_conn_id="no_such_conn", poll_interval=0.1)
    [event] = _events(trigger)
    assert event["status"] == "error"
    assert "no_such_conn" in event["message"]
    assert candela.stats()["requests_total"] == 0


def test_reports_an_error_event_when_candela_keeps_failing(candela: Any) -> None:
    candela.add_fault(match="GET /sessions/exists", status=403, count=-1)
    [event] = _events(CandelaSessionExistsTrigger("default", "x", poll_interval=0.1, timeout=10))
    assert event["status"] == "error"
    assert "403" in event["message"]


def test_cancelling_the_trigger_stops_polling(candela: Any) -> None:
    trigger = CandelaSessionExistsTrigger("default", "never", poll_interval=0.1, timeout=60)

    async def run_then_cancel() -> None:
        task = asyncio.ensure_future(_drain(trigger))
        await asyncio.to_thread(wait_until, lambda: candela.request_count("GET /sessions/exists") >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # The cancellation propagates (the trigger does not turn it into an error event).
    asyncio.run(asyncio.wait_for(run_then_cancel(), 20))


async def _drain(trigger: CandelaSessionExistsTrigger) -> None:
    async for _ in trigger.run():
        pass


def test_triggers_of_one_connection_share_one_hook_and_one_token(candela: Any) -> None:
    from airflow_provider_candela.triggers._shared import HOOKS

    started = _start_session()
    oid = started.obj_id
    grants_before = candela.stats()["token_grants"]["password"]

    async def run_all() -> list[dict[str, Any]]:
        async def first_event(trigger: CandelaSessionExistsTrigger) -> dict[str, Any]:
            async for event in trigger.run():
                return dict(event.payload)
            raise AssertionError("the trigger ended without an event")

        triggers = [
            CandelaSessionExistsTrigger(oid.scope, oid.identifier, None, poll_interval=0.1, timeout=30)
            for _ in range(50)
        ]
        return await asyncio.gather(*(first_event(t) for t in triggers))

    events = asyncio.run(asyncio.wait_for(run_all(), 60))

    assert [e["status"] for e in events] == ["success"] * 50
    stats = candela.stats()
    assert stats["token_grants"]["password"] - grants_before == 1, "50 triggers, one shared token"
    assert HOOKS.users("candela_default") == 0, "the shared hook is closed when its last trigger ends"
