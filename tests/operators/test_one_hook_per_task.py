"""One hook per task run: each task reads the connection once, makes one token grant, uses one connection.

Every case runs one real task (``dag.test()``) against the emulator and counts, around that run only,
the emulator's password grants and accepted TCP connections.  A deferred task counts its first run, the
triggerer's shared hook and the resumed run: at most three of each.  Also here: ``hook_params`` and a
templated ``candela_conn_id`` reach the task's hook.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.decorators.sessions import candela_agent_task, candela_pipeline_task
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.sessions import (
    CandelaDeleteSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"
_ids = itertools.count()

pytestmark = pytest.mark.usefixtures("airflow_db")


def _started(app: str = PIPELINE) -> dict[str, Any]:
    """A running session (started outside the measured task) as its XCom form."""
    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        hook.stop_session()
        return hook.start_session(app, MODEL).model_dump(mode="json")


def _one_task(candela: Any, build: Callable[[], object]) -> tuple[dict[str, str], dict[str, int]]:
    """Run a DAG of the one task ``build()`` makes; its states and the grants and connections it used."""
    with DAG(f"one_hook_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        build()
    before = candela.stats()
    dr = run_dag(dag)
    after = candela.stats()
    used = {
        "grants": after["token_grants"]["password"] - before["token_grants"]["password"],
        "refreshes": after["token_grants"]["refresh"] - before["token_grants"]["refresh"],
        "connections": after["tcp_connections"] - before["tcp_connections"],
    }
    return dr.states, used


def _prompt_in_a_running_session(op: type[Any], app: str) -> Callable[[], object]:
    session = _started(app)
    return lambda: op(task_id="t", session=session, prompt="Count my words")


def _stop_a_running_session() -> Callable[[], object]:
    session = _started()
    return lambda: CandelaStopSessionOperator(task_id="t", session=session)


def _delete_three_sessions() -> Callable[[], object]:
    sessions = [_started() for _ in range(3)]
    with CandelaHook() as hook:
        hook.stop_session()
    return lambda: CandelaDeleteSessionOperator(task_id="t", session=sessions)


def _pipeline_decorator() -> object:
    @candela_pipeline_task(app=PIPELINE, model=MODEL)
    def t() -> str:
        return "Count my words"

    return t()


def _agent_decorator() -> object:
    @candela_agent_task(app=AGENT, model=MODEL)
    def t() -> str:
        return "Summarise the week"

    return t()


CASES: dict[str, Callable[[], Callable[[], object]]] = {
    "classic start": lambda: (
        lambda: CandelaStartSessionOperator(task_id="t", app=PIPELINE, model=MODEL, if_session_running="stop")
    ),
    "classic pipeline prompt": lambda: _prompt_in_a_running_session(CandelaSubmitPipelinePromptOperator, PIPELINE),
    "classic agent prompt": lambda: _prompt_in_a_running_session(CandelaSubmitAgentPromptOperator, AGENT),
    "classic stop": _stop_a_running_session,
    "delete of three sessions": _delete_three_sessions,
    "one-task pipeline prompt": lambda: (
        lambda: CandelaSubmitPipelinePromptOperator(task_id="t", app=PIPELINE, model=MODEL, prompt="Count my words")
    ),
    "one-task agent prompt": lambda: (
        lambda: CandelaSubmitAgentPromptOperator(task_id="t", app=AGENT, model=MODEL, prompt="Summarise the week")
    ),
    "pipeline decorator": lambda: _pipeline_decorator,
    "agent decorator": lambda: _agent_decorator,
    "sensor, poke mode, three checks": lambda: (
        lambda: CandelaSessionExistsSensor(
            task_id="t", session_id="never", poke_interval=0.05, timeout=0.12, soft_fail=True
        )
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_task_run_makes_one_grant_over_one_connection(candela: Any, case: str) -> None:
    build = CASES[case]()
    states, used = _one_task(candela, build)
    assert set(states.values()) <= {"success", "skipped"}, states
    assert used == {"grants": 1, "refreshes": 0, "connections": 1}, used


def test_a_deferred_one_task_start_uses_at_most_three_hooks(candela: Any) -> None:
    candela.configure(slot_startup_seconds=1.0)  # not ready at the first check: the task defers
    states, used = _one_task(
        candela,
        lambda: CandelaSubmitPipelinePromptOperator(
            task_id="t", app=PIPELINE, model=MODEL, prompt="Count my words", deferrable=True, slot_poll_interval=0.1
        ),
    )
    assert states == {"t": "success"}
    assert candela.stats()["sessions_started"] == 1
    # first run, the triggerer's shared hook, the resumed run
    assert 2 <= used["grants"] <= 3 and used["connections"] <= 3 and used["refreshes"] == 0, used


def test_hook_params_override_the_connection_for_one_task(candela: Any) -> None:
    session = _started()
    candela.add_fault(match="POST /session/pipeline_submit", status=503, count=2)
    with DAG(f"one_hook_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        CandelaSubmitPipelinePromptOperator(
            task_id="t", session=session, prompt="Count my words", hook_params={"max_retries": 0}
        )
    before = candela.stats()["requests"].get("POST /session/pipeline_submit", {})
    dr = run_dag(dag)
    after = candela.stats()["requests"].get("POST /session/pipeline_submit", {})
    assert dr.states == {"t": "failed"}
    assert sum(after.values()) - sum(before.values()) == 1, "max_retries=0: one attempt, no retry"


def test_candela_conn_id_is_templated(candela: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_TEAM_B", candela.connection_json())
    monkeypatch.delenv("AIRFLOW_CONN_CANDELA_DEFAULT")  # only the rendered id can work
    with DAG(
        f"one_hook_{next(_ids)}", schedule=None, start_date=START, catchup=False, params={"conn": "team_b"}
    ) as dag:
        CandelaSubmitPipelinePromptOperator(
            task_id="t",
            app=PIPELINE,
            model=MODEL,
            prompt="Count my words",
            candela_conn_id="candela_{{ params.conn }}",
        )
    dr = run_dag(dag)
    assert dr.states == {"t": "success"}
    assert dr.xcom("t")["result"]["word_count"] == 3
