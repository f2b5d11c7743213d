"""Figure 3, lifecycle cost: requests, token grants and TCP connections of a whole session lifecycle.

One ``CandelaHook`` (OAuth2 password grant, as a task would use it) runs ensure-slot, start a pipeline
session, a pipeline prompt, stop, start an agent session, an agent prompt (stream read to the end),
stop.  The emulator's ``/_emulator/stats`` counts what reached the server, step by step.  The slot
starts instantly (``slot_startup_seconds=0``) so the number of state polls is deterministic.

Starts are made as the start operators make them (``if_session_running="stop"``): start first, and
stop-then-start only when Candela answers that a session runs, so no stop precedes a start on a free slot.

Needed calls (the reference): the token grant once; ``GET /slot/user_has_slot``, ``PUT /slot``
(no slot yet), one ``GET /slot/state`` (ready at once), ``GET /slot/metadata`` (ensure_slot returns
the slot); per session ``POST /session``, the prompt, ``GET /session/stop``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, log, stats_delta

__all__ = ["NEEDED", "run"]

PIPELINE_APP: Final = "default/demo-pipeline"
AGENT_APP: Final = "default/demo-agent"
MODEL: Final = "default/demo-model"

#: What each step needs to send (route -> count).
NEEDED: Final[dict[str, dict[str, int]]] = {
    "ensure_slot": {
        "POST /oauth2/token": 1,
        "GET /slot/user_has_slot": 1,
        "PUT /slot": 1,
        "GET /slot/state": 1,
        "GET /slot/metadata": 1,
    },
    "start pipeline": {"POST /session": 1},
    "pipeline prompt": {"POST /session/pipeline_submit": 1},
    "stop pipeline": {"GET /session/stop": 1},
    "start agent": {"POST /session": 1},
    "agent prompt": {"POST /session/agent_submit": 1},
    "stop agent": {"GET /session/stop": 1},
}


def run(emulator: CandelaEmulator) -> list[Row]:
    from airflow_provider_candela.hooks.candela import CandelaHook

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    log("figure 3: one session lifecycle through one hook")
    hook = CandelaHook()
    state: dict[str, Any] = {}

    def start(app: str) -> None:
        state["session"] = hook.start_session(app, MODEL, if_session_running="stop").obj_id

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("ensure_slot", lambda: hook.ensure_slot(poll_interval=0.05)),
        ("start pipeline", lambda: start(PIPELINE_APP)),
        ("pipeline prompt", lambda: hook.submit_pipeline_prompt(state["session"], "Summarise the quarter")),
        ("stop pipeline", hook.stop_session),
        ("start agent", lambda: start(AGENT_APP)),
        ("agent prompt", lambda: list(hook.submit_prompt_to_agent(state["session"], "Give me a result table"))),
        ("stop agent", hook.stop_session),
    ]
    first = previous = emulator.stats()
    per_step: dict[str, dict[str, Any]] = {}
    unneeded: list[str] = []
    missing: list[str] = []
    try:
        for name, step in steps:
            step()
            current = emulator.stats()
            delta = stats_delta(previous, current)
            made = Counter(delta["requests"])
            needed = Counter(NEEDED[name])
            per_step[name] = {"requests": dict(made), "needed": dict(needed)}
            unneeded += [f"{name}: {route} x{n}" for route, n in (made - needed).items()]
            missing += [f"{name}: {route} x{n}" for route, n in (needed - made).items()]
            previous = current
    finally:
        hook.close()
    total = stats_delta(first, emulator.stats())
    needed_total = sum(sum(step.values()) for step in NEEDED.values())
    made_total = int(total["requests_total"])
    met = total["token_grants"] == 1 and total["tcp_connections"] == 1 and not unneeded
    details: dict[str, Any] = {
        "token_grants": total["token_grants"],
        "tcp_connections": total["tcp_connections"],
        "requests_total": made_total,
        "requests_needed": needed_total,
        "unneeded": unneeded,
        "missing_info": missing,
        "requests_by_route": total["requests"],
        "per_step": per_step,
    }
    return [
        Row(
            figure="3 lifecycle: requests (grants, conns)",
            ours=float(made_total),
            reference=float(needed_total),
            reference_name=(
                f"needed; ours: {total['token_grants']} grant, {total['tcp_connections']} conn, "
                f"{len(unneeded)} unneeded"
            ),
            unit="req",
            ratio=made_total / needed_total,
            target="1 grant, 1 conn, no unneeded call",
            met=met,
            details=details,
        )
    ]
