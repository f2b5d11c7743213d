"""An error a retry cannot fix fails the task at once; a transient one spends the task's retries.

Each task has ``retries=2`` (no delay) and runs as a real Airflow task against the emulator: a final
error leaves one attempt (the emulator saw the request once), a transient one three.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, AirflowFailException
from pydantic import BaseModel

from airflow_provider_candela.exceptions import (
    RETRYABLE_4XX,
    CandelaApiError,
    CandelaAuthError,
    CandelaInputError,
    CandelaOutputError,
    CandelaRejectedError,
)
from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator, CandelaSubmitPipelinePromptOperator
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
MODEL = "default/demo-model"
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")


class Needs(BaseModel):
    missing_field: int


def _attempts(candela: Any, key: str, **task: Any) -> tuple[str, int, int]:
    """Run one task with ``retries=2``: its final state, its attempts and how often the emulator saw ``key``."""
    with DAG(f"fail_fast_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        task.pop("op", CandelaSubmitPipelinePromptOperator)(task_id="t", retries=2, retry_delay=dt.timedelta(0), **task)
    before = sum(candela.stats()["requests"].get(key, {}).values())
    dr = run_dag(dag)
    (ti,) = dr.dag_run.get_task_instances()
    return dr.states["t"], ti.try_number, sum(candela.stats()["requests"].get(key, {}).values()) - before


ONE_TASK = {"app": PIPELINE, "model": MODEL, "prompt": "Count my words"}


def test_a_final_4xx_fails_at_once(candela: Any) -> None:
    candela.add_fault(match="POST /session", status=404, body={"detail": "App not found"})
    assert _attempts(candela, "POST /session", **ONE_TASK) == ("failed", 1, 1)


def test_an_answer_that_does_not_fit_output_type_fails_at_once(candela: Any) -> None:
    outcome = _attempts(candela, "POST /session/pipeline_submit", output_type=Needs, **ONE_TASK)
    assert outcome == ("failed", 1, 1), "the prompt ran once; a retry would send it again"


def test_bad_input_after_rendering_fails_at_once(candela: Any) -> None:
    outcome = _attempts(candela, "GET /slot/user_has_slot", session_id="{{ 'not an id' }}", prompt="Count my words")
    assert outcome == ("failed", 1, 0)


def test_a_transient_failure_spends_the_retries(candela: Any) -> None:
    candela.add_fault(match="POST /session", status=503, count=100)
    outcome = _attempts(
        candela,
        "POST /session",
        op=CandelaStartSessionOperator,
        app=PIPELINE,
        model=MODEL,
        hook_params={"max_retries": 0},
    )
    assert outcome == ("failed", 3, 3), "503 is transient: three task attempts, one request each (max_retries=0)"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_final_statuses_are_fail_without_retry(status: int) -> None:
    cls = CandelaApiError.class_for(status)
    assert issubclass(cls, CandelaRejectedError) and issubclass(cls, AirflowFailException)


@pytest.mark.parametrize("status", [*sorted(RETRYABLE_4XX), 500, 502, 503, None])
def test_transient_statuses_are_retried(status: int | None) -> None:
    assert not issubclass(CandelaApiError.class_for(status), AirflowFailException)


def test_input_output_and_auth_errors_are_fail_without_retry() -> None:
    for cls in (CandelaInputError, CandelaOutputError, CandelaAuthError):
        assert issubclass(cls, AirflowFailException), cls
