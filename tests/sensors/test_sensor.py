"""CandelaSessionExistsSensor in poke, reschedule and deferrable modes, run as real Airflow tasks."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, AirflowSensorTimeout, AirflowSkipException

from airflow_provider_candela.exceptions import CandelaError, CandelaInputError
from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
from airflow_provider_candela.testing import run_dag, wait_until
from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
AGENT = "default/demo-agent"
MODEL = "default/demo-model"


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _start(**kwargs: Any) -> Any:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        hook.stop_session()
        return hook.start_session(AGENT, MODEL, **kwargs)


@pytest.fixture
def trigger_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Record each trigger run (its serialized kwargs and the event it fired)."""
    runs: list[dict[str, Any]] = []
    original = CandelaSessionExistsTrigger.run

    async def recording_run(self: CandelaSessionExistsTrigger) -> AsyncIterator[Any]:
        record: dict[str, Any] = {"kwargs": self.serialize()[1], "events": []}
        runs.append(record)
        async for event in original(self):
            record["events"].append(event.payload)
            yield event

    monkeypatch.setattr(CandelaSessionExistsTrigger, "run", recording_run)
    yield runs


def _in_background(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _child_after(candela: Any, parent: Any, checks: int) -> Any:
    """Start a continuation of ``parent`` (same identifier, version 1.1.0) after ``checks`` existence checks."""

    def run() -> None:
        wait_until(lambda: candela.request_count("GET /sessions/exists", "200") >= checks, 60)
        _start(parent_session=parent)

    return _in_background(run)


@pytest.mark.usefixtures("airflow_db")
def test_poke_mode_returns_the_metadata_of_a_session_started_upstream(candela: Any) -> None:
    with _dag("sensor_poke") as dag:
        start = CandelaStartSessionOperator(task_id="start", app=AGENT, model=MODEL)
        wait = CandelaSessionExistsSensor(task_id="wait", session=start.output, poke_interval=0.2, timeout=30)
        start >> wait
    assert wait.mode == "poke"
    assert not wait.deferrable
    dr = run_dag(dag)
    assert dr.states == {"start": "success", "wait": "success"}
    assert dr.xcom("wait") == dr.xcom("start")


@pytest.mark.usefixtures("airflow_db")
def test_reschedule_mode_waits_for_the_session_to_appear(candela: Any) -> None:
    parent = _start().obj_id
    with _dag("sensor_reschedule") as dag:
        CandelaSessionExistsSensor(
            task_id="wait",
            scope="{{ params.scope }}",
            session_id=parent.identifier,
            version="1.1.0",
            params={"scope": parent.scope},
            mode="reschedule",
            poke_interval=0.5,
            timeout=60,
        )
    thread = _child_after(candela, parent, checks=1)
    dr = run_dag(dag)
    thread.join(10)
    assert dr.states == {"wait": "success"}
    assert dr.xcom("wait")["obj_id"] == {
        "scope": parent.scope,
        "identifier": parent.identifier,
        "version": "1.1.0",
    }
    assert candela.request_count("GET /sessions/exists", "200") >= 2
    assert _reschedules(dr.dag_run, "wait") >= 1  # the worker slot was released between checks


def _reschedules(dag_run: Any, task_id: str) -> int:
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    ti = dag_run.get_task_instance(task_id)
    with create_session() as session:
        query = session.query(TaskReschedule)
        if hasattr(TaskReschedule, "ti_id"):  # Airflow 3
            query = query.filter(TaskReschedule.ti_id == ti.id)
        else:  # Airflow 2
            query = query.filter_by(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)
        return int(query.count())


@pytest.mark.usefixtures("airflow_db")
def test_deferrable_mode_resumes_when_the_session_appears(candela: Any, trigger_runs: list[dict[str, Any]]) -> None:
    parent = _start().obj_id
    with _dag("sensor_deferrable") as dag:
        # [START howto_sensor_deferrable]
        CandelaSessionExistsSensor(
            task_id="wait",
            session=f"{parent.scope}/{parent.identifier}:1.1.0",
            deferrable=True,
            poke_interval=0.2,
            timeout=60,
            hook_params={"timeout": 30, "max_retries": 1},
        )
        # [END howto_sensor_deferrable]
    # one check by the sensor before deferring, then at least one by the trigger
    thread = _child_after(candela, parent, checks=2)
    dr = run_dag(dag)
    thread.join(10)
    assert dr.states == {"wait": "success"}
    [run] = trigger_runs
    assert run["kwargs"]["identifier"] == parent.identifier
    assert run["kwargs"]["version"] == "1.1.0"
    assert run["kwargs"]["hook_params"] == {"timeout": 30, "max_retries": 1}
    assert [e["status"] for e in run["events"]] == ["success"]
    assert dr.xcom("wait") == run["events"][0]["session"]
    assert dr.xcom("wait")["obj_id"]["version"] == "1.1.0"


@pytest.mark.usefixtures("airflow_db")
def test_deferrable_mode_does_not_defer_when_the_session_already_exists(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    started = _start()
    with _dag("sensor_deferrable_exists") as dag:
        CandelaSessionExistsSensor(task_id="wait", session=started.model_dump(mode="json"), deferrable=True)
    dr = run_dag(dag)
    assert dr.states == {"wait": "success"}
    assert trigger_runs == []
    assert dr.xcom("wait") == started.model_dump(mode="json")


@pytest.mark.usefixtures("airflow_db")
def test_deferrable_mode_times_out_cleanly(candela: Any, trigger_runs: list[dict[str, Any]]) -> None:
    with _dag("sensor_deferrable_timeout") as dag:
        hard = CandelaSessionExistsSensor(
            task_id="hard", session_id="never", deferrable=True, poke_interval=0.2, timeout=1
        )
        soft = CandelaSessionExistsSensor(
            task_id="soft", session_id="never", deferrable=True, poke_interval=0.2, timeout=1, soft_fail=True
        )
        hard >> soft
        soft.trigger_rule = "all_done"  # type: ignore[assignment]
    dr = run_dag(dag)
    assert dr.states == {"hard": "failed", "soft": "skipped"}
    assert [[e["status"] for e in run["events"]] for run in trigger_runs] == [["timeout"], ["timeout"]]
    assert "default/never did not appear before the deadline" in trigger_runs[0]["events"][0]["message"]


def test_execute_complete_validates_the_event() -> None:
    with _dag("sensor_events"):
        sensor = CandelaSessionExistsSensor(task_id="wait", session_id="s1")
    session = {"obj_id": {"scope": "default", "identifier": "s1", "version": "1.0.0"}}
    assert sensor.execute_complete({}, {"status": "success", "message": "ok", "session": session}) == session
    with pytest.raises(AirflowSensorTimeout, match="timed out waiting for the Candela session: late"):
        sensor.execute_complete({}, {"status": "timeout", "message": "late"})
    with pytest.raises(CandelaError, match=r"could not check the Candela session: boom.*connection 'candela_default'"):
        sensor.execute_complete({}, {"status": "error", "message": "boom"})
    with pytest.raises(CandelaError, match="unexpected trigger event"):
        sensor.execute_complete({}, {"status": "weird"})
    with pytest.raises(CandelaError, match="unexpected trigger event"):
        sensor.execute_complete({}, None)
    sensor.soft_fail = True
    with pytest.raises(AirflowSkipException):
        sensor.execute_complete({}, {"status": "timeout", "message": "late"})


def test_sensor_arguments_are_validated() -> None:
    with _dag("sensor_args"):
        with pytest.raises(CandelaInputError, match="needs a session"):
            CandelaSessionExistsSensor(task_id="a")
        with pytest.raises(CandelaInputError, match="both `session` and `session_id`"):
            CandelaSessionExistsSensor(task_id="b", session="default/x", session_id="x")
        with pytest.raises(CandelaInputError, match="Invalid `session_id` for task 'c'"):
            CandelaSessionExistsSensor(task_id="c", session_id="bad id")
        with pytest.raises(CandelaInputError, match=r"`version`='2\.0\.0' contradicts the version of `session`"):
            CandelaSessionExistsSensor(task_id="v", session="default/x:1.0.0", version="2.0.0")
        with pytest.raises(CandelaInputError, match="Invalid `candela_conn_id` for task 'e'"):
            CandelaSessionExistsSensor(task_id="e", session_id="x", candela_conn_id=" ")
        with pytest.raises(CandelaInputError, match=r"Invalid `hook_params\['max_retries'\]` for task 'f'"):
            CandelaSessionExistsSensor(task_id="f", session_id="x", hook_params={"max_retries": -1})
        templated = CandelaSessionExistsSensor(
            task_id="d", session="{{ ti.xcom_pull('start') }}", candela_conn_id="{{ params.conn }}"
        )
    assert templated.template_fields == ("candela_conn_id", "session", "session_id", "scope", "version")


def test_identifier_is_a_deprecated_alias_of_session_id() -> None:
    from airflow.exceptions import AirflowProviderDeprecationWarning

    with _dag("sensor_identifier"):
        with pytest.warns(
            AirflowProviderDeprecationWarning, match="`identifier=` .* is deprecated; pass `session_id=`"
        ):
            old = CandelaSessionExistsSensor(task_id="old", identifier="s1", scope="team")
        with (
            pytest.raises(CandelaInputError, match="both `session_id` and its deprecated alias `identifier`"),
            pytest.warns(AirflowProviderDeprecationWarning),
        ):
            CandelaSessionExistsSensor(task_id="both", identifier="s1", session_id="s1")
    assert old.session_id == old.identifier == "s1"
    assert str(old._session_id()) == str(
        CandelaSessionExistsSensor(task_id="new", session_id="s1", scope="team")._session_id()
    )
