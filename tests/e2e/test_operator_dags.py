"""Whole DAGs of Candela operators, run with ``dag.test()`` against the emulator.

start >> pipeline prompt >> agent prompt >> stop (teardown) >> delete, checking what each task got
through XCom; and a failing prompt whose session is still stopped by the teardown.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_candela.operators.sessions import (
    CandelaDeleteSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import run_dag

pytestmark = pytest.mark.e2e

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _session_dag(dag_id: str, *, pipeline_prompt: str = "Summarise {{ params.topic }}") -> DAG:
    """A pipeline session and an agent session (Candela runs one session per user at a time)."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, params={"topic": "Q3 flows"}) as dag:
        start_pipeline = CandelaStartSessionOperator(
            task_id="start_pipeline", app="default/demo-pipeline", model="default/demo-model"
        )
        pipeline = CandelaSubmitPipelinePromptOperator(
            task_id="pipeline_prompt", session=start_pipeline.output, prompt=pipeline_prompt
        )
        start_agent = CandelaStartSessionOperator(
            task_id="start_agent",
            app="default/demo-agent:1.0.0",
            model={"scope": "default", "identifier": "demo-model"},
        )
        agent = CandelaSubmitAgentPromptOperator(
            task_id="agent_prompt",
            session=start_agent.output,
            prompt="Turn this into a table: {{ ti.xcom_pull('pipeline_prompt')['metadata']['request_id'] }}",
        )
        stop = CandelaStopSessionOperator(task_id="stop", session=start_agent.output)
        delete = CandelaDeleteSessionOperator(task_id="delete", session=[start_pipeline.output, start_agent.output])

        @task
        def received(pipeline_answer: dict[str, Any], agent_answer: dict[str, Any]) -> dict[str, Any]:
            return {"pipeline": pipeline_answer, "agent": agent_answer}

        start_pipeline >> pipeline >> start_agent >> agent
        agent >> stop.as_teardown(setups=[start_pipeline, start_agent]) >> delete
        received(pipeline.output, agent.output)  # type: ignore[arg-type]
    return dag


@pytest.mark.usefixtures("airflow_db")
def test_start_prompt_prompt_stop_delete_runs_green_and_passes_metadata_through_xcom(candela: Any) -> None:
    dr = run_dag(_session_dag("e2e_candela_sessions"))
    assert set(dr.states.values()) == {"success"}, dr.states
    assert str(getattr(dr.state, "value", dr.state)) == "success"

    pipeline_session = dr.xcom("start_pipeline")
    agent_session = dr.xcom("start_agent")
    for metadata in (pipeline_session, agent_session):
        assert set(metadata) >= {"obj_id", "domain", "created_by", "created_at"}
        assert metadata["created_by"] == candela.username

    # What the downstream tasks received is exactly the start tasks' ObjectMetadata.
    agent_answer = dr.xcom("agent_prompt")
    assert agent_answer["session"] == agent_session["obj_id"]
    assert agent_answer["event_counts"]["user"] == 1
    assert agent_answer["event_counts"]["chat"] >= 1
    assert agent_answer["results"][0]["content_type"] == "table"
    assert agent_answer["response"]
    assert "events" not in agent_answer  # XCom stays small unless asked

    pipeline_answer = dr.xcom("pipeline_prompt")
    assert pipeline_answer["metadata"]["request_id"]
    assert dr.xcom("received") == {"pipeline": pipeline_answer, "agent": agent_answer}

    assert dr.xcom("delete") == [pipeline_session, agent_session]
    stats = candela.stats()
    assert stats["running_sessions"].get(candela.username) is None
    assert stats["sessions_stored"] == 0
    assert stats["sessions_started"] == 2
    # the prompts went to the sessions the start tasks created (the emulator checks the running one)
    assert candela.request_count("POST /session/pipeline_submit", "200") == 1
    assert candela.request_count("POST /session/agent_submit", "200") == 1


@pytest.mark.usefixtures("airflow_db")
def test_a_failing_prompt_still_stops_the_session_through_the_teardown(candela: Any) -> None:
    candela.add_fault(match="POST /session/agent_submit", status=400, body={"detail": "model overloaded"}, count=-1)
    dr = run_dag(_session_dag("e2e_candela_failing_prompt"))
    states = dr.states
    assert states["agent_prompt"] == "failed"
    assert states["stop"] == "success"  # the teardown ran although its upstream failed
    assert states["delete"] == "success"  # downstream of the teardown only: the cleanup goes on
    assert str(getattr(dr.state, "value", dr.state)) == "failed"  # a teardown does not hide the failure
    stats = candela.stats()
    assert stats["running_sessions"].get(candela.username) is None
    assert stats["sessions_started"] == 2
    assert stats["sessions_stored"] == 0
    assert candela.request_count("POST /session/agent_submit", "400") == 1  # failed once, not replayed
    assert candela.request_count("GET /session/stop", "204") >= 1
