"""A person approves, edits or rejects Candela's answer (``require_approval``), on Airflow 3.3.

Each DAG runs with ``dag.test()`` against the emulator over real HTTP; its reviews are answered through
the REST API of a real ``airflow api-server`` sharing the metadata database (``conftest.ScriptedReviewer``),
and the timeouts are resolved by a real ``airflow scheduler`` (Airflow's only timer of ``awaiting_input``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task
from pydantic import BaseModel
from reviewing import ScriptedReviewer

from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import CandelaEmulator, run_dag
from airflow_provider_candela.testing._reviewer import ApiServer, _free_port, start_airflow, stop_process_group

PIPELINE = "default/demo-pipeline"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PROMPT = "Summarise the changed positions"
#: What the emulator's pipeline answers to PROMPT, as ``Summary``.
ANSWER = {"answer": "Processed 4 words: Summarise the changed positions", "word_count": 4}


class Summary(BaseModel):
    answer: str
    word_count: int


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()  # Airflow 3 logs the tasks through structlog to stdout
    return caplog.text + captured.out + captured.err


def _reviewed(
    api_server: ApiServer, candela: CandelaEmulator, dag: DAG, script: dict[str, list[Any]]
) -> tuple[Any, ScriptedReviewer]:
    with ScriptedReviewer(api_server.reviewer(), candela, dag.dag_id, script) as reviewer:
        result = run_dag(dag)
    return result, reviewer


def _pipeline(**kwargs: Any) -> CandelaSubmitPipelinePromptOperator:
    kwargs.setdefault("task_id", "summarise")
    return CandelaSubmitPipelinePromptOperator(
        app=PIPELINE, model=MODEL, prompt=PROMPT, output_type=Summary, require_approval=True, **kwargs
    )


@pytest.mark.usefixtures("airflow_db")
def test_approved_answer_is_the_xcom_and_the_wait_held_no_session(
    api_server: ApiServer, candela: CandelaEmulator
) -> None:
    with _dag("review_approve") as dag:
        summary = _pipeline()

        @task
        def downstream(value: dict[str, Any]) -> str:
            return str(value["answer"])

        downstream(summary.output)

    result, reviewer = _reviewed(api_server, candela, dag, {"summarise": [("Approve", None)]})
    assert result.states == {"summarise": "success", "downstream": "success"}
    assert result.xcom("summarise") == ANSWER
    assert result.xcom("downstream") == ANSWER["answer"]
    record = result.xcom("summarise", key="review")
    assert record["decision"] == "approved"
    assert record["edited"] is False
    assert record["responded_by"]["name"] == api_server.username
    assert dt.datetime.fromisoformat(record["responded_at"]) > START

    (seen,) = reviewer.seen["summarise"]
    assert seen.running_session is None, "the one-task session was stopped before the review opened"
    assert seen.review["subject"] == "Review Candela's answer of task summarise"
    body = seen.review["body"]
    assert "`review_approve.summarise`" in body
    assert f"> {PROMPT}" in body
    assert "| field | value |" in body and "| word_count | 4 |" in body
    assert "```json" in body
    assert seen.review["params"] == {}, "no edit without allow_modifications"
    stats = candela.stats()
    assert stats["sessions_started"] == 1
    assert stats["running_sessions"][candela.username] is None


@pytest.mark.usefixtures("airflow_db")
def test_a_valid_edit_reaches_downstream_and_an_untouched_form_is_no_edit(
    api_server: ApiServer, candela: CandelaEmulator
) -> None:
    edited = {"answer": "Two positions changed.", "word_count": 3}

    with _dag("review_edit") as dag:

        @task.candela_pipeline(
            app=PIPELINE, model=MODEL, output_type=Summary, require_approval=True, allow_modifications=True
        )
        def summarise() -> str:
            return PROMPT

        _pipeline(task_id="untouched", allow_modifications=True)

        @task
        def downstream(value: dict[str, Any]) -> dict[str, Any]:
            return value

        downstream(summarise())

    def untouched(review: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # The form's value, sent back as a browser would (JSON numbers may come back as floats).
        value = json.loads(json.dumps(review["params"]["answer"]["value"]))
        value["word_count"] = float(value["word_count"])
        return "Approve", {"answer": value}

    script = {"summarise": [("Approve", {"answer": edited})], "untouched": [untouched]}
    result, reviewer = _reviewed(api_server, candela, dag, script)
    assert set(result.states.values()) == {"success"}, result.states
    assert result.xcom("summarise") == edited
    assert result.xcom("downstream") == edited
    assert result.xcom("summarise", key="review")["edited"] is True
    assert result.xcom("untouched") == ANSWER
    assert result.xcom("untouched", key="review")["edited"] is False
    form = reviewer.seen["summarise"][0].review["params"]["answer"]
    assert form["value"] == ANSWER, "the form holds the answer in output_type's JSON form"
    assert "may edit the answer" in reviewer.seen["summarise"][0].review["body"]


@pytest.mark.usefixtures("airflow_db")
def test_an_edit_that_does_not_fit_output_type_fails_listing_the_fields(
    api_server: ApiServer, candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    with _dag("review_bad_edit") as dag:
        summary = _pipeline(allow_modifications=True)

        @task
        def downstream(value: dict[str, Any]) -> None:
            raise AssertionError("must not run")

        downstream(summary.output)

    script = {"summarise": [("Approve", {"answer": {"answer": 7}})]}
    with caplog.at_level(logging.INFO):
        result, _ = _reviewed(api_server, candela, dag, script)
    assert result.states == {"summarise": "failed", "downstream": "upstream_failed"}
    logged = _logged(caplog, capsys)
    assert "CandelaOutputError" in logged
    assert "the reviewer's edit" in logged
    assert "word_count" in logged and "answer" in logged


@pytest.mark.usefixtures("airflow_db")
def test_reject_fails_naming_the_reviewer(
    api_server: ApiServer, candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    with _dag("review_reject") as dag:
        summary = _pipeline()

        @task
        def downstream(value: dict[str, Any]) -> None:
            raise AssertionError("must not run")

        downstream(summary.output)

    with caplog.at_level(logging.INFO):
        result, _ = _reviewed(api_server, candela, dag, {"summarise": [("Reject", None)]})
    assert result.states == {"summarise": "failed", "downstream": "upstream_failed"}
    assert result.xcom("summarise", key="review")["decision"] == "rejected"
    logged = _logged(caplog, capsys)
    assert "CandelaReviewError" in logged
    assert f"the reviewer '{api_server.username}'" in logged and "rejected Candela's answer" in logged


@pytest.mark.usefixtures("airflow_db")
def test_a_retry_after_a_rejection_prompts_again_and_asks_for_a_new_review(
    api_server: ApiServer, candela: CandelaEmulator
) -> None:
    with _dag("review_retry") as dag:
        _pipeline(retries=1, retry_delay=dt.timedelta(0))

    script = {"summarise": [("Reject", None), ("Approve", None)]}
    result, reviewer = _reviewed(api_server, candela, dag, script)
    assert result.states == {"summarise": "success"}
    assert result.xcom("summarise") == ANSWER
    assert result.xcom("summarise", key="review")["decision"] == "approved"
    assert [seen.response["chosen_options"] for seen in reviewer.seen["summarise"]] == [["Reject"], ["Approve"]]
    assert [seen.running_session for seen in reviewer.seen["summarise"]] == [None, None]
    assert candela.request_count("POST /session/pipeline_submit") == 2, "the retry prompted Candela again"
    assert candela.stats()["sessions_started"] == 2


@pytest.mark.usefixtures("airflow_db")
def test_agent_answer_is_reviewed_with_its_chat_and_result_table(
    api_server: ApiServer, candela: CandelaEmulator
) -> None:
    with _dag("review_agent") as dag:
        CandelaSubmitAgentPromptOperator(
            task_id="ask",
            app=AGENT,
            model=MODEL,
            prompt="Show a table of the prices",
            require_approval=True,
            allow_modifications=True,
        )

    def edit(review: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        value = review["params"]["answer"]["value"]
        return "Approve", {"answer": {**value, "response": "Checked: " + value["response"]}}

    result, reviewer = _reviewed(api_server, candela, dag, {"ask": [edit]})
    assert result.states == {"ask": "success"}
    answer = result.xcom("ask")
    assert answer["response"].startswith("Checked: You asked:")
    assert answer["results"][0]["content_type"] == "table"
    assert answer["event_counts"]["result"] == 1, "the parts the reviewer does not edit are kept"
    (seen,) = reviewer.seen["ask"]
    assert seen.running_session is None
    body = seen.review["body"]
    assert "(agent)" in body and "You asked:" in body
    assert "| index | word | length |" in body and "| 0 | Show | 4 |" in body
    assert set(seen.review["params"]["answer"]["value"]) == {"response", "results"}


@pytest.mark.usefixtures("airflow_db")
def test_a_running_session_is_the_dags_to_stop(api_server: ApiServer, candela: CandelaEmulator) -> None:
    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaStopSessionOperator,
    )

    with _dag("review_running_session") as dag:
        start = CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)
        ask = CandelaSubmitPipelinePromptOperator(
            task_id="summarise", session=start.output, prompt=PROMPT, output_type=Summary, require_approval=True
        )
        stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
        start >> ask >> stop.as_teardown(setups=start)

    result, reviewer = _reviewed(api_server, candela, dag, {"summarise": [("Approve", None)]})
    assert result.states == {"start": "success", "summarise": "success", "stop": "success"}
    (seen,) = reviewer.seen["summarise"]
    assert seen.running_session == result.xcom("start")["obj_id"], "the DAG's session runs during the review"
    assert candela.stats()["running_sessions"][candela.username] is None, "stopped by the teardown, after it"


# ------------------------------------------------------------------------------------------------
# timeouts: resolved by a real scheduler


@pytest.fixture
def scheduler(airflow_db: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``airflow scheduler`` over the suite's home: it times out reviews (every DAG there is paused).

    Started before the DAG run, so its start-up sweep of orphaned tasks is over when the tasks run.
    """
    env = {
        **os.environ,
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "0.5",
        "AIRFLOW__CORE__PARALLELISM": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
    }
    log = airflow_db / "scheduler.log"
    process = start_airflow(["scheduler"], env, log)
    try:
        _wait_for_log(process, log, "Starting the scheduler")
        yield process
    finally:
        stop_process_group(process, term_wait=30)


def _wait_for_log(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    import time

    deadline = time.monotonic() + 120
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"airflow scheduler did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@pytest.mark.usefixtures("airflow_db", "scheduler")
def test_each_on_approval_timeout(
    api_server: ApiServer, candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    timeout = dt.timedelta(seconds=2)
    with _dag("review_timeouts") as dag:
        for decision in ("fail", "approve", "reject"):
            _pipeline(
                task_id=f"on_timeout_{decision}",
                approval_timeout=timeout,
                on_approval_timeout=decision,
                allow_modifications=True,
            )

    with caplog.at_level(logging.INFO):
        result, _ = _reviewed(api_server, candela, dag, {})  # nobody answers
    assert result.states == {
        "on_timeout_fail": "failed",
        "on_timeout_approve": "success",
        "on_timeout_reject": "failed",
    }
    assert result.xcom("on_timeout_approve") == ANSWER, "approved on timeout: Candela's answer, unedited"
    decisions = {task_id: result.xcom(task_id, key="review") for task_id in result.states}
    assert decisions["on_timeout_fail"]["decision"] == "timed_out"
    assert decisions["on_timeout_approve"]["decision"] == "approved_on_timeout"
    assert decisions["on_timeout_approve"]["responded_by"] is None
    assert decisions["on_timeout_reject"]["decision"] == "rejected_on_timeout"
    logged = _logged(caplog, capsys)
    assert "nobody reviewed Candela's answer within approval_timeout (0:00:02)" in logged
    assert "approval_timeout (0:00:02) passed with on_approval_timeout='reject'" in logged
    assert candela.stats()["running_sessions"][candela.username] is None
