"""Figure 8, batch: 100 pipeline inputs in one batch task vs 100 one-task prompts vs 100 prompts on a shared session.

The emulator answers each pipeline prompt after ``answer_s`` (0.2 s) and starts a session after ``start_s``
(1 s) (delay faults on ``POST /session/pipeline_submit`` and ``POST /session``); every user's slot is
ready before the sides run (the figure is about sessions and prompts, not slot boots: figure 7).  Every side runs the
operators' ``execute`` as a worker runs it (without Airflow's own per-task start-up, the same for all
sides and in favour of the many-task ones, which pay it 100 times in a real deployment):

* 8a batch: ``CandelaPipelineBatchOperator`` with 100 inputs (one slot check, one start, one stop);
  target <= 100 + 10 requests, 1 token grant, wall time <= 1.1x (one start + 100 answers);
* 8b vs mapped one-task prompts: 100 x ``CandelaSubmitPipelinePromptOperator(app=..., model=...)``, what
  ``@task.candela_pipeline(...).expand(...)`` runs per mapped task (a user's tasks take turns: one session);
* 8c vs mapped prompts on a shared session: a start, 100 x the prompt operator on it, a stop;
* 8d fan-out: the same 100 inputs with ``candela_conn_ids`` of 4 users vs 1; target >= 3.2x faster;
* 8e memory: the batch's peak allocations (``tracemalloc``) with ``result_path`` for 100 and 10,000 inputs
  (no delays); target: the 10,000-input run allocates at most 1 KiB per input more than the 100-input one
  (the records go to the file as they come; only the input list itself grows).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from unittest import mock

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, log, stats_delta

__all__ = ["run"]

APP: Final = "default/demo-pipeline"
MODEL: Final = "default/demo-model"
SUBMIT: Final = "POST /session/pipeline_submit"


class _TI:
    """The task instance fields the batch keys its state on (``result_path`` runs)."""

    dag_id = "bench_batch"
    task_id = "batch"
    map_index = -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def _timed(emulator: CandelaEmulator, work: Callable[[], Any]) -> dict[str, Any]:
    before = emulator.stats()
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    used = stats_delta(before, emulator.stats())
    return {
        "wall_s": wall,
        "requests": used["requests_total"],
        "grants": used["token_grants_by_kind"]["password"],
        "connections": used["tcp_connections"],
        "prompts": used["requests"].get(SUBMIT, 0),
    }


def _prompts(n: int) -> list[str]:
    return [f"Classify trade break number {i}" for i in range(n)]


def _batch(n: int, **kwargs: Any) -> Callable[[], Any]:
    from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator

    def work() -> Any:
        op = CandelaPipelineBatchOperator(task_id="batch", app=APP, model=MODEL, prompts=_prompts(n), **kwargs)
        context: dict[str, Any] = {"ti": _TI(f"run-{secrets.token_hex(4)}")}
        return op.execute(context)

    return work


def _mapped_one_task(n: int) -> Callable[[], Any]:
    from airflow_provider_candela.operators.sessions import CandelaSubmitPipelinePromptOperator

    def work() -> None:
        for i, prompt in enumerate(_prompts(n)):
            CandelaSubmitPipelinePromptOperator(task_id=f"ask_{i}", app=APP, model=MODEL, prompt=prompt).execute({})

    return work


def _mapped_shared(n: int) -> Callable[[], Any]:
    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaStopSessionOperator,
        CandelaSubmitPipelinePromptOperator,
    )

    def work() -> None:
        session = CandelaStartSessionOperator(task_id="start", app=APP, model=MODEL).execute({})
        for i, prompt in enumerate(_prompts(n)):
            CandelaSubmitPipelinePromptOperator(task_id=f"ask_{i}", session=session, prompt=prompt).execute({})
        CandelaStopSessionOperator(task_id="stop", session=session).execute({})

    return work


def _ready_slots(conn_ids: list[str]) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    for conn_id in conn_ids:
        with CandelaHook(conn_id) as hook:
            hook.ensure_slot(poll_interval=0.05)


def _peak_allocated(work: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 1024 / 1024
    finally:
        tracemalloc.stop()


def run(
    emulator: CandelaEmulator,
    *,
    inputs: int = 100,
    answer_s: float = 0.2,
    start_s: float = 1.0,
    users: int = 4,
    many: int = 10_000,
) -> list[Row]:
    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    sides: dict[str, dict[str, Any]] = {}
    with mock.patch.dict(os.environ):
        base = json.loads(emulator.connection_json())
        conn_ids = []
        for n in range(users):
            user, password = f"bench-batch-{n}", secrets.token_urlsafe(12)
            emulator.add_user(user, password)
            os.environ[f"AIRFLOW_CONN_BENCH_BATCH_{n}"] = json.dumps({**base, "login": user, "password": password})
            conn_ids.append(f"bench_batch_{n}")
        _ready_slots(["candela_default", *conn_ids])  # every side starts on a ready slot: no slot boot timed
        emulator.add_fault(match=SUBMIT, delay=answer_s, count=-1)
        emulator.add_fault(match="POST /session", delay=start_s, count=-1)
        for name, work in (
            ("batch", _batch(inputs)),
            ("mapped one-task", _mapped_one_task(inputs)),
            ("mapped shared session", _mapped_shared(inputs)),
            ("batch, 1 user", _batch(inputs, candela_conn_ids=conn_ids[:1])),
            (f"batch, {users} users", _batch(inputs, candela_conn_ids=conn_ids)),
        ):
            log(f"figure 8: {inputs} inputs, {name}")
            sides[name] = _timed(emulator, work)
            if sides[name]["prompts"] != inputs:
                raise RuntimeError(f"{name}: {sides[name]['prompts']} prompts sent, expected {inputs}")
        emulator.clear_faults()
        with tempfile.TemporaryDirectory(prefix="candela-bench-batch-") as folder:
            memory = {}
            for n in (inputs, many):
                log(f"figure 8e: {n:,} inputs with result_path, peak allocations")
                result = Path(folder) / f"out-{n}.jsonl"
                memory[n] = _peak_allocated(_batch(n, result_path=f"file://{result}"))
                if sum(1 for _ in result.open()) != n:
                    raise RuntimeError(f"the result file of {n} inputs does not hold {n} records")
    batch = sides["batch"]
    ideal = start_s + inputs * answer_s
    one, fan = sides["batch, 1 user"], sides[f"batch, {users} users"]
    allowance = (many - inputs) / 1024  # MiB: 1 KiB per extra input
    details = {"inputs": inputs, "answer_s": answer_s, "start_s": start_s, "sides": sides, "peak_mib": memory}
    return [
        Row(
            figure=f"8a batch of {inputs}: wall vs one start + {inputs} answers",
            ours=batch["wall_s"],
            reference=ideal,
            reference_name=f"ideal; ours: {batch['requests']} requests, {batch['grants']} grant",
            unit="s",
            ratio=batch["wall_s"] / ideal,
            target=f"<= 1.1x, <= {inputs + 10} requests, 1 grant",
            met=batch["wall_s"] <= 1.1 * ideal and batch["requests"] <= inputs + 10 and batch["grants"] == 1,
            details=details,
        ),
        Row(
            figure=f"8b {inputs} mapped one-task prompts vs the batch",
            ours=sides["mapped one-task"]["wall_s"],
            reference=batch["wall_s"],
            reference_name=f"batch; mapped: {sides['mapped one-task']['grants']} grants",
            unit="s",
            ratio=sides["mapped one-task"]["wall_s"] / batch["wall_s"],
            target="reported",
            met=True,
        ),
        Row(
            figure=f"8c {inputs} mapped prompts on a shared session vs the batch",
            ours=sides["mapped shared session"]["wall_s"],
            reference=batch["wall_s"],
            reference_name=f"batch; mapped: {sides['mapped shared session']['grants']} grants",
            unit="s",
            ratio=sides["mapped shared session"]["wall_s"] / batch["wall_s"],
            target="reported",
            met=True,
        ),
        Row(
            figure=f"8d fan-out: {users} users vs 1 (speed-up)",
            ours=one["wall_s"] / fan["wall_s"],
            reference=None,
            reference_name=f"1 user {one['wall_s']:.1f} s, {users} users {fan['wall_s']:.1f} s, {fan['grants']} grants",
            unit="x",
            ratio=one["wall_s"] / fan["wall_s"],
            target=">= 3.2x",
            met=one["wall_s"] / fan["wall_s"] >= 3.2 and fan["grants"] == users,
        ),
        Row(
            figure=f"8e memory with result_path: {many:,} vs {inputs} inputs",
            ours=memory[many],
            reference=memory[inputs],
            reference_name=f"{inputs} inputs",
            unit="MiB",
            ratio=memory[many] / memory[inputs],
            target="<= 1 KiB more per input",
            met=memory[many] - memory[inputs] <= allowance,
        ),
    ]
