"""``result_path`` checked before the first prompt, a failed write kept for the retry, and the size error's advice.

Real Airflow tasks (``dag.test()``) against the emulator over HTTP.  A second ``dag.test()`` with the same
logical date runs the same task instance again (Airflow clears it, as a retry does), so it finds what the
first try kept.  Every count is what the emulator saw.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import inspect
import itertools
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela._compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator
from airflow_provider_candela.testing import run_dag, wait_until

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
MODEL = "default/demo-model"
SUBMIT = "POST /session/pipeline_submit"
PROMPTS = [f"prompt number {n}" for n in range(4)]
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")
AIRFLOW_3 = importlib.metadata.version("apache-airflow").startswith("3.")


def _seen(candela: Any) -> int:
    return sum(candela.stats()["requests"].get(SUBMIT, {}).values())


def _same_run(dag: DAG, when: dt.datetime) -> Any:
    """``run_dag`` at logical date ``when``: a second call runs the same task instance again."""
    if "run_after" in inspect.signature(dag.test).parameters:  # Airflow 3
        return run_dag(dag, logical_date=when, run_after=when)
    return run_dag(dag, execution_date=when)


def _batch(dag_id: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        CandelaPipelineBatchOperator(task_id="b", app=PIPELINE, model=MODEL, **kwargs)
    return dag


def _logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    return caplog.text + captured.out + captured.err


def test_a_result_path_that_is_a_folder_fails_before_any_request(
    candela: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    before = candela.stats()["requests_total"]
    with caplog.at_level(logging.INFO):
        dr = run_dag(_batch(f"resume_{next(_ids)}", prompts=PROMPTS, result_path=f"file://{tmp_path}", retries=2))
    assert dr.states == {"b": "failed"}
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 1, "no retry can fix it"
    assert candela.stats()["requests_total"] == before, "no request at all"
    assert f"Invalid `result_path` for task 'b': file://{tmp_path} is a folder" in _logged(caplog, capsys)


def test_a_write_that_fails_at_the_end_keeps_every_answer_for_the_retry(
    candela: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "out.jsonl"
    dag_id = f"resume_{next(_ids)}"
    when = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    # the last prompt is answered late, so the test turns the result file into a folder meanwhile
    candela.add_fault(match=SUBMIT, delay=2, skip=len(PROMPTS) - 1)
    blocked = threading.Thread(
        target=lambda: (wait_until(lambda: _seen(candela) >= 1, timeout=60), result.mkdir()), daemon=True
    )
    blocked.start()
    with caplog.at_level(logging.INFO):
        dr = _same_run(_batch(dag_id, prompts=PROMPTS, result_path=f"file://{result}"), when)
    blocked.join()
    assert dr.states == {"b": "failed"}
    logged = _logged(caplog, capsys)  # the Candela error's own message (the OSError is only its cause)
    assert f"could not write the records of its 4 inputs to `result_path` file://{result}" in logged
    assert _seen(candela) == len(PROMPTS)
    if not AIRFLOW_3:
        pytest.skip("the rest reruns the task with a second dag.test(), which Airflow 2.11 cannot do in one process")
    shutil.rmtree(result)  # the location fixed, the task is retried
    dr = _same_run(_batch(dag_id, prompts=PROMPTS, result_path=f"file://{result}"), when)
    assert dr.states == {"b": "success"}
    assert _seen(candela) == len(PROMPTS), "the retry sent nothing again"
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    assert [(r["index"], r["status"]) for r in lines] == [(n, "succeeded") for n in range(len(PROMPTS))]


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the task state store is Airflow 3.3's")
def test_the_size_error_says_the_retry_with_result_path_takes_the_outcomes_over(
    candela: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    big = [f"{n} " + "word " * 9_000 for n in range(100)]  # each answer echoes its prompt: ~45 KiB a record
    with caplog.at_level(logging.INFO):
        dr = run_dag(_batch(f"resume_{next(_ids)}", prompts=big, retries=2))
    assert dr.states == {"b": "failed"}
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 1, "no retry without result_path can fix it"
    logged = _logged(caplog, capsys)
    assert "more than the 4,194,304 XCom takes. Pass `result_path=` and retry the task" in logged
    assert "the retry takes over the outcomes kept in Airflow's task state store" in logged


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the task state store is Airflow 3.3's")
def test_a_retry_given_result_path_takes_over_what_the_task_state_store_kept(candela: Any, tmp_path: Path) -> None:
    # The first try keeps its outcomes in the task state store (no result_path), one input refused; the
    # retry (result_path rendered from the try number, as after the DAG was changed) takes the answered ones
    # over and sends only the refused one.  (A second dag.test() would replace the run, store included.)
    result = tmp_path / "out.jsonl"
    candela.add_fault(match=SUBMIT, count=1, status=400, body={"detail": "not now"}, skip=2)
    template = f"{{{{ 'file://{result}' if ti.try_number > 1 else '' }}}}"
    dr = run_dag(
        _batch(f"resume_{next(_ids)}", prompts=PROMPTS, result_path=template, retries=1, retry_delay=dt.timedelta(0))
    )
    assert dr.states == {"b": "success"}
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 2
    assert _seen(candela) == len(PROMPTS) + 1, "the retry sent only the refused input"
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["succeeded"] * len(PROMPTS)
    assert all(r["answer"]["result"]["prompt"] == PROMPTS[r["index"]] for r in lines), "the answers themselves"
