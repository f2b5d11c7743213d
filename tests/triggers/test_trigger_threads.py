"""The Candela triggers block only threads of their own, and use the task's ``hook_params``.

A triggerer runs every trigger of every provider on one event loop; blocking calls go to threads.
``asyncio.to_thread`` (what other providers' triggers use) runs on the loop's default executor, a few
threads (cores + 4).  A Candela that accepts connections but never answers holds a thread for the
whole read timeout of each call: here 200 Candela triggers wait on such a Candela, on one event loop
with a default executor sized as the triggerer's, and another trigger's ``asyncio.to_thread`` is still
answered while every one of them is still waiting.

The silent Candela (``testing.SilentCandela``) is a loopback TCP server that accepts connections and never
answers (the emulator always answers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_candela.testing import SilentCandela
from airflow_provider_candela.triggers._shared import TRIGGER_THREADS
from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

CONN_ID = "candela_silent"
TRIGGERS = 200


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentCandela]:
    """A silent Candela and connection ``candela_silent`` to it (a PAT: every call is a plain request)."""
    server = SilentCandela()
    conn = {
        "conn_type": "candela",
        "host": server.url,
        "extra": {"access_token": "pat-silent", "timeout": "5,600", "max_retries": 0},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    try:
        yield server
    finally:
        server.close()


def test_another_triggers_to_thread_is_answered_while_200_candela_triggers_wait_on_a_silent_candela(
    silent: SilentCandela,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    async def scenario() -> tuple[str, int, int]:
        loop = asyncio.get_running_loop()
        # The triggerer's loop: its default executor is asyncio's, min(32, cores + 4) threads.
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="loop-default"))
        triggers = [
            CandelaSlotReadyTrigger(f"slot-{i}", candela_conn_id=CONN_ID, poll_interval=60, timeout=3600)
            for i in range(TRIGGERS)
        ]
        waiting = [asyncio.create_task(_first(trigger)) for trigger in triggers]
        try:
            # Every thread of the Candela pool is blocked reading from the silent Candela.
            await asyncio.wait_for(_until(lambda: silent.stats().accepted >= TRIGGER_THREADS), 120)
            answer = await asyncio.wait_for(asyncio.to_thread(lambda: "answered"), 120)
            still_waiting = sum(not task.done() for task in waiting)
            return answer, still_waiting, silent.stats().accepted
        finally:
            silent.close()  # the blocked reads end; the triggers' hooks are released
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    answer, still_waiting, connections = asyncio.run(scenario())
    assert answer == "answered", "another trigger's asyncio.to_thread got a thread"
    assert still_waiting == TRIGGERS, "it was answered while every Candela trigger was still waiting"
    assert connections == TRIGGER_THREADS, "the Candela triggers held only their own threads"


def test_the_tasks_hook_params_reach_the_triggers_hook(silent: SilentCandela) -> None:
    # The connection reads for 600 s; the task's hook_params read for 1 s without retrying: the trigger
    # gives up on the silent Candela with the task's settings, not the connection's.
    trigger = CandelaSlotReadyTrigger(
        "slot-1",
        candela_conn_id=CONN_ID,
        hook_params={"timeout": [5, 1], "max_retries": 0},
        poll_interval=60,
        timeout=3600,
    )
    _, kwargs = trigger.serialize()
    rebuilt = CandelaSlotReadyTrigger(**json.loads(json.dumps(kwargs)))  # as the triggerer builds it
    event = asyncio.run(asyncio.wait_for(_first(rebuilt), 300))
    assert event["status"] == "error"
    assert "timed out" in event["message"].lower() or "timeout" in event["message"].lower(), event["message"]
    assert silent.stats().accepted == 1, "max_retries=0 from hook_params: one attempt"


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


async def _first(trigger: CandelaSlotReadyTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        payload: dict[str, Any] = event.payload
        return payload
    raise AssertionError("the trigger ended without an event")
