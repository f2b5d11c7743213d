"""Deployment test DAG: one long agent prompt, for the test that kills its worker mid-stream.

The deployment test slows the emulator's agent stream down (``event_delay``), triggers this DAG,
waits until ``ask`` is streaming on one Celery worker, and kills that worker (``kill -9`` of its
whole process tree).  ``ask`` has no retries, so it ends ``failed`` once the scheduler sees that its
heartbeats stopped; ``stop_session`` (the teardown, run on the other worker) must then stop the
session that the killed task left running.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.sessions import (
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
)

with DAG(
    dag_id="candela_deploy_slow_agent",
    description="Deployment test: a long agent stream whose worker gets killed.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    tags=["candela", "deployment-test"],
) as dag:
    start = CandelaStartSessionOperator(task_id="start_session", app="default/demo-agent", model="default/demo-model")
    ask = CandelaSubmitAgentPromptOperator(
        task_id="ask",
        session=start.output,
        prompt="Go through every position of the fund one by one and explain its move this week.",
    )
    stop = CandelaStopSessionOperator(task_id="stop_session", session=start.output)
    start >> ask >> stop.as_teardown(setups=start)
