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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task
from pydantic import BaseModel
from reviewing import ScriptedReviewer

from airflow_provider_candela._compat import AIRFLOW_V_3_4_PLUS
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
    assert "| field | value |" in body and "| word\\_count | 4 |" in body, "a field name as text (`_` escaped)"
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


# ------------------------------------------------------------------------------------------------
# a failing notifier, an approval bound to its prompt, big integers through the form


@pytest.mark.usefixtures("airflow_db")
def test_a_failing_notifier_is_logged_and_the_review_stays_open(
    api_server: ApiServer, candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    called: list[str] = []

    def broken(context: Any) -> None:
        raise RuntimeError("the chat service is down")

    def working(context: Any) -> None:
        called.append(context["task_instance"].task_id)

    with _dag("review_broken_notifier") as dag:
        _pipeline(approval_notifiers=[broken, working], retries=1, retry_delay=dt.timedelta(0))

    with caplog.at_level(logging.INFO):
        result, reviewer = _reviewed(api_server, candela, dag, {"summarise": [("Approve", None)]})
    assert result.states == {"summarise": "success"}
    assert result.xcom("summarise") == ANSWER
    assert len(reviewer.seen["summarise"]) == 1, "one review"
    assert called == ["summarise"], "the next notifier was called"
    assert candela.request_count("POST /session/pipeline_submit") == 1, "Candela was prompted once"
    logged = _logged(caplog, capsys)
    assert "The approval notifier broken failed (RuntimeError: the chat service is down)" in logged
    assert "the review is open all the same" in logged


class _DiesAfterTheApproval(CandelaSubmitPipelinePromptOperator):
    """Its first try fails right after the review was approved: what a worker killed at that moment leaves behind.

    A stand-in for killing the worker (the test cannot kill ``dag.test``'s own process): the approved answer
    is in the task state store and the try did not succeed, so the task is retried.
    """

    def post_execute(self, context: Any, result: Any = None) -> None:
        if context["ti"].try_number == 1:
            raise RuntimeError("the worker died after the approval")
        super().post_execute(context, result)


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("changed", [False, True], ids=["same prompt", "prompt changed"])
def test_an_approval_of_an_earlier_try_is_used_for_its_own_prompt_only(
    api_server: ApiServer,
    candela: CandelaEmulator,
    caplog: pytest.LogCaptureFixture,
    capsys: Any,
    changed: bool,
) -> None:
    # The retry's prompt differs from the first try's, as after a clear when the upstream changed it. (The
    # retry runs in the same DAG run: a second `dag.test` would replace the run, and with it the task state store.)
    later = "{{ ' of desk 7' if ti.try_number > 1 else '' }}" if changed else ""
    with _dag(f"review_earlier_approval_{'changed' if changed else 'same'}") as dag:
        _DiesAfterTheApproval(
            task_id="summarise",
            app=PIPELINE,
            model=MODEL,
            prompt=PROMPT + later,
            output_type=Summary,
            require_approval=True,
            retries=1,
            retry_delay=dt.timedelta(0),
        )

    script = {"summarise": [("Approve", None), ("Approve", None)]}
    with caplog.at_level(logging.INFO):
        result, reviewer = _reviewed(api_server, candela, dag, script)
    logged = _logged(caplog, capsys)
    bodies = [seen.review["body"] for seen in reviewer.seen["summarise"]]
    if changed and not AIRFLOW_V_3_4_PLUS:
        # Airflow 3.1-3.3 keep the first try's review: the page would show the old answer to approve. The task
        # fails at once instead of asking the reviewer about an answer the page does not show.
        assert result.states == {"summarise": "failed"}
        assert "CandelaStaleReviewError" in logged and "keeps the first review of a task instance" in logged
        assert len(bodies) == 1, "nobody was asked to review the stale page"
        assert candela.request_count("POST /session/pipeline_submit") == 2, "the new prompt was sent"
        assert "An answer was approved on an earlier try, but for another prompt" in logged
        return
    assert result.states == {"summarise": "success"}
    if not changed:
        assert result.xcom("summarise") == ANSWER
        assert len(bodies) == 1, "no second review"
        assert candela.request_count("POST /session/pipeline_submit") == 1, "no second prompt"
        assert "approved on an earlier try" in logged and "for the same prompt" in logged
        return
    assert result.xcom("summarise")["answer"] == "Processed 7 words: Summarise the changed positions of desk 7"
    # Reviewed again, and the page shows the new answer (Airflow 3.4 replaces a task instance's review per try).
    assert len(bodies) == 2, "the new answer was reviewed"
    assert "desk 7" in bodies[1]
    assert candela.request_count("POST /session/pipeline_submit") == 2, "the new prompt was sent"
    assert "An answer was approved on an earlier try, but for another prompt" in logged


BIG = 2**63 - 5  # a trade id beyond 2**53: a browser's JSON.parse reads 9223372036854775808


class Trade(BaseModel):
    trade_id: int
    note: str


@pytest.fixture(scope="module")
def trade_emulator() -> Iterator[CandelaEmulator]:
    """An emulator whose pipeline answers a prompt about a trade with a big trade id (a canned answer)."""
    catalog = {"responses": [{"pattern": "(?i)trade", "pipeline": {"trade_id": BIG, "note": "as booked"}}]}
    with CandelaEmulator(catalog=catalog, slot_startup_seconds=0) as emulator:
        yield emulator


@pytest.fixture
def trades(trade_emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: Any) -> CandelaEmulator:
    trade_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", trade_emulator.connection_json())
    return trade_emulator


def _as_the_form_sends(value: Any, number: Callable[[float], Any]) -> Any:
    """``value`` through the browser: every number a JavaScript double, written back by ``number``."""
    if isinstance(value, dict):
        return {k: _as_the_form_sends(v, number) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_the_form_sends(v, number) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.loads(json.dumps(number(float(value))))
    return value


def test_a_big_integer_the_reviewer_did_not_touch_reaches_downstream_exactly(
    api_server: ApiServer, trades: CandelaEmulator
) -> None:
    with _dag("review_big_integer") as dag:
        for task_id in ("as_doubles", "as_integers"):
            trade = CandelaSubmitPipelinePromptOperator(
                task_id=task_id,
                app=PIPELINE,
                model=MODEL,
                prompt="Describe the trade",
                output_type=Trade,
                require_approval=True,
                allow_modifications=True,
            )

            @task(task_id=f"book_{task_id}")
            def book(value: dict[str, Any]) -> int:
                return int(value["trade_id"])  # as downstream sees it

            book(trade.output)

    def edited(number: Callable[[float], Any]) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
        def answer(review: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            value = _as_the_form_sends(review["params"]["answer"]["value"], number)
            assert value["trade_id"] != BIG, "the browser's double is not the trade id"
            return "Approve", {"answer": {**value, "note": "checked by ops"}}

        return answer

    # JavaScript's JSON.stringify writes 9223372036854775808 (an integer); a double-minded client writes 9.2e18
    script = {"as_doubles": [edited(float)], "as_integers": [edited(int)]}
    result, reviewer = _reviewed(api_server, trades, dag, script)
    assert set(result.states.values()) == {"success"}, result.states
    for task_id in ("as_doubles", "as_integers"):
        assert reviewer.seen[task_id][0].review["params"]["answer"]["value"]["trade_id"] == BIG
        assert result.xcom(task_id) == {"trade_id": BIG, "note": "checked by ops"}
        assert result.xcom(task_id, key="review")["edited"] is True
        assert result.xcom(f"book_{task_id}") == BIG
    assert trades.request_count("POST /session/pipeline_submit") == 2
