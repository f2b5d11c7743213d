"""Deferrable session start: the slot wait runs in the triggerer (``dag.test()`` runs triggers inline)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.exceptions import (
    CandelaError,
    CandelaInputError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.operators.sessions import (
    CandelaStartDevSessionOperator,
    CandelaStartSessionOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import run_dag
from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline"
MODEL = "default/demo-model"
CIRCUIT = {"first": "answer", "nodes": {"answer": {"type": "response", "node_id": "answer", "template": "hi"}}}
DIRECTIVE = {"identity": "an analyst", "purpose": "summarise"}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _start(task_id: str = "start", **kwargs: Any) -> CandelaStartSessionOperator:
    kwargs.setdefault("slot_poll_interval", 0.1)
    kwargs.setdefault("deferrable", True)
    return CandelaStartSessionOperator(task_id=task_id, app=PIPELINE, model=MODEL, **kwargs)


@pytest.fixture
def trigger_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Record each trigger run (its serialized kwargs and the event it fired)."""
    runs: list[dict[str, Any]] = []
    original = CandelaSlotReadyTrigger.run

    async def recording_run(self: CandelaSlotReadyTrigger) -> AsyncIterator[Any]:
        record: dict[str, Any] = {"kwargs": self.serialize()[1], "events": []}
        runs.append(record)
        async for event in original(self):
            record["events"].append(event.payload)
            yield event

    monkeypatch.setattr(CandelaSlotReadyTrigger, "run", recording_run)
    yield runs


def _running(candela: Any) -> Any:
    return candela.stats()["running_sessions"].get(candela.username)


def _slot_id() -> str:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        return hook.get_slot_metadata().slot_id


@pytest.mark.usefixtures("airflow_db")
def test_a_slow_slot_defers_then_the_session_starts_as_without_deferral(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    candela.configure(slot_startup_seconds=3)  # several polls however late the trigger starts
    with _dag("deferred_start_slow_slot") as dag:
        _start()
    dr = run_dag(dag)
    assert dr.states == {"start": "success"}
    [run] = trigger_runs
    assert run["kwargs"]["slot_id"] == _slot_id()
    assert run["kwargs"]["assigned"] is True, "the task assigned the slot: the user had none"
    assert [(e["status"], e["state"]) for e in run["events"]] == [("success", "HOST_READY")]
    metadata = dr.xcom("start")
    assert set(metadata) == {"obj_id", "domain", "created_by", "created_at", "description"}
    running = _running(candela)
    assert running is not None and metadata["obj_id"]["identifier"] == running["identifier"]
    assert candela.stats()["sessions_started"] == 1
    assert candela.request_count("PUT /slot") == 1
    assert candela.request_count("GET /slot/user_has_slot") == 1, "the resumed task trusts the trigger's event"
    # the task checked once before deferring; the trigger polled while the slot started
    assert candela.request_count("GET /slot/state", "200") >= 3


@pytest.mark.usefixtures("airflow_db")
def test_a_dev_session_start_defers_too(candela: Any, trigger_runs: list[dict[str, Any]]) -> None:
    candela.configure(slot_startup_seconds=1.0)
    with _dag("deferred_dev_start") as dag:
        CandelaStartDevSessionOperator(
            task_id="start",
            model=MODEL,
            circuit=CIRCUIT,
            directive=DIRECTIVE,
            deferrable=True,
            slot_poll_interval=0.1,
            hook_params={"timeout": (5, 120), "max_retries": 2},
        )
    dr = run_dag(dag)
    assert dr.states == {"start": "success"}
    assert [[e["status"] for e in run["events"]] for run in trigger_runs] == [["success"]]
    assert trigger_runs[0]["kwargs"]["hook_params"] == {"timeout": [5, 120], "max_retries": 2}
    assert dr.xcom("start")["obj_id"]["identifier"] == _running(candela)["identifier"]


@pytest.mark.usefixtures("airflow_db")
def test_a_ready_slot_does_not_defer(candela: Any, trigger_runs: list[dict[str, Any]]) -> None:
    with _dag("deferred_start_ready_slot") as dag:
        _start()
    dr = run_dag(dag)
    assert dr.states == {"start": "success"}
    assert trigger_runs == []
    assert _running(candela) is not None


@pytest.mark.usefixtures("airflow_db")
def test_a_slot_that_ends_errored_fails_the_task_and_starts_nothing(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    candela.configure(slot_startup_seconds=1.0, slot_start_fails=True)
    with _dag("deferred_start_errored") as dag:
        _start()
    dr = run_dag(dag)
    assert dr.states == {"start": "failed"}
    [run] = trigger_runs
    [event] = run["events"]
    assert (event["status"], event["state"]) == ("failed", "ERRORED")
    assert f"The Candela slot {_slot_id()} went to ERRORED (6)" in event["message"]
    assert candela.stats()["sessions_started"] == 0


def test_an_errored_slot_at_the_first_check_fails_without_deferring(candela: Any) -> None:
    candela.configure(slot_startup_seconds=0, slot_start_fails=True)
    with _dag("deferred_start_errored_at_once"):
        task = _start()
    with pytest.raises(CandelaSlotError, match=r"Task 'start': The Candela slot slot-\w+ went to ERRORED \(6\)"):
        task.execute({})
    assert candela.request_count("POST /session") == 0


@pytest.mark.usefixtures("airflow_db")
def test_the_deadline_fails_the_task_naming_the_slot_and_its_last_state(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    candela.configure(slot_startup_seconds=60)
    with _dag("deferred_start_deadline") as dag:
        _start(slot_ready_timeout=1)
    dr = run_dag(dag)
    assert dr.states == {"start": "failed"}
    [run] = trigger_runs
    [event] = run["events"]
    assert (event["status"], event["state"]) == ("timeout", "START_REQUEST")
    assert (
        f"The Candela slot {_slot_id()} was not ready before the deadline (last state START_REQUEST (0)"
        in (event["message"])
    )
    assert candela.stats()["sessions_started"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_a_retried_task_never_assigns_a_second_slot(candela: Any, trigger_runs: list[dict[str, Any]]) -> None:
    # Try 1 times out while the slot starts; try 2 finds the same slot (ready by then, or deferring again).
    candela.configure(slot_startup_seconds=3)
    with _dag("deferred_start_retried") as dag:
        _start(slot_ready_timeout=1, retries=1, retry_delay=dt.timedelta(seconds=3))
    dr = run_dag(dag)
    assert dr.states == {"start": "success"}
    assert dr.dag_run.get_task_instance("start").try_number == 2
    assert candela.request_count("PUT /slot") == 1, "one slot for both tries"
    assert [run["kwargs"]["assigned"] for run in trigger_runs][:1] == [True]
    assert all(run["kwargs"]["assigned"] is False for run in trigger_runs[1:])
    assert len({run["kwargs"]["slot_id"] for run in trigger_runs}) == 1
    assert candela.stats()["sessions_started"] == 1


def test_execute_complete_fails_clearly_on_each_unsuccessful_event(candela: Any) -> None:
    with _dag("deferred_start_events"):
        task = _start()
    base = {"slot_id": "slot-1", "state": "HOST_STARTING"}
    cases: list[tuple[Any, type[Exception], str]] = [
        ({**base, "status": "failed", "message": "The Candela slot slot-1 went to ERRORED (6)"}, CandelaSlotError, ""),
        ({**base, "status": "timeout", "message": "not ready"}, CandelaTimeoutError, ""),
        ({**base, "status": "error", "message": "boom"}, CandelaError, "Check the connection 'candela_default'"),
        (None, CandelaError, "unexpected trigger event None"),
        ({"status": "done"}, CandelaError, "expected a dict with status error, failed, success, timeout"),
    ]
    for event, error, extra in cases:
        with pytest.raises(error) as info:
            task.execute_complete({}, event)
        if isinstance(event, dict) and "message" in event:
            assert str(info.value).startswith(f"Task 'start': {event['message']}")
        assert extra in str(info.value)
    assert candela.stats()["requests_total"] == 0, "no failed event starts anything"


def test_deferrable_arguments_are_validated() -> None:
    with _dag("deferred_start_arguments"):
        with pytest.raises(CandelaInputError, match=r"`deferrable`.*expected True or False, got 'yes'"):
            _start(task_id="a", deferrable="yes")
        with pytest.raises(CandelaInputError, match=r"`slot_poll_interval`.*expected a positive number of seconds"):
            _start(task_id="b", slot_poll_interval=0)


def test_deferrable_defaults_to_the_operators_default_deferrable_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with _dag("deferred_start_default"):
        assert CandelaStartSessionOperator(task_id="off", app=PIPELINE, model=MODEL).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    with _dag("deferred_start_default_on"):  # read when the task is made, as Airflow's own operators do
        assert CandelaStartSessionOperator(task_id="on", app=PIPELINE, model=MODEL).deferrable is True
        # the default does not apply where a task cannot defer
        no_slot = CandelaStartSessionOperator(task_id="no_slot", app=PIPELINE, model=MODEL, ensure_slot=False)
        assert no_slot.deferrable is False


def test_deferrable_without_ensure_slot_is_an_error_at_parse() -> None:
    with (
        _dag("deferred_without_slot"),
        pytest.raises(CandelaInputError, match=r"deferrable=True and ensure_slot=False"),
    ):
        CandelaStartSessionOperator(task_id="t", app=PIPELINE, model=MODEL, deferrable=True, ensure_slot=False)


@pytest.mark.usefixtures("airflow_db")
def test_a_one_task_prompt_defers_for_its_slot_then_starts_prompts_and_stops(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    candela.configure(slot_startup_seconds=1.5)
    with _dag("deferred_one_task_prompt") as dag:
        CandelaSubmitPipelinePromptOperator(
            task_id="ask", app=PIPELINE, model=MODEL, prompt="Count my words", deferrable=True, slot_poll_interval=0.1
        )
    dr = run_dag(dag)
    assert dr.states == {"ask": "success"}
    [run] = trigger_runs
    assert run["kwargs"]["assigned"] is True
    assert [e["status"] for e in run["events"]] == ["success"]
    assert dr.xcom("ask")["result"]["word_count"] == 3
    assert candela.stats()["sessions_started"] == 1
    assert candela.request_count("POST /session/pipeline_submit", "200") == 1
    assert _running(candela) is None, "the one-task session is stopped after the resumed prompt"


@pytest.mark.usefixtures("airflow_db")
def test_a_one_task_decorator_defers_too_and_its_function_gives_the_prompt_after_the_resume(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    from airflow.providers.common.compat.sdk import task

    candela.configure(slot_startup_seconds=1.5)
    calls: list[str] = []
    with _dag("deferred_one_task_decorator") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL, deferrable=True, slot_poll_interval=0.1)
        def ask(words: str) -> str:
            calls.append(words)  # dag.test runs the task (both of its runs) in this process
            return f"Count {words}"

        ask("these four words")
    dr = run_dag(dag)
    assert dr.states == {"ask": "success"}
    assert [[e["status"] for e in run["events"]] for run in trigger_runs] == [["success"]]
    assert dr.xcom("ask")["result"]["word_count"] == 4
    assert candela.request_count("POST /session/pipeline_submit", "200") == 1
    assert calls == ["these four words"], "the function is called once, after the resume (not before deferring)"
    assert _running(candela) is None


@pytest.mark.usefixtures("airflow_db")
def test_deferrable_is_ignored_by_a_prompt_to_a_running_session(
    candela: Any, trigger_runs: list[dict[str, Any]]
) -> None:
    # e.g. default_args={"deferrable": True} for the whole DAG: the prompt task has no slot to wait for
    with _dag("deferred_running_session_prompt") as dag:
        start = _start()
        CandelaSubmitPipelinePromptOperator(task_id="ask", session=start.output, prompt="hi there", deferrable=True)
    dr = run_dag(dag)
    assert dr.states == {"start": "success", "ask": "success"}
    assert trigger_runs == []
    assert dr.xcom("ask")["result"]["word_count"] == 2
