"""``@task.candela_pipeline`` and ``@task.candela_agent`` run as real Airflow tasks against the emulator.

One-task sessions (started and stopped by the task, also when it fails or is killed), typed answers
(``output_type``), an agent on a shared session, and the errors a DAG author meets at parse time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task
from pydantic import BaseModel

from airflow_provider_candela.exceptions import CandelaInputError
from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator, CandelaStopSessionOperator
from airflow_provider_candela.testing import CandelaEmulator, run_dag, wait_until

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"


class WordCount(BaseModel):
    """Fits the emulator's pipeline ``result``."""

    answer: str
    word_count: int


class Invoice(BaseModel):
    """Does not fit it: neither field is in the answer."""

    invoice_id: str
    total: float


class Table(BaseModel):
    """Fits the emulator's agent ``result`` events."""

    content_type: str
    content: dict[str, str]


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _running(candela: CandelaEmulator) -> Any:
    return candela.stats()["running_sessions"].get(candela.username)


def _logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    return caplog.text + captured.out + captured.err


def test_the_decorators_are_registered_under_task() -> None:
    if sys.modules["airflow"].__version__.startswith("2."):
        from airflow.decorators import task as official_task
    else:
        from airflow.sdk import task as official_task
    from airflow_provider_candela.decorators.sessions import candela_agent_task, candela_pipeline_task

    assert official_task.candela_pipeline is candela_pipeline_task
    assert official_task.candela_agent is candela_agent_task


@pytest.mark.usefixtures("airflow_db")
def test_a_pipeline_in_one_task_starts_and_stops_its_session(candela: CandelaEmulator) -> None:
    with _dag("deco_one_task") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL)
        def summarise(desk: str, ds: str | None = None) -> str:
            return f"Summarise trades of {desk} for {ds} {{{{ not a template }}}}"

        summarise("rates")

    dr = run_dag(dag)
    assert dr.states == {"summarise": "success"}
    answer = dr.xcom("summarise")
    # the function's arguments (an argument and a context value) are in the prompt, sent as returned
    assert re.fullmatch(
        r"Summarise trades of rates for \d{4}-\d\d-\d\d \{\{ not a template \}\}", answer["result"]["prompt"]
    )
    assert answer["metadata"]["request_id"]
    stats = candela.stats()
    assert stats["sessions_started"] == 1
    assert _running(candela) is None, "the task stopped the session it started"
    assert candela.request_count("GET /session/stop") >= 1


@pytest.mark.usefixtures("airflow_db")
def test_a_one_task_prompt_that_fails_on_the_server_stops_its_session(candela: CandelaEmulator) -> None:
    candela.add_fault(match="POST /session/pipeline_submit", status=502)  # a prompt is never replayed
    with _dag("deco_one_task_server_error") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL)
        def summarise() -> str:
            return "Summarise the book"

        summarise()

    dr = run_dag(dag)
    assert dr.states == {"summarise": "failed"}
    assert candela.request_count("POST /session/pipeline_submit", "502") == 1
    assert candela.stats()["sessions_started"] == 1
    assert _running(candela) is None, "the failed task stopped the session it started"


@pytest.mark.usefixtures("airflow_db")
def test_a_one_task_agent_prompt_that_times_out_stops_its_session(candela: CandelaEmulator) -> None:
    # A 10-minute answer: read to its end instead of cut by the 3 s timeout, the test would end at pytest's timeout.
    candela.configure(event_delay=0.2, agent_chat_events=3000)
    with _dag("deco_one_task_timeout") as dag:

        @task.candela_agent(app=AGENT, model=MODEL, execution_timeout=dt.timedelta(seconds=3))
        def ask() -> str:
            return "Tell me a long story"

        ask()

    try:
        assert run_dag(dag).states == {"ask": "failed"}
    except BaseException as err:  # Airflow 2.11's dag.test() re-raises a task timeout after failing the task
        assert sys.modules["airflow"].__version__.startswith("2.")
        assert type(err).__name__ == "AirflowTaskTimeout"
    assert candela.stats()["sessions_started"] == 1
    assert _running(candela) is None, "the timed-out task stopped the session it started"


@pytest.mark.usefixtures("airflow_db")
def test_output_type_that_fits_is_the_xcom_and_a_downstream_task_reads_it(candela: CandelaEmulator) -> None:
    seen: list[Any] = []
    with _dag("deco_typed") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL, output_type=WordCount)
        def count() -> str:
            return "Count these five words"

        @task
        def read(summary: dict[str, Any]) -> int:
            seen.append(WordCount.model_validate(summary))
            return int(summary["word_count"])

        read(count())

    dr = run_dag(dag)
    assert dr.states == {"count": "success", "read": "success"}
    assert dr.xcom("count") == {"answer": "Processed 4 words: Count these five words", "word_count": 4}
    assert dr.xcom("read") == 4
    assert _running(candela) is None


@pytest.mark.usefixtures("airflow_db")
def test_output_type_that_does_not_fit_fails_the_task_listing_the_fields(
    candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with _dag("deco_typed_mismatch") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL, output_type=Invoice)
        def bill() -> str:
            return "Bill the client"

        bill()

    with caplog.at_level(logging.INFO):
        dr = run_dag(dag)
    assert dr.states == {"bill": "failed"}
    logged = _logged(caplog, capsys)
    assert "does not fit `output_type` Invoice: missing field 'invoice_id'; missing field 'total'" in logged
    assert "The answer that did not fit (truncated):" in logged and "Processed 3 words" in logged
    assert _running(candela) is None, "the session is stopped although the answer did not fit"
    assert candela.stats()["sessions_started"] == 1


@pytest.mark.usefixtures("airflow_db")
def test_an_agent_on_a_shared_session_with_setup_and_teardown(candela: CandelaEmulator) -> None:
    with _dag("deco_agent") as dag:
        start = CandelaStartSessionOperator(task_id="start", app=AGENT, model=MODEL)
        stop = CandelaStopSessionOperator(task_id="stop", session=start.output)

        @task.candela_agent(session=start.output, output_type=Table)
        def ask(topic: str) -> str:
            return f"Give me a table of {topic}"

        @task.candela_agent(session=start.output)
        def follow_up(first: dict[str, Any]) -> str:
            return f"You sent {len(first['results'])} table(s); say thanks"

        asked = ask("prices")
        start >> asked >> follow_up(asked) >> stop.as_teardown(setups=start)

    dr = run_dag(dag)
    assert dr.states == {"start": "success", "ask": "success", "follow_up": "success", "stop": "success"}
    metadata = dr.xcom("start")
    answer = dr.xcom("ask")
    assert answer["session"] == metadata["obj_id"]
    assert answer["results"][0]["content_type"] == "table"
    assert answer["results"][0]["content"]["data"].startswith("index,word,length")
    assert dr.xcom("follow_up")["response"].startswith("You asked: You sent 1 table")
    assert candela.stats()["sessions_started"] == 1, "both prompts went to the one shared session"
    assert _running(candela) is None


@pytest.mark.usefixtures("airflow_db")
def test_a_function_returning_a_non_string_fails_the_task_naming_it(
    candela: CandelaEmulator, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with _dag("deco_not_a_string") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL)
        def numbers() -> Any:
            return {"prompt": "hi"}

        numbers()

    with caplog.at_level(logging.INFO):
        dr = run_dag(dag)
    assert dr.states == {"numbers": "failed"}
    logged = _logged(caplog, capsys)
    assert "The function of @task.candela_pipeline task 'numbers' must return the prompt as a string, got dict" in (
        logged
    )
    assert candela.stats()["sessions_started"] == 0, "no session is started for a prompt that is not one"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"session": "default/s1", "app": PIPELINE, "model": MODEL},
            "Task 'ask' got both a running session and `app`, `model`: pass one of `session=start.output`",
        ),
        ({}, "Task 'ask' needs a session: pass `session=start.output` (or `session_id=...`)"),
        ({"app": PIPELINE}, "Task 'ask' got `app` but no `model`"),
        ({"session": "default/s1", "slot_type": "gpu-large"}, "Task 'ask' got `slot_type`, which apply only"),
        ({"app": PIPELINE, "model": MODEL, "output_type": dict}, "Invalid `output_type` for task 'ask'"),
    ],
    ids=["both-forms", "neither-form", "app-without-model", "start-option-on-running-session", "output-type"],
)
@pytest.mark.parametrize("decorator", ["candela_pipeline", "candela_agent"])
def test_session_forms_are_checked_at_dag_parse(decorator: str, kwargs: dict[str, Any], message: str) -> None:
    with _dag("deco_forms"), pytest.raises(CandelaInputError) as raised:

        @getattr(task, decorator)(**kwargs)
        def ask() -> str:
            return "hi"

        ask()
    assert message in str(raised.value)


_KILLED_DAG = textwrap.dedent(
    """
    import datetime as dt
    import json

    from airflow.providers.common.compat.sdk import DAG, task

    with DAG("deco_killed", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:

        @task.candela_pipeline(app="default/demo-pipeline", model="default/demo-model")
        def slow():
            return "An answer that takes a minute"

        slow()

    if __name__ == "__main__":
        try:
            dag.test()
        finally:  # Airflow 2's dag.test() raises the task's AirflowTaskTerminated: read the states back
            from airflow.models import DagRun

            run = DagRun.find(dag_id="deco_killed")[-1]
            states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
            print("RESULT " + json.dumps(states), flush=True)
    """
)


@pytest.mark.usefixtures("airflow_db")
def test_a_killed_one_task_run_fails_and_stops_its_session(candela: CandelaEmulator, tmp_path: Path) -> None:
    candela.add_fault(match="POST /session/pipeline_submit", delay=60)  # the answer would take a minute
    script = tmp_path / "dags" / "killed.py"
    script.parent.mkdir()
    script.write_text(_KILLED_DAG)
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(script.parent)}
    env["AIRFLOW_CONN_CANDELA_DEFAULT"] = candela.connection_json()
    output = tmp_path / "run.log"
    with output.open("w") as out:
        process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: not candela.faults(), timeout=120)  # the prompt is in flight, its answer delayed
        assert _running(candela) is not None
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    text = output.read_text()
    results = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert results, text[-3000:]
    assert json.loads(results[-1][len("RESULT ") :]) == {"slow": "failed"}
    assert _running(candela) is None, "the killed task stopped the session it started"
    assert candela.stats()["sessions_started"] == 1
