"""Figure 3, lifecycle cost: token grants and TCP connections per task run, and the requests of a lifecycle.

3a, per task run: each task of a day's work runs as a worker runs it (the operator's ``execute``, and for
a deferred task its trigger rebuilt from its serialized form and run to its event, then the resumed
``execute_complete``), and the emulator counts the password grants and TCP connections it used: classic
start, pipeline prompt, agent prompt and stop tasks; one-task pipeline and agent prompts, through the
operators and the decorators; a deferred one-task pipeline prompt.  Target: 1 grant and 1 connection per
task run (a deferred one: first run, the triggerer's shared hook and the resumed run, at most 3).

3b, requests: one ``CandelaHook`` (OAuth2 password grant, as a task would use it) runs ensure-slot, start a pipeline
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

#: Most grants (and connections) of a deferred task: its first run, the triggerer's hook, the resumed run.
DEFERRED_MOST: Final = 3

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


def _task_runs() -> list[tuple[str, bool, Callable[[], Any]]]:
    """``(name, deferred, run)`` of each task run measured by 3a, in order (each may use the one before)."""
    from airflow.providers.common.compat.sdk import DAG, TaskDeferred

    from airflow_provider_candela.decorators.sessions import candela_agent_task, candela_pipeline_task
    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaStopSessionOperator,
        CandelaSubmitAgentPromptOperator,
        CandelaSubmitPipelinePromptOperator,
    )
    from bench.deferral import _trigger_event

    state: dict[str, Any] = {}
    one_task = {"model": MODEL, "prompt": "Summarise the quarter"}

    def start(app: str) -> None:
        state["session"] = CandelaStartSessionOperator(task_id="start", app=app, model=MODEL).execute({})

    def prompt(op: type[Any]) -> None:
        op(task_id="prompt", session=state["session"], prompt="Summarise the quarter").execute({})

    def stop() -> None:
        CandelaStopSessionOperator(task_id="stop", session=state["session"]).execute({})

    def decorated(decorator: Any, app: str) -> Any:
        with DAG("bench_lifecycle_decorators", schedule=None):

            @decorator(app=app, model=MODEL)
            def ask() -> str:
                return "Summarise the quarter"

            return ask().operator

    def deferred() -> None:
        op = CandelaSubmitPipelinePromptOperator(
            task_id="deferred", app=PIPELINE_APP, deferrable=True, slot_poll_interval=0.05, **one_task
        )
        try:
            op.execute({})
        except TaskDeferred as deferral:
            event, _ = _trigger_event(deferral.trigger)
            getattr(op, deferral.method_name)({}, event=event)
        else:
            raise RuntimeError("the one-task prompt did not defer (the slot was ready at once)")

    pipeline, agent = decorated(candela_pipeline_task, PIPELINE_APP), decorated(candela_agent_task, AGENT_APP)
    return [
        ("start (pipeline)", False, lambda: start(PIPELINE_APP)),
        ("pipeline prompt", False, lambda: prompt(CandelaSubmitPipelinePromptOperator)),
        ("stop", False, stop),
        ("start (agent)", False, lambda: start(AGENT_APP)),
        ("agent prompt", False, lambda: prompt(CandelaSubmitAgentPromptOperator)),
        ("stop (agent)", False, stop),
        (
            "one-task pipeline prompt",
            False,
            lambda: CandelaSubmitPipelinePromptOperator(task_id="p", app=PIPELINE_APP, **one_task).execute({}),
        ),
        (
            "one-task agent prompt",
            False,
            lambda: CandelaSubmitAgentPromptOperator(task_id="a", app=AGENT_APP, **one_task).execute({}),
        ),
        ("@task.candela_pipeline", False, lambda: pipeline.execute({})),
        ("@task.candela_agent", False, lambda: agent.execute({})),
        ("deferred one-task pipeline prompt", True, deferred),
    ]


def per_task_run(emulator: CandelaEmulator) -> Row:
    """Figure 3a: grants and connections of each task run."""
    from airflow_provider_candela.hooks.candela import CandelaHook

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    log("figure 3a: grants and connections per task run, through the operators and decorators")
    runs: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name, is_deferred, task in _task_runs():
        if is_deferred:  # a slot that is not ready at once: the task defers
            with CandelaHook() as hook:
                hook.dispose_slot()
            emulator.configure(slot_startup_seconds=0.5)
        before = emulator.stats()
        task()
        used = stats_delta(before, emulator.stats())
        most = DEFERRED_MOST if is_deferred else 1
        runs[name] = {
            "grants": used["token_grants_by_kind"]["password"],
            "renewals": used["token_grants_by_kind"]["refresh"],
            "connections": used["tcp_connections"],
            "requests": used["requests"],
        }
        if not (1 <= runs[name]["grants"] <= most and runs[name]["connections"] <= most):
            failed.append(name)
    plain = [r for name, r in runs.items() if name != "deferred one-task pipeline prompt"]
    worst_grants = max(r["grants"] for r in plain)
    worst_connections = max(r["connections"] for r in plain)
    deferred_run = runs["deferred one-task pipeline prompt"]
    return Row(
        figure="3a grants (conns) per task run, operators and decorators",
        ours=float(worst_grants),
        reference=1.0,
        reference_name=(
            f"target; ours: at most {worst_grants} grant, {worst_connections} conn over {len(plain)} task runs; "
            f"deferred {deferred_run['grants']} grants, {deferred_run['connections']} conns"
        ),
        unit="grants",
        ratio=float(worst_grants),
        target=f"1 grant, 1 conn per task run (deferred <= {DEFERRED_MOST})",
        met=not failed,
        details={"per_task_run": runs, "over_target": failed},
    )


def run(emulator: CandelaEmulator) -> list[Row]:
    return [per_task_run(emulator), one_hook(emulator)]


def one_hook(emulator: CandelaEmulator) -> Row:
    """Figure 3b: the requests of a whole lifecycle through one hook, against the needed ones."""
    from airflow_provider_candela.hooks.candela import CandelaHook

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    log("figure 3b: one session lifecycle through one hook")
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
    return Row(
        figure="3b lifecycle through one hook: requests (grants, conns)",
        ours=float(made_total),
        reference=float(needed_total),
        reference_name=(
            f"needed; ours: {total['token_grants']} grant, {total['tcp_connections']} conn, {len(unneeded)} unneeded"
        ),
        unit="req",
        ratio=made_total / needed_total,
        target="1 grant, 1 conn, no unneeded call",
        met=met,
        details=details,
    )
