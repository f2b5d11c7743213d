"""Figure 7, deferrable start: worker-slot seconds held by one session lifecycle while the slot takes 60 s.

One lifecycle = ``CandelaStartSessionOperator`` -> ``CandelaSubmitPipelinePromptOperator`` ->
``CandelaStopSessionOperator``, for a Candela user without a slot; the emulator brings a new slot up in
``slot_seconds`` (60 s, the figure's point; 6 s with ``--quick``).  Both sides run in this run, one
after the other, each with its own Candela user (so each assigns its own slow slot):

* not deferred (``deferrable=False``): the start task waits for the slot inside ``execute``;
* deferred (``deferrable=True``): ``execute`` assigns the slot, checks it once and raises
  ``TaskDeferred``; the trigger it asked for is rebuilt from its serialized kwargs (as a triggerer
  does) and run to its event in an asyncio loop; then ``execute_complete`` runs (as the resumed task).

Worker-slot seconds = the wall time spent inside the operators' ``execute`` / ``execute_complete``
calls, the part of a task run the provider controls (each worker run also pays Airflow's own task
start-up, the same per run on both sides; the deferred lifecycle has one more worker run, the resume:
reported as ``worker_runs``).  Target: deferred <= 2 s.  Reported for information: the trigger's CPU
seconds per poll (process CPU while only the trigger runs, over the ``GET /slot/state`` it sent).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import time
from collections.abc import Callable
from typing import Any, Final
from unittest import mock

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, log, request_count

__all__ = ["run"]

APP: Final = "default/demo-pipeline"
MODEL: Final = "default/demo-model"
TARGET_DEFERRED_S: Final = 2.0


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _trigger_event(trigger: Any) -> tuple[dict[str, Any], float]:
    """Rebuild ``trigger`` from its serialized form (as a triggerer does), run it to its event; (payload, CPU s)."""
    from importlib import import_module

    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(import_module(module), name)(**kwargs)

    async def first() -> dict[str, Any]:
        async for event in rebuilt.run():
            return dict(event.payload)
        raise RuntimeError("the trigger ended without an event")

    cpu = _process_cpu()
    payload = asyncio.run(first())
    return payload, _process_cpu() - cpu


def _lifecycle(conn_id: str, deferrable: bool, poll_interval: float) -> dict[str, Any]:
    """Run start -> prompt -> stop as a worker (and a triggerer) would; the time spent in the worker."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaStopSessionOperator,
        CandelaSubmitPipelinePromptOperator,
    )

    result: dict[str, Any] = {"worker_s": {}, "worker_runs": 0, "trigger_cpu_s": 0.0, "trigger_s": 0.0}

    def in_worker(task_id: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return call()
        finally:
            result["worker_s"][task_id] = result["worker_s"].get(task_id, 0.0) + time.perf_counter() - started
            result["worker_runs"] += 1

    start = CandelaStartSessionOperator(
        task_id="start",
        app=APP,
        model=MODEL,
        candela_conn_id=conn_id,
        deferrable=deferrable,
        slot_poll_interval=poll_interval,
    )
    try:
        session = in_worker("start", lambda: start.execute({}))
    except TaskDeferred as deferral:
        waited = time.perf_counter()
        event, result["trigger_cpu_s"] = _trigger_event(deferral.trigger)
        result["trigger_s"] = time.perf_counter() - waited
        result["trigger_event"] = event["status"]
        resume = getattr(start, deferral.method_name)
        session = in_worker("start", lambda: resume({}, event=event))
    prompt = CandelaSubmitPipelinePromptOperator(
        task_id="prompt", session=session, prompt="Summarise the day.", candela_conn_id=conn_id
    )
    in_worker("prompt", lambda: prompt.execute({}))
    stop = CandelaStopSessionOperator(task_id="stop", session=session, candela_conn_id=conn_id)
    in_worker("stop", lambda: stop.execute({}))
    result["worker_total_s"] = sum(result["worker_s"].values())
    return result


def run(emulator: CandelaEmulator, *, slot_seconds: float = 60.0, poll_interval: float = 5.0) -> list[Row]:
    """Both lifecycles, one after the other, each for a user without a slot; two rows."""
    emulator.reset()
    emulator.configure(slot_startup_seconds=slot_seconds)
    sides: dict[str, dict[str, Any]] = {}
    with mock.patch.dict(os.environ):  # the two connections below are removed afterwards
        for name, deferrable in (("blocking", False), ("deferred", True)):
            user, password = f"bench-{name}", secrets.token_urlsafe(12)
            emulator.add_user(user, password)
            conn = {**json.loads(emulator.connection_json()), "login": user, "password": password}
            os.environ[f"AIRFLOW_CONN_BENCH_{name.upper()}"] = json.dumps(conn)
            log(f"figure 7: one session lifecycle, {name}, slot start-up {slot_seconds:g} s")
            before = emulator.stats()
            sides[name] = _lifecycle(f"bench_{name}", deferrable, poll_interval)
            after = emulator.stats()
            sides[name]["slot_state_polls"] = request_count(after, "GET /slot/state") - request_count(
                before, "GET /slot/state"
            )
            sides[name]["sessions_started"] = int(after["sessions_started"]) - int(before["sessions_started"])
    blocking, deferred = sides["blocking"], sides["deferred"]
    if deferred.get("trigger_event") != "success" or deferred["sessions_started"] != 1:
        raise RuntimeError(f"the deferred lifecycle did not start its session: {deferred}")
    # Polls by the trigger: all but the one check the start task makes before it defers.
    trigger_polls = max(1, deferred["slot_state_polls"] - 1)
    cpu_per_poll_ms = 1000 * deferred["trigger_cpu_s"] / trigger_polls
    details = {"slot_seconds": slot_seconds, "poll_interval": poll_interval, "blocking": blocking, "deferred": deferred}
    return [
        Row(
            figure=f"7a worker-slot s per lifecycle, {slot_seconds:g} s slot: deferred vs blocking",
            ours=deferred["worker_total_s"],
            reference=blocking["worker_total_s"],
            reference_name="deferrable=False",
            unit="s",
            ratio=deferred["worker_total_s"] / blocking["worker_total_s"],
            target=f"deferred <= {TARGET_DEFERRED_S:g} s",
            met=deferred["worker_total_s"] <= TARGET_DEFERRED_S,
            details=details,
        ),
        Row(
            figure="7b slot trigger CPU per poll",
            ours=cpu_per_poll_ms,
            reference=None,
            reference_name="",
            unit="ms",
            ratio=None,
            target="reported",
            met=True,
            details={"trigger_cpu_s": deferred["trigger_cpu_s"], "trigger_polls": trigger_polls},
            note=(
                f"{trigger_polls} polls every {poll_interval:g} s over {deferred['trigger_s']:.0f} s in the "
                f"trigger; worker runs: {deferred['worker_runs']} deferred (the resume is one more) vs "
                f"{blocking['worker_runs']} blocking"
            ),
        ),
    ]
