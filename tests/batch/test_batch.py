"""Batch operators and decorators run as real Airflow tasks against the emulator (``dag.test()``).

Every count below is what the emulator saw (requests per route, token grants, sessions); each outcome
(a 4xx, an answer that does not fit, a connection cut after the prompt was sent) comes from the
emulator's fault injection.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG
from pydantic import BaseModel

from airflow_provider_candela._compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_candela.decorators.sessions import candela_agent_batch_task, candela_pipeline_batch_task
from airflow_provider_candela.exceptions import CandelaInputError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.batch import CandelaAgentBatchOperator, CandelaPipelineBatchOperator
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"
SUBMIT = "POST /session/pipeline_submit"
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")


class Words(BaseModel):
    word_count: int


class Impossible(BaseModel):
    not_in_the_answer: int


def _dag(**kwargs: Any) -> DAG:
    return DAG(f"batch_{next(_ids)}", schedule=None, start_date=START, catchup=False, **kwargs)


def _seen(candela: Any, route: str) -> int:
    return sum(candela.stats()["requests"].get(route, {}).values())


def _running(candela: Any, user: str = "demo") -> Any:
    return candela.stats()["running_sessions"].get(user)


PROMPTS = ["one", "two words", "three words here", "four words are here", "five words are here now"]


def test_a_one_task_pipeline_batch_answers_every_input_in_one_session(candela: Any) -> None:
    with _dag() as dag:
        CandelaPipelineBatchOperator(task_id="b", app=PIPELINE, model=MODEL, prompts=PROMPTS, output_type=Words)
    before = candela.stats()
    dr = run_dag(dag)
    after = candela.stats()
    assert dr.states == {"b": "success"}
    records = dr.xcom("b")
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["key"] for r in records] == ["0", "1", "2", "3", "4"]
    assert {r["status"] for r in records} == {"succeeded"}
    assert [r["answer"]["word_count"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["request_id"] for r in records)
    assert after["sessions_started"] - before["sessions_started"] == 1
    assert after["token_grants"]["password"] - before["token_grants"]["password"] == 1
    assert _seen(candela, SUBMIT) == 5
    assert _running(candela) is None, "the task's session was stopped"


def test_an_agent_batch_on_a_running_session_leaves_it_running(candela: Any) -> None:
    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        session = hook.start_session(AGENT, MODEL, if_session_running="stop").model_dump(mode="json")
    inputs = [{"key": "alpha", "prompt": "Summarise alpha"}, {"key": "beta", "prompt": "Summarise beta"}]
    with _dag() as dag:
        CandelaAgentBatchOperator(task_id="b", session=session, prompts=inputs)
    dr = run_dag(dag)
    records = dr.xcom("b")
    assert [(r["key"], r["status"]) for r in records] == [("alpha", "succeeded"), ("beta", "succeeded")]
    assert "Summarise alpha" in records[0]["answer"]["response"]
    assert records[0]["answer"]["event_counts"]["user"] == 1
    assert _running(candela) is not None, "a running session is the DAG's to stop"


def test_each_outcome_is_kept_and_the_others_go_on(candela: Any) -> None:
    # input 1: a 422 (refused); input 2: the connection cut after the prompt was sent (ambiguous)
    candela.add_fault(match=SUBMIT, count=1, status=422, body={"detail": "bad prompt"}, skip=1)
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b", app=PIPELINE, model=MODEL, prompts=PROMPTS[:4], fail_on_partial_error=False
        )
    dr = run_dag(dag)
    assert dr.states == {"b": "success"}
    statuses = [r["status"] for r in dr.xcom("b")]
    assert statuses == ["succeeded", "failed", "succeeded", "succeeded"]
    assert "422" in dr.xcom("b")[1]["error"]


def test_a_prompt_whose_answer_was_lost_is_ambiguous_and_not_sent_again(candela: Any, tmp_path: Path) -> None:
    candela.add_fault(match=SUBMIT, count=1, drop=True, after=True, skip=2)
    result = tmp_path / "out.jsonl"
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app=PIPELINE,
            model=MODEL,
            prompts=PROMPTS,
            result_path=f"file://{result}",
            retries=1,
            retry_delay=dt.timedelta(0),
        )
    dr = run_dag(dag)
    assert dr.states == {"b": "failed"}, "fail_on_partial_error: an ambiguous input fails the task (after a retry)"
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 2
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["succeeded", "succeeded", "ambiguous", "succeeded", "succeeded"]
    assert _seen(candela, SUBMIT) == 5, "the retry sent nothing again: the ambiguous input is never resent"
    assert dr.xcom("b") == {
        "counts": {"succeeded": 4, "failed": 0, "invalid_output": 0, "ambiguous": 1},
        "result_uri": f"file://{result}",
        "inputs": 5,
    }


def test_an_answer_that_does_not_fit_output_type_is_invalid_output(candela: Any) -> None:
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app=PIPELINE,
            model=MODEL,
            prompts=PROMPTS[:2],
            output_type=Impossible,
            fail_on_partial_error=False,
        )
    dr = run_dag(dag)
    records = dr.xcom("b")
    assert [r["status"] for r in records] == ["invalid_output", "invalid_output"]
    assert "not_in_the_answer" in records[0]["error"]


@pytest.mark.parametrize("where", ["result_path", "task state store"])
def test_a_retry_sends_only_what_did_not_succeed(candela: Any, tmp_path: Path, where: str) -> None:
    if where == "task state store" and not AIRFLOW_V_3_3_PLUS:
        pytest.skip("the task state store is Airflow 3.3's")
    candela.add_fault(match=SUBMIT, count=1, status=400, body={"detail": "try later"}, skip=2)
    extra = {"result_path": f"file://{tmp_path / 'out.jsonl'}"} if where == "result_path" else {}
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app=PIPELINE,
            model=MODEL,
            prompts=PROMPTS,
            retries=1,
            retry_delay=dt.timedelta(0),
            **extra,
        )
    dr = run_dag(dag)
    assert dr.states == {"b": "success"}
    (ti,) = dr.dag_run.get_task_instances()
    assert ti.try_number == 2, "the first try failed on its failed input"
    assert _seen(candela, SUBMIT) == 6, "5 in the first try, the failed one again in the retry"
    assert candela.stats()["sessions_started"] == 2


def test_the_decorators_take_their_function_s_inputs(candela: Any) -> None:
    with _dag() as dag:

        @candela_pipeline_batch_task(app=PIPELINE, model=MODEL, output_type=Words)
        def count(words: list[str]) -> list[dict[str, str]]:
            return [{"key": w, "prompt": f"count {w}"} for w in words]

        @candela_agent_batch_task(app=AGENT, model=MODEL)
        def ask() -> list[str]:
            return ["Summarise the day"]

        count(["a", "b c"]) >> ask()
    dr = run_dag(dag)
    assert dr.states == {"count": "success", "ask": "success"}
    assert [(r["key"], r["answer"]["word_count"]) for r in dr.xcom("count")] == [("a", 2), ("b c", 3)]
    assert dr.xcom("ask")[0]["status"] == "succeeded"


def test_changed_inputs_on_a_retry_are_an_error_or_a_restart(candela: Any, tmp_path: Path) -> None:
    calls = itertools.count()
    candela.add_fault(match=SUBMIT, count=1, status=400, body={"detail": "no"}, skip=0)
    for on_changed, state in (("fail", "failed"), ("restart", "success")):
        with _dag() as dag:

            @candela_pipeline_batch_task(
                app=PIPELINE,
                model=MODEL,
                result_path=f"file://{tmp_path / on_changed / 'out.jsonl'}",
                on_changed_inputs=on_changed,
                retries=1,
                retry_delay=dt.timedelta(0),
            )
            def moving() -> list[str]:
                return [f"prompt number {next(calls)}", "stable"]

            moving()
        candela.add_fault(match=SUBMIT, count=1, status=400, body={"detail": "no"})
        dr = run_dag(dag)
        assert dr.states == {"moving": state}, on_changed


def test_fan_out_over_several_users_drops_the_one_that_cannot_authenticate(
    candela: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    base = json.loads(candela.connection_json())
    for n in (1, 2):
        candela.add_user(f"u{n}", f"pw-{n}")
        monkeypatch.setenv(f"AIRFLOW_CONN_CANDELA_U{n}", json.dumps({**base, "login": f"u{n}", "password": f"pw-{n}"}))
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_BAD", json.dumps({**base, "login": "u1", "password": "wrong"}))
    prompts = [f"prompt {i}" for i in range(12)]
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app=PIPELINE,
            model=MODEL,
            prompts=prompts,
            candela_conn_ids=["candela_u1", "candela_bad", "candela_u2"],
        )
    with caplog.at_level(logging.INFO):
        dr = run_dag(dag)
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    logged = caplog.text + captured.out + captured.err
    assert dr.states == {"b": "success"}
    assert [r["status"] for r in dr.xcom("b")] == ["succeeded"] * 12
    assert _seen(candela, SUBMIT) == 12, "each input once"
    assert candela.stats()["sessions_started"] == 2, "a session for each user that could authenticate"
    assert "Connection 'candela_bad' drops out of the batch" in logged
    assert "12/12 answered: 12 succeeded" in logged
    assert _running(candela, "u1") is None and _running(candela, "u2") is None


def test_an_empty_batch_succeeds_with_no_records(candela: Any) -> None:
    with _dag() as dag:
        CandelaPipelineBatchOperator(task_id="b", app=PIPELINE, model=MODEL, prompts=[])
    dr = run_dag(dag)
    assert dr.states == {"b": "success"} and dr.xcom("b") == []
    assert candela.stats()["sessions_started"] == 0


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "not a list": ({"prompts": "just one prompt"}, "expected a list of prompts"),
    "a non-string prompt": ({"prompts": ["ok", 42]}, r"Invalid `prompts\[1\]`.*expected a string"),
    "a duplicate key": ({"prompts": [{"prompt": "a", "key": "k"}, {"prompt": "b", "key": "k"}]}, "keys must be unique"),
    "a dict without prompt": ({"prompts": [{"key": "k"}]}, r"Invalid `prompts\[0\]`.*has no 'prompt'"),
    "both connection arguments": (
        {"prompts": ["a"], "candela_conn_id": "x", "candela_conn_ids": ["y"]},
        "both `candela_conn_id` and `candela_conn_ids`",
    ),
    "a session with several connections": (
        {"prompts": ["a"], "session": "default/s1", "app": None, "model": None, "candela_conn_ids": ["x", "y"]},
        "a session belongs to one Candela user",
    ),
    "more than 1,000 inputs without result_path": ({"prompts": ["p"] * 1001}, "Pass `result_path=`"),
    "a result_path of the wrong type": ({"prompts": ["a"], "result_path": 42}, "Invalid `result_path`"),
    "a result_path ending with '/'": (
        {"prompts": ["a"], "result_path": "file:///data/out/"},
        r"Invalid `result_path` for task 'b': 'file:///data/out/' ends with '/'",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_an_error_at_parse(case: str) -> None:
    kwargs, message = BAD[case]
    arguments = {"app": PIPELINE, "model": MODEL, **kwargs}
    with _dag(), pytest.raises(CandelaInputError, match=message):
        CandelaPipelineBatchOperator(task_id="b", **arguments)


def test_an_unwritable_result_path_fails_before_any_request(candela: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with _dag() as dag:
        CandelaPipelineBatchOperator(
            task_id="b", app=PIPELINE, model=MODEL, prompts=["a"], result_path=f"file://{blocker}/out.jsonl"
        )
    before = candela.stats()["requests_total"]
    dr = run_dag(dag)
    assert dr.states == {"b": "failed"}
    assert candela.stats()["requests_total"] == before, "no request at all"
