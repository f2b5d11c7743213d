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
  (the records go to the file as they come; only the input list itself grows);
* 8f-8h the resume with ``result_path``: 2,000 inputs answered, then the task's retry (same task instance,
  same inputs) finds all of them answered (8f) or half of them (8g: Candela refused the second half of
  the first try); its peak allocations against a fresh run of the same 2,000 inputs, target: at most 2 KiB
  per input more (each input's status and the listing of the state folder; not the answers); 8h:
  the resume's peak with 20 KiB answers against 1 KiB answers (canned answers of a second emulator, the
  prompts the same size), target <= 1.1x (keeping the answers would add about 2,000 x 19 KiB = 37 MiB);
* 8i the state's cost per input: marking an input sent and keeping its record (1 KiB answer), in Airflow
  3.3's task state store against the folder beside ``result_path``, timed side by side inside one real
  task (``dag.test()`` on a throw-away SQLite database: the store's in-process path; a real worker adds a
  round trip to the API server per call); reported.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final
from unittest import mock

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, bench_emulator, interleave, log, median, paired_ratio, stats_delta

__all__ = ["run"]

APP: Final = "default/demo-pipeline"
MODEL: Final = "default/demo-model"
SUBMIT: Final = "POST /session/pipeline_submit"
#: The answer sizes (KiB) of the resume figure: its peak must not grow with them.
ANSWER_KIB: Final = (1, 20)
#: What a resume may hold per input beyond a fresh run: its status and its file's entry while the state folder
#: is listed (an earlier answer held would be its size, 20 KiB here).
RESUME_KIB_PER_INPUT: Final = 2


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


def _batch(inputs: int | Sequence[str], *, run_id: str | None = None, **kwargs: Any) -> Callable[[], Any]:
    """A batch task of ``inputs`` (a count, or the prompts); a retry when ``run_id`` names an earlier run's."""
    from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator

    prompts = _prompts(inputs) if isinstance(inputs, int) else list(inputs)

    def work() -> Any:
        op = CandelaPipelineBatchOperator(task_id="batch", app=APP, model=MODEL, prompts=prompts, **kwargs)
        context: dict[str, Any] = {"ti": _TI(run_id or f"run-{secrets.token_hex(4)}")}
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


def _resume_peaks(inputs: int, folder: Path) -> dict[str, dict[str, float]]:
    """Peak MiB of a fresh run and of its retries (all or half answered), for each answer size in ``ANSWER_KIB``.

    A second emulator answers prompts ``size-<k>k ...`` with a canned ``k`` KiB answer; the prompts of every
    size are the same length, so only the answers differ.
    """
    canned = [{"pattern": f"^size-{k:02d}k ", "pipeline": {"text": "x" * (k * 1024)}} for k in ANSWER_KIB]
    peaks: dict[str, dict[str, float]] = {}
    with bench_emulator(catalog={"responses": canned}, slot_startup_seconds=0) as sized:
        _batch(20, result_path=f"file://{folder / 'warm-up.jsonl'}")()  # what a batch imports: not traced below
        for kib in ANSWER_KIB:
            prompts = [f"size-{kib:02d}k input {i:05d}" for i in range(inputs)]
            result = folder / f"resume-{kib}k.jsonl"
            uri = f"file://{result}"
            got: dict[str, float] = {}
            log(f"figure 8f-8h: {inputs:,} inputs with {kib} KiB answers: a fresh run, then its retry")
            got["fresh"] = _peak_allocated(_batch(prompts, run_id=f"all-{kib}", result_path=uri))
            got["resume, all answered"] = _peak_allocated(_batch(prompts, run_id=f"all-{kib}", result_path=uri))
            log(f"figure 8g: {inputs:,} inputs with {kib} KiB answers: Candela refuses the second half, then the retry")
            sized.add_fault(match=SUBMIT, status=400, body={"detail": "not now"}, skip=inputs // 2, count=-1)
            _batch(prompts, run_id=f"half-{kib}", result_path=uri, fail_on_partial_error=False)()
            sized.clear_faults()
            before = sized.stats()
            got["resume, half answered"] = _peak_allocated(_batch(prompts, run_id=f"half-{kib}", result_path=uri))
            sent = int(stats_delta(before, sized.stats())["requests"].get(SUBMIT, 0))
            statuses = [json.loads(line)["status"] for line in result.read_text().splitlines()]
            if sent != inputs - inputs // 2 or statuses != ["succeeded"] * inputs:
                raise RuntimeError(f"the retry of the half-answered batch sent {sent} prompts: {statuses[:3]}...")
            peaks[f"{kib} KiB"] = got
    return peaks


def _migrated_db() -> None:
    """The metadata database of this process's (throw-away) Airflow home, for ``dag.test()``."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())


def _state_cost(inputs: int, rounds: int, folder: Path) -> dict[str, list[float]] | None:
    """Seconds per input of the state (mark sent, keep the record) in the task state store vs beside result_path.

    Timed inside one real task run (``dag.test()``), both candidates interleaved; None before Airflow 3.3
    (no task state store).
    """
    import datetime as dt

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators._batch import BatchInput, open_state, record
    from airflow_provider_candela.testing import run_dag

    _migrated_db()
    samples: dict[str, list[float]] = {}
    items = [BatchInput(i, f"k{i}", f"Classify trade break number {i}") for i in range(inputs)]
    answer = {"text": "x" * 1024}

    def measure(**context: Any) -> None:
        store = context.get("task_state_store")
        if store is None:
            return
        ti = context["ti"]

        def timed(where: dict[str, Any], result_path: Path | None) -> Callable[[], float]:
            def once() -> float:
                state = open_state(where, result_path, secrets.token_hex(8), inputs=inputs, restart=True, task_id="t")
                started = time.perf_counter()
                for item in items:
                    state.sending(item.index)
                    state.save(record(item, "succeeded", answer=answer, request_id=item.index))
                return (time.perf_counter() - started) / inputs

            return once

        samples.update(
            interleave(
                {
                    "task state store": timed({"task_state_store": store, "ti": ti}, None),
                    "result_path": timed({"ti": ti}, folder / "state-cost.jsonl"),
                },
                rounds=rounds,
            )
        )

    from airflow.providers.standard.operators.python import PythonOperator

    with DAG("bench_batch_state", schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) as dag:
        PythonOperator(task_id="t", python_callable=measure)
    outcome = run_dag(dag)
    if outcome.states != {"t": "success"}:
        raise RuntimeError(f"the state-cost task did not succeed: {outcome.states}")
    return samples or None


def run(
    emulator: CandelaEmulator,
    *,
    inputs: int = 100,
    answer_s: float = 0.2,
    start_s: float = 1.0,
    users: int = 4,
    many: int = 10_000,
    resumed: int = 2_000,
    state_inputs: int = 200,
    state_rounds: int = 5,
    only_new: bool = False,
) -> list[Row]:
    """Figure 8's rows; ``only_new``: the resume and state-cost rows (8f-8i) only, for a quick look."""
    rows = (
        [] if only_new else _sides(emulator, inputs=inputs, answer_s=answer_s, start_s=start_s, users=users, many=many)
    )
    with tempfile.TemporaryDirectory(prefix="candela-bench-batch-") as folder:
        peaks = _resume_peaks(resumed, Path(folder))
        log(f"figure 8i: the state of {state_inputs} inputs, task state store vs result_path, {state_rounds} rounds")
        cost = _state_cost(state_inputs, state_rounds, Path(folder))
    return rows + _resume_rows(resumed, peaks) + _state_rows(state_inputs, cost, answer_s)


def _resume_rows(inputs: int, peaks: dict[str, dict[str, float]]) -> list[Row]:
    small, large = (peaks[f"{k} KiB"] for k in ANSWER_KIB)
    rows = [
        Row(
            figure=f"8{letter} resume of {inputs:,} inputs, {what}: peak vs a fresh run",
            ours=large[key],
            reference=large["fresh"],
            reference_name=f"fresh run; {ANSWER_KIB[-1]} KiB answers ({ANSWER_KIB[0]} KiB: {small[key]:.1f} vs "
            f"{small['fresh']:.1f} MiB)",
            unit="MiB",
            ratio=large[key] / large["fresh"],
            target=f"<= fresh + {RESUME_KIB_PER_INPUT} KiB per input",
            met=all(p[key] - p["fresh"] <= RESUME_KIB_PER_INPUT * inputs / 1024 for p in (small, large)),
            details={"peak_mib": peaks} if letter == "f" else {},
        )
        for letter, what, key in (
            ("f", "all answered", "resume, all answered"),
            ("g", "half answered", "resume, half answered"),
        )
    ]
    growth = large["resume, all answered"] / small["resume, all answered"]
    rows.append(
        Row(
            figure=f"8h resume peak: {ANSWER_KIB[-1]} KiB vs {ANSWER_KIB[0]} KiB answers",
            ours=large["resume, all answered"],
            reference=small["resume, all answered"],
            reference_name=f"{ANSWER_KIB[0]} KiB answers; half answered: {large['resume, half answered']:.1f} vs "
            f"{small['resume, half answered']:.1f} MiB",
            unit="MiB",
            ratio=growth,
            target="<= 1.1x",
            met=growth <= 1.1 and large["resume, half answered"] <= 1.1 * small["resume, half answered"],
        )
    )
    return rows


def _state_rows(inputs: int, cost: dict[str, list[float]] | None, answer_s: float) -> list[Row]:
    if cost is None:
        return [
            Row(
                figure="8i state per input: task state store vs result_path",
                ours=float("nan"),
                reference=None,
                reference_name="no task state store before Airflow 3.3",
                unit="",
                ratio=None,
                target="reported",
                met=True,
            )
        ]
    store, beside = median(cost["task state store"]) * 1e6, median(cost["result_path"]) * 1e6
    return [
        Row(
            figure="8i state per input: task state store vs result_path",
            ours=store,
            reference=beside,
            reference_name=f"result_path; {inputs} inputs a round, dag.test()",
            unit="us/input",
            ratio=paired_ratio(cost["task state store"], cost["result_path"]),
            target="reported",
            met=True,
            details={"seconds_per_input": cost},
            note=f"the task state store adds {(store - beside) / 1000:.1f} ms per input (two writes: sent, then the "
            f"record), {(store - beside) / 1e4 / answer_s:.0f}% of the {answer_s:g} s answer of 8a; result_path "
            f"{beside / 1000:.2f} ms",
        )
    ]


def _sides(
    emulator: CandelaEmulator,
    *,
    inputs: int,
    answer_s: float,
    start_s: float,
    users: int,
    many: int,
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
            _batch(20, result_path=f"file://{Path(folder) / 'warm-up.jsonl'}")()  # imports and caches: not traced
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
