"""Figure 5, deferral at scale: 1,000 ``CandelaSessionExistsTrigger`` in one asyncio event loop.

The parent makes 1,000 sessions, then a child process (a clean interpreter, like a triggerer) runs
one trigger per session awaiting its *next* version (``1.1.0``: a continuation started with
``parent_session`` gets the parent's identifier and the next version, so the name is known before
it exists).  Once every trigger has made its first check (the emulator has counted 1,000
``GET /sessions/exists``), the parent starts the continuations one by one, noting when it sent each
request.  Latency = when the trigger fired minus when its session was requested (both
``time.monotonic``, one clock for the machine); target: every trigger within two poll intervals.

Reported for information: CPU seconds of the child, its memory growth per trigger, the worst event
loop lag (a 100 ms ticker), threads, and the token grants and TCP connections the triggers cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, cpu_seconds, log, median, request_count, rss_mb, stats_delta, wait_for

__all__ = ["run"]

APP: Final = "default/demo-pipeline"
MODEL: Final = "default/demo-model"
NEXT_VERSION: Final = "1.1.0"


async def _child_main(awaited: list[list[str]], poll_interval: float, timeout: float) -> dict[str, Any]:
    from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

    fired: dict[str, tuple[float, str]] = {}
    rss_before, cpu_before = rss_mb(), cpu_seconds()
    peaks = {"rss": rss_before, "lag": 0.0, "threads": threading.active_count()}

    async def watch(scope: str, identifier: str, version: str) -> None:
        trigger = CandelaSessionExistsTrigger(
            scope, identifier, version, poll_interval=poll_interval, timeout=timeout
        )
        events = trigger.run()
        try:
            event = await anext(events)
        finally:
            await events.aclose()
        fired[identifier] = (time.monotonic(), str(event.payload.get("status")))

    async def monitor() -> None:
        tick = 0.1
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            peaks["lag"] = max(peaks["lag"], time.monotonic() - before - tick)
            peaks["rss"] = max(peaks["rss"], rss_mb())
            peaks["threads"] = max(peaks["threads"], threading.active_count())

    ticker = asyncio.create_task(monitor())
    tasks = [asyncio.create_task(watch(*item)) for item in awaited]
    print(json.dumps({"started": len(tasks)}), flush=True)
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    cpu_used = cpu_seconds() - cpu_before
    for task in pending:
        task.cancel()
    ticker.cancel()
    errors = [repr(task.exception()) for task in done if task.exception() is not None][:5]
    return {
        "fired": fired,
        "pending": len(pending),
        "errors": errors,
        "cpu_seconds": cpu_used,
        "rss_before_mb": rss_before,
        "rss_peak_mb": peaks["rss"],
        "max_loop_lag_s": peaks["lag"],
        "max_threads": peaks["threads"],
    }


def _child(path: str, poll_interval: float, timeout: float) -> None:
    awaited: list[list[str]] = json.loads(Path(path).read_text())
    result = asyncio.run(_child_main(awaited, poll_interval, timeout))
    print(json.dumps(result), flush=True)


def run(emulator: CandelaEmulator, count: int = 1000, poll_interval: float = 5.0) -> list[Row]:
    from airflow_provider_candela.hooks.candela import CandelaHook

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    log(f"figure 5: making {count} sessions")
    hook = CandelaHook()
    hook.ensure_slot()
    parents = []
    for _ in range(count):
        parents.append(hook.start_session(APP, MODEL).obj_id)
        hook.stop_session()
    awaited = [[oid.scope, oid.identifier, NEXT_VERSION] for oid in parents]
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="candela-bench-triggers-", delete=False) as handle:
        json.dump(awaited, handle)
    timeout = 600.0
    before = emulator.stats()
    log(f"figure 5: {count} triggers in one event loop (poll interval {poll_interval:g} s)")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.triggers", "--child", handle.name, str(poll_interval), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # one log line per trigger
        text=True,
        env=dict(os.environ),
    )
    created: dict[str, float] = {}
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline() or "{}")
        if started.get("started") != count:
            raise RuntimeError(f"the trigger process did not start its triggers: {started}")
        first_checks_began = time.monotonic()
        wait_for(
            lambda: request_count(emulator.stats(), "GET /sessions/exists", "200")
            - request_count(before, "GET /sessions/exists", "200")
            >= count,
            timeout=300,
            what=f"the first check of {count} triggers",
            interval=0.2,
        )
        first_checks_s = time.monotonic() - first_checks_began
        log(f"figure 5: all triggers checked once after {first_checks_s:.1f} s; starting the awaited sessions")
        for oid in parents:
            created[oid.identifier] = time.monotonic()
            hook.start_session(APP, MODEL, parent_session=oid)
            hook.stop_session()
        creation_s = time.monotonic() - created[parents[0].identifier]
        output, _ = child.communicate(timeout=timeout + 60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        hook.close()
        os.unlink(handle.name)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    during = stats_delta(before, emulator.stats())
    fired: dict[str, list[Any]] = result["fired"]
    latencies = [fired[oid.identifier][0] - created[oid.identifier] for oid in parents if oid.identifier in fired]
    successes = sum(1 for _, status in fired.values() if status == "success")
    worst = max(latencies) if latencies else float("inf")
    met = successes == count and worst <= 2 * poll_interval
    checks = int(during["requests"].get("GET /sessions/exists", 0))
    details: dict[str, Any] = {
        "triggers": count,
        "poll_interval_s": poll_interval,
        "fired_success": successes,
        "not_fired": result["pending"],
        "errors": result["errors"],
        "latency_s": {
            "median": median(latencies) if latencies else None,
            "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies else None,
            "max": worst,
        },
        "first_checks_of_all_triggers_s": first_checks_s,
        "creating_awaited_sessions_s": creation_s,
        "cpu_seconds": result["cpu_seconds"],
        "cpu_ms_per_trigger": result["cpu_seconds"] / count * 1e3,
        "cpu_ms_per_check": result["cpu_seconds"] / max(checks, 1) * 1e3,
        "memory_kb_per_trigger": (result["rss_peak_mb"] - result["rss_before_mb"]) / count * 1e3,
        "rss_before_mb": result["rss_before_mb"],
        "rss_peak_mb": result["rss_peak_mb"],
        "max_event_loop_lag_ms": result["max_loop_lag_s"] * 1e3,
        "max_threads": result["max_threads"],
        "session_exists_checks": checks,
        "token_grants": during["token_grants"],
        "tcp_connections": during["tcp_connections"],
        "requests_by_route": during["requests"],
    }
    return [
        Row(
            figure=f"5 deferral: {count} triggers, worst fire delay",
            ours=worst,
            reference=2 * poll_interval,
            reference_name="two poll intervals",
            unit="s",
            ratio=worst / (2 * poll_interval),
            target=f"all fire within 2 x {poll_interval:g} s",
            met=met,
            details=details,
        )
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m bench.triggers --child AWAITED.json POLL_INTERVAL TIMEOUT (run by bench.run)")
