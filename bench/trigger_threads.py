"""Figure 9, triggers that starve nobody: another trigger's ``asyncio.to_thread`` beside a silent Candela.

A triggerer runs every provider's triggers on one event loop; their blocking calls go to threads, and
``asyncio.to_thread`` uses the loop's default executor (cores + 4 threads).  Here 200 Candela slot
triggers wait on a Candela that accepts connections and never answers (a loopback TCP server), while
another trigger's ``asyncio.to_thread`` is timed, one call after the other:

* ours: the Candela triggers block only their own pool (``[candela] trigger_threads``);
* reference: the same loop and default executor with no Candela trigger at all;
* for information, the design before: the same 200 blocking hook calls sent to the loop's default
  executor (``asgiref.sync.sync_to_async`` without an executor), once: another trigger's call waits until
  the queue of Candela calls ahead of it has timed out, ``200 / threads x read timeout`` (the read timeout is
  1 s here; a connection's default is 300 s).

Target: another trigger's call waits no longer than without Candela (median within 2x of the reference,
which is tens of microseconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from airflow_provider_candela.testing import SilentCandela
from bench.common import Row, log, median

__all__ = ["run"]

CONN_ID: Final = "candela_silent_bench"
TRIGGERS: Final = 200
#: The silent Candela's connection: a PAT (each call is one plain request) and a short read timeout, so that
#: the design-before measurement ends; the triggers' own hook_params read for longer than the measurement.
CONNECTION_TIMEOUT: Final = "2,1"


async def _to_thread_latencies(samples: int) -> list[float]:
    """``samples`` calls of another trigger's ``asyncio.to_thread``, one after the other: each one's wait (s)."""
    out = []
    for _ in range(samples):
        began = time.perf_counter()
        await asyncio.to_thread(int)
        out.append(time.perf_counter() - began)
    return out


async def _until(condition: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the Candela triggers did not reach the silent Candela")
        await asyncio.sleep(0.02)


async def _scenario(mode: str, silent: SilentCandela, samples: int) -> list[float]:
    """Latencies of another trigger's calls in one loop: ``none``, ``ours`` (triggers) or ``before``."""
    from airflow_provider_candela.triggers._shared import TRIGGER_THREADS
    from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor())  # the triggerer's: min(32, cores + 4) threads
    tasks: list[asyncio.Task[Any]] = []
    seen = silent.stats().accepted
    if mode == "ours":
        for i in range(TRIGGERS):
            trigger = CandelaSlotReadyTrigger(
                f"slot-{i}", candela_conn_id=CONN_ID, hook_params={"timeout": [2, 600], "max_retries": 0}
            )
            tasks.append(asyncio.create_task(anext(trigger.run())))
        await _until(lambda: silent.stats().accepted - seen >= TRIGGER_THREADS, 60)
    elif mode == "before":
        from asgiref.sync import sync_to_async

        from airflow_provider_candela.hooks.candela import CandelaHook

        hook = CandelaHook(CONN_ID)
        hook.get_conn()
        call = sync_to_async(hook.get_slot_state, thread_sensitive=False)  # the loop's default executor
        tasks = [asyncio.create_task(call()) for _ in range(TRIGGERS)]
        await _until(lambda: silent.stats().accepted - seen >= min(32, (os.cpu_count() or 1) + 4), 60)
    try:
        return await _to_thread_latencies(samples)
    finally:
        for task in tasks:
            task.cancel()
        if mode != "none":
            silent.close()  # the blocked reads end now, and the next scenario gets a new silent Candela
        await asyncio.gather(*tasks, return_exceptions=True)


def run(*, rounds: int = 3, samples: int = 50) -> list[Row]:
    """Interleaved rounds of ours and the reference, each with a fresh silent Candela; the design before once."""
    results: dict[str, list[float]] = {"none": [], "ours": [], "before": []}
    for round_no in range(rounds):
        for mode in ("none", "ours", "before") if round_no == 0 else ("none", "ours"):
            silent = SilentCandela()
            conn = {
                "conn_type": "candela",
                "host": silent.url,
                "extra": {"access_token": "pat-bench", "timeout": CONNECTION_TIMEOUT, "max_retries": 0},
            }
            os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(conn)
            try:
                latencies = asyncio.run(_scenario(mode, silent, samples if mode != "before" else 1))
            finally:
                silent.close()
            results[mode] += latencies
            log(f"figure 9 round {round_no + 1} {mode}: median {median(latencies) * 1e3:.3f} ms")
    none, ours, before = (median(results[m]) for m in ("none", "ours", "before"))
    ratio = ours / none
    return [
        Row(
            figure=f"9 another trigger's to_thread beside {TRIGGERS} Candela triggers on a silent Candela",
            ours=ours * 1e3,
            reference=none * 1e3,
            reference_name="no Candela trigger",
            unit="ms",
            ratio=ratio,
            target="<= 2x (no starvation)",
            met=ratio <= 2.0,
            details={
                "samples_ms": {mode: [round(v * 1e3, 4) for v in values] for mode, values in results.items()},
                "design_before_median_ms": before * 1e3,
                "triggers": TRIGGERS,
            },
            note=(
                f"with the triggers' calls on the loop's default executor (the design before), another trigger's "
                f"call waited {before:.1f} s, for the {TRIGGERS} Candela calls ahead of it to time out (1 s reads "
                "here; 300 s by default)"
            ),
        )
    ]
