"""CandelaSlotReadyTrigger: run with asyncio against the emulator (slow and failing slots), serialized, killed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import SlotState
from airflow_provider_candela.testing import wait_until
from airflow_provider_candela.triggers._shared import HOOKS
from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

# The message Airflow 3.3's triggerer cancels a trigger with when the user acts on its task (then it calls on_kill).
USER_ACTION = "user-action"


def _first_event(trigger: CandelaSlotReadyTrigger, limit: float = 30.0) -> dict[str, Any]:
    """Run the trigger to its first event (as the triggerer would) and return the payload.

    Checks that the trigger left nothing running once its event was out (no task still polling).
    """

    async def first() -> dict[str, Any]:
        before = asyncio.all_tasks()
        async for event in trigger.run():
            assert asyncio.all_tasks() == before, "a task of the trigger runs on after its event"
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), limit))


def _assign(candela: Any, startup: float, fails: bool = False) -> str:
    """Assign the user a slot that takes ``startup`` seconds (then ends ERRORED if ``fails``); its id."""
    candela.configure(slot_startup_seconds=startup, slot_start_fails=fails)
    with CandelaHook() as hook:
        hook.assign_slot()
        return hook.get_slot_metadata().slot_id


def _has_slot() -> bool:
    with CandelaHook() as hook:
        return hook.user_has_slot()


def _ready() -> bool:
    with CandelaHook() as hook:
        return hook.get_slot_state() == SlotState.HOST_READY


def test_serialize_round_trip_carries_the_slot_and_timing_but_no_credentials(assert_serializes_safely: Any) -> None:
    before = time.time()
    trigger = CandelaSlotReadyTrigger("slot-1", assigned=True, poll_interval=2, timeout=60)
    after = time.time()
    kwargs = assert_serializes_safely(trigger)
    assert before + 60 <= kwargs.pop("end_time") <= after + 60
    assert before <= kwargs.pop("waiting_since") <= after  # for the candela.slot.wait timer, across triggerers
    assert kwargs == {
        "slot_id": "slot-1",
        "assigned": True,
        "candela_conn_id": "candela_default",
        "hook_params": {},
        "poll_interval": 2.0,
    }


def test_polls_until_a_slow_slot_is_ready(candela: Any) -> None:
    slot_id = _assign(candela, startup=3)  # long enough for several polls however late the trigger starts
    event = _first_event(CandelaSlotReadyTrigger(slot_id, poll_interval=0.1, timeout=20))
    assert event == {
        "status": "success",
        "message": event["message"],
        "slot_id": slot_id,
        "state": "HOST_READY",
    }
    assert f"The Candela slot {slot_id} is ready" in event["message"]
    assert candela.request_count("GET /slot/state", "200") >= 3, "polled while the slot was starting"
    assert candela.request_count("PUT /slot") == 1, "the trigger never assigns a slot"
    assert HOOKS.users("candela_default") == 0, "the shared hook is released when the trigger fires"


def test_an_errored_slot_fires_failed_naming_the_slot_and_its_state(candela: Any) -> None:
    slot_id = _assign(candela, startup=0.6, fails=True)
    event = _first_event(CandelaSlotReadyTrigger(slot_id, poll_interval=0.1, timeout=20))
    assert event["status"] == "failed"
    assert event["state"] == "ERRORED"
    assert f"The Candela slot {slot_id} went to ERRORED (6) while starting: dispose of it" in event["message"]


def test_the_deadline_fires_timeout_with_the_last_state_and_stops_polling(candela: Any) -> None:
    slot_id = _assign(candela, startup=60)
    event = _first_event(CandelaSlotReadyTrigger(slot_id, poll_interval=0.1, timeout=1.5))
    assert event["status"] == "timeout"
    assert event["state"] == "START_REQUEST"
    assert (
        f"The Candela slot {slot_id} was not ready before the deadline (last state START_REQUEST (0)"
        in (event["message"])
    )
    assert "raise slot_ready_timeout" in event["message"]
    # polled until the deadline, then stopped: Candela saw exactly the checks the event counts
    [checks] = re.findall(r", (\d+) checks every 0.1 s\)", event["message"])
    assert candela.request_count("GET /slot/state", "200") == int(checks) >= 1


@pytest.mark.parametrize(
    ("conn_id", "expected"),
    [("no_such_conn", "no_such_conn"), ("candela_default", "400")],
    ids=["missing-connection", "no-slot"],
)
def test_failing_checks_fire_error_naming_the_slot(candela: Any, conn_id: str, expected: str) -> None:
    # candela_default: the user has no slot (disposed of behind the task's back): Candela answers 400.
    event = _first_event(CandelaSlotReadyTrigger("slot-x", candela_conn_id=conn_id, poll_interval=0.1, timeout=10))
    assert event["status"] == "error"
    assert event["message"].startswith("Checking the Candela slot slot-x failed (last state unknown): ")
    assert expected in event["message"]


def test_a_restarted_triggerer_resumes_the_wait_with_the_original_deadline(candela: Any) -> None:
    slot_id = _assign(candela, startup=60)
    trigger = CandelaSlotReadyTrigger(slot_id, assigned=True, poll_interval=0.1, timeout=1.5)
    deadline = trigger.end_time
    assert deadline is not None

    async def run_then_shut_down() -> None:
        task = asyncio.ensure_future(_drain(trigger))
        await asyncio.to_thread(wait_until, lambda: candela.request_count("GET /slot/state") >= 2)
        task.cancel()  # a triggerer shutting down cancels without a message: no on_kill
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run_then_shut_down(), 20))
    assert _has_slot(), "a triggerer shutdown disposes of nothing"
    # The next triggerer builds the trigger from the row Airflow stored: its serialized kwargs.
    _, kwargs = trigger.serialize()
    restarted = CandelaSlotReadyTrigger(**json.loads(json.dumps(kwargs)))
    event = _first_event(restarted)
    assert event["status"] == "timeout"
    assert time.time() == pytest.approx(deadline, abs=1.0), "the deadline is the original one, not restarted"
    assert candela.request_count("PUT /slot") == 1, "neither trigger assigned a slot"


def test_a_restarted_trigger_fires_when_the_slot_becomes_ready(candela: Any) -> None:
    slot_id = _assign(candela, startup=1.0)
    _, kwargs = CandelaSlotReadyTrigger(slot_id, poll_interval=0.1, timeout=30).serialize()
    event = _first_event(CandelaSlotReadyTrigger(**kwargs))
    assert (event["status"], event["state"]) == ("success", "HOST_READY")


async def _drain(trigger: CandelaSlotReadyTrigger) -> None:
    async for _ in trigger.run():
        pass


def _kill(candela: Any, trigger: CandelaSlotReadyTrigger, slot_ready_first: bool = False) -> None:
    """What Airflow 3.3's triggerer does when the user kills the deferred task: cancel the trigger, then on_kill."""

    async def kill() -> None:
        before = asyncio.all_tasks()
        task = asyncio.ensure_future(_drain(trigger))
        await asyncio.to_thread(wait_until, lambda: candela.request_count("GET /slot/state") >= 1)
        if slot_ready_first:  # the slot became ready between two checks of the trigger
            await asyncio.to_thread(wait_until, _ready, 10)
        task.cancel(USER_ACTION)
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()
        assert asyncio.all_tasks() == before, "a task of the trigger polls on after the kill"

    asyncio.run(asyncio.wait_for(kill(), 20))


def test_killing_the_task_disposes_of_the_starting_slot_it_assigned(candela: Any) -> None:
    slot_id = _assign(candela, startup=60)
    _kill(candela, CandelaSlotReadyTrigger(slot_id, assigned=True, poll_interval=0.1, timeout=60))
    assert not _has_slot(), "the starting slot the task assigned was disposed of"
    assert candela.request_count("DELETE /slot", "204") == 1  # (_kill checks that polling stopped)
    assert candela.stats()["sessions_started"] == 0
    assert HOOKS.users("candela_default") == 0


@pytest.mark.parametrize(
    ("assigned", "startup", "other_slot"),
    [(False, 60, False), (True, 1.5, False), (True, 60, True)],
    ids=["not-assigned-by-the-task", "ready-by-then", "another-slot"],
)
def test_killing_the_task_leaves_a_slot_that_is_not_its_starting_one(
    candela: Any, assigned: bool, startup: float, other_slot: bool
) -> None:
    slot_id = _assign(candela, startup=startup)
    awaited = "slot-of-an-earlier-try" if other_slot else slot_id
    trigger = CandelaSlotReadyTrigger(awaited, assigned=assigned, poll_interval=30, timeout=60)
    _kill(candela, trigger, slot_ready_first=startup < 60)
    assert _has_slot()
    assert candela.request_count("DELETE /slot") == 0
