"""A batch whose inputs are the outputs of a mapped task (``build.expand(...)``), run with ``dag.test()``.

Airflow hands such a batch a lazy sequence of the mapped task's XComs (not a list): the operator and the
decorators' functions take it as any other sequence.  Over real HTTP to the emulator.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_candela.decorators.sessions import candela_pipeline_batch_task
from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
MODEL = "default/demo-model"
SUBMIT = "POST /session/pipeline_submit"
FUNDS = ["alpha", "beta gamma", "delta epsilon zeta"]
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")


def _seen(candela: Any) -> int:
    return sum(candela.stats()["requests"].get(SUBMIT, {}).values())


@task
def build(fund: str) -> dict[str, str]:
    return {"key": fund, "prompt": f"Summarise {fund}"}


def test_the_operator_takes_a_mapped_task_s_outputs(candela: Any) -> None:
    with DAG(f"batch_mapped_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        CandelaPipelineBatchOperator(task_id="b", app=PIPELINE, model=MODEL, prompts=build.expand(fund=FUNDS))
    dr = run_dag(dag)
    assert dr.states == {"build": "success", "b": "success"}
    records = dr.xcom("b")
    assert [(r["key"], r["status"]) for r in records] == [(f, "succeeded") for f in FUNDS]
    assert [r["answer"]["result"]["word_count"] for r in records] == [2, 3, 4]
    assert _seen(candela) == 3


def test_a_batch_decorator_s_function_may_return_the_mapped_outputs(candela: Any) -> None:
    with DAG(f"batch_mapped_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:

        @candela_pipeline_batch_task(app=PIPELINE, model=MODEL)
        def summarise(inputs: Any) -> Any:
            return inputs  # the lazy sequence as Airflow passed it

        summarise(build.expand(fund=FUNDS))
    dr = run_dag(dag)
    assert dr.states == {"build": "success", "summarise": "success"}
    assert [r["key"] for r in dr.xcom("summarise")] == FUNDS
    assert _seen(candela) == 3
