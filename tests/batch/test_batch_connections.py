"""A fan-out's connections when they cannot go on: refused for good (fail fast), or lost (the others answer).

Real Airflow tasks (``dag.test()``) against the emulator over HTTP; every refusal and every lost slot or
session comes from the emulator (its faults, its users), every count is what it saw.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
MODEL = "default/demo-model"
SUBMIT = "POST /session/pipeline_submit"
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")


def _seen(candela: Any, route: str = SUBMIT) -> int:
    return sum(candela.stats()["requests"].get(route, {}).values())


@pytest.fixture
def users(candela: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Connections ``candela_u1``, ``candela_u2`` (a Candela user each) and ``candela_bad`` (a wrong password)."""
    base = json.loads(candela.connection_json())
    for n in (1, 2):
        candela.add_user(f"u{n}", f"pw-{n}")
        monkeypatch.setenv(f"AIRFLOW_CONN_CANDELA_U{n}", json.dumps({**base, "login": f"u{n}", "password": f"pw-{n}"}))
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_BAD", json.dumps({**base, "login": "u1", "password": "wrong"}))
    return ["candela_u1", "candela_u2"]


def _run(conn_ids: list[str], prompts: list[str], **kwargs: Any) -> Any:
    with DAG(f"batch_conns_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        CandelaPipelineBatchOperator(
            task_id="b", app=PIPELINE, model=MODEL, prompts=prompts, candela_conn_ids=conn_ids, **kwargs
        )
    return run_dag(dag)


def _logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    return caplog.text + captured.out + captured.err


def test_every_connection_refused_for_good_fails_at_once_naming_each(
    candela: Any, users: list[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO):
        dr = _run(["candela_bad", "candela_nowhere"], ["a", "b"], retries=2, retry_delay=dt.timedelta(0))
    assert dr.states == {"b": "failed"}
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 1, "credentials refused and a missing connection: no retry can fix them"
    logged = _logged(caplog, capsys)
    assert "No connection is left to answer the batch's 2 remaining input(s): 'candela_bad': " in logged
    assert "'candela_nowhere': Connection 'candela_nowhere' is not defined" in logged
    assert "no retry can change these answers" in logged
    assert _seen(candela) == 0


def test_an_unknown_app_on_every_connection_fails_at_once(candela: Any, users: list[str]) -> None:
    with DAG(f"batch_conns_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app="default/no-such-app",
            model=MODEL,
            prompts=["a"],
            candela_conn_ids=users,
            retries=2,
            retry_delay=dt.timedelta(0),
        )
    dr = run_dag(dag)
    (ti,) = dr.dag_run.get_task_instances()
    assert (dr.states, ti.try_number) == ({"b": "failed"}, 1)
    assert _seen(candela, "POST /session") == 2, "one refused start per connection, no retry"


def test_a_transient_cause_leaves_the_batch_retryable(candela: Any, users: list[str]) -> None:
    # candela_bad: credentials refused (final); candela_u2: its session start answered 503 (transient)
    candela.add_fault(match="POST /session", status=503, count=100)
    dr = _run(
        ["candela_bad", "candela_u2"],
        ["a"],
        retries=1,
        retry_delay=dt.timedelta(0),
        hook_params={"max_retries": 0},
    )
    (ti,) = dr.dag_run.get_task_instances()
    assert (dr.states, ti.try_number) == ({"b": "failed"}, 2), "retried: a 503 may pass"


#: What the warning says of u1 (a regular expression) when the emulator takes its slot or session from outside.
DROPPED: dict[str, str] = {
    "slot": r"its slot is gone \(disposed\)",
    "slot_errored": "its slot is ERRORED",
    # Candela only refuses the prompt (slot ready, no newer session): u2 answering the same input tells
    "session": r"its session refuses prompts that another connection answers \(stopped from outside\?\): "
    r"Candela refused input \d+ '\d+', which connection 'candela_u2' answered",
}


@pytest.mark.parametrize("lose", list(DROPPED))
def test_a_connection_whose_slot_or_session_is_lost_drops_out_and_the_other_answers_its_input(
    candela: Any, users: list[str], lose: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # u1's second prompt finds its slot disposed (or ERRORED) or its session stopped, as if done from outside
    # mid-run; u2's answers take a while, so u1 gets a second input before u2 has answered them all.
    candela.add_fault(match=SUBMIT, user="u1", lose=lose, skip=1)
    candela.add_fault(match=SUBMIT, user="u2", delay=0.1, count=20)
    prompts = [f"prompt {n}" for n in range(10)]
    with caplog.at_level(logging.INFO):
        dr = _run(users, prompts)
    assert dr.states == {"b": "success"}
    assert [r["status"] for r in dr.xcom("b")] == ["succeeded"] * 10, "no input failed: u2 answered u1's"
    logged = _logged(caplog, capsys)
    assert re.search(f"Connection 'candela_u1' drops out of the batch: {DROPPED[lose]}", logged), logged[-3000:]
    assert _seen(candela) == 11, "u1's refused prompt was sent again, to u2, and u1 sent nothing more"
    assert not any(candela.stats()["running_sessions"].values()), "u2's session stopped when done"


def test_an_input_every_connection_refuses_ends_failed_and_no_connection_drops_out(
    candela: Any, users: list[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    candela.add_fault(match=SUBMIT, status=400, body={"detail": "prompt too long"}, count=2)
    with caplog.at_level(logging.INFO):
        dr = _run(users, ["a very long prompt"], fail_on_partial_error=False)
    assert dr.states == {"b": "success"}
    (outcome,) = dr.xcom("b")
    assert outcome["status"] == "failed"
    assert "prompt too long" in outcome["error"]
    assert "refused by every connection of the batch: 'candela_u" in outcome["error"]
    assert _seen(candela) == 2, "tried once on each connection"
    assert "drops out" not in _logged(caplog, capsys)


def test_an_ambiguous_input_in_a_fan_out_is_not_sent_again(
    candela: Any, users: list[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    candela.add_fault(match=SUBMIT, user="u1", drop=True, after=True)  # sent, then the answer is lost
    candela.add_fault(match=SUBMIT, user="u2", delay=0.1, count=20)
    with caplog.at_level(logging.INFO):
        dr = _run(users, [f"prompt {n}" for n in range(6)], fail_on_partial_error=False)
    statuses = [r["status"] for r in dr.xcom("b")]
    assert sorted(statuses) == ["ambiguous"] + ["succeeded"] * 5
    assert _seen(candela) == 6, "the ambiguous input went to no other connection"
    assert "drops out" not in _logged(caplog, capsys)
