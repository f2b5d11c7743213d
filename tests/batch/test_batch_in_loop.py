"""A batch inside a looped task group (Airflow 3.4+): each iteration keeps, and resumes, its own inputs.

Every iteration of a task-group loop runs a task instance of its own, told apart from the others by its region
(``region_id``, ``region_index``), not by ``map_index``.  What a batch keeps for a retry (in Airflow's task state
store, or beside ``result_path``) must belong to that iteration: the second iteration sends its inputs again even
when they are the same prompts, and a retry inside it resends only what it lacks.  Real Airflow tasks
(``dag.test()``) against the emulator over HTTP; every count is what the emulator saw.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela._compat import AIRFLOW_V_3_4_PLUS
from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator
from airflow_provider_candela.testing import run_dag

pytestmark = [
    pytest.mark.usefixtures("airflow_db"),
    pytest.mark.skipif(not AIRFLOW_V_3_4_PLUS, reason="task-group loops are Airflow 3.4's"),
]

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
MODEL = "default/demo-model"
SUBMIT = "POST /session/pipeline_submit"
PROMPTS = [f"prompt number {n}" for n in range(3)]
ITERATIONS = 2
_ids = itertools.count()


def _seen(candela: Any) -> int:
    return sum(candela.stats()["requests"].get(SUBMIT, {}).values())


def _looped_batch(dag_id: str, **kwargs: Any) -> DAG:
    from airflow.sdk import task_group

    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:

        @task_group
        def rounds() -> None:
            CandelaPipelineBatchOperator(task_id="b", app=PIPELINE, model=MODEL, prompts=PROMPTS, **kwargs)

        rounds.loop(max_iterations=ITERATIONS)
    return dag


def _tries(dr: Any) -> list[tuple[str, int]]:
    return sorted((ti.state, ti.try_number) for ti in dr.dag_run.get_task_instances() if ti.task_id == "rounds.b")


@pytest.mark.parametrize("where", ["task state store", "result_path"])
def test_each_iteration_sends_its_own_inputs(candela: Any, tmp_path: Path, where: str) -> None:
    extra = {"result_path": f"file://{tmp_path / 'out.jsonl'}"} if where == "result_path" else {}
    dr = run_dag(_looped_batch(f"loop_{next(_ids)}", **extra))
    assert dr.state == "success"
    assert _tries(dr) == [("success", 1)] * ITERATIONS
    assert _seen(candela) == ITERATIONS * len(PROMPTS), "the second iteration did not take the first one's outcomes"


@pytest.mark.parametrize("where", ["task state store", "result_path"])
def test_a_retry_in_the_second_iteration_resends_only_its_own_failed_input(
    candela: Any, tmp_path: Path, where: str
) -> None:
    result = tmp_path / "out.jsonl"
    extra = {"result_path": f"file://{result}"} if where == "result_path" else {}
    # the second input of the second iteration is refused once: that iteration's first try fails
    candela.add_fault(match=SUBMIT, count=1, status=400, body={"detail": "try later"}, skip=len(PROMPTS) + 1)
    dr = run_dag(_looped_batch(f"loop_{next(_ids)}", retries=1, retry_delay=dt.timedelta(0), **extra))
    assert dr.state == "success"
    assert _tries(dr) == [("success", 1), ("success", 2)], "the second iteration needed a retry"
    assert _seen(candela) == ITERATIONS * len(PROMPTS) + 1, "the retry resent the refused input alone"
    if where == "result_path":
        lines = [json.loads(line) for line in result.read_text().splitlines()]
        assert [r["status"] for r in lines] == ["succeeded"] * len(PROMPTS)
