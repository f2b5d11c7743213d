"""Daily pipeline prompt: start a Candela pipeline session, prompt it for the day, use the answer.

- ``start_session`` (setup) makes sure the user has a ready slot, then starts the pipeline app; it is
  deferrable: while a new slot starts, the wait runs in the triggerer and frees the worker slot.
- ``prompt`` sends a prompt templated with the run's logical date (``{{ ds }}``).
- ``publish`` is an ordinary downstream task that receives the pipeline's JSON answer through XCom.
- ``stop_session`` is the teardown: it stops the session even when the prompt fails.

Runs unchanged against the local emulator or a real Candela deployment: only the
``candela_default`` connection differs.  The app and model are DAG params, so a real deployment
triggers the DAG with its own ids (``scope/identifier`` or ``scope/identifier:version``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_candela.operators.sessions import (
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitPipelinePromptOperator,
)

with DAG(
    dag_id="candela_scheduled_pipeline_prompt",
    description="Every day, ask a Candela pipeline about the day and publish its answer.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Candela runs one session per user: never two runs of this DAG at once.
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "app": Param("default/demo-pipeline", type="string", description="Pipeline app: scope/identifier[:version]"),
        "model": Param("default/demo-model", type="string", description="Model: scope/identifier[:version]"),
    },
    tags=["candela", "example"],
) as dag:
    # [START howto_operator_start_session]
    start = CandelaStartSessionOperator(
        task_id="start_session",
        app="{{ params.app }}",
        model="{{ params.model }}",
        # A slot can take minutes to come up: wait for it in the triggerer, not in a worker slot.
        deferrable=True,
    )
    # [END howto_operator_start_session]

    # [START howto_operator_pipeline_prompt]
    prompt = CandelaSubmitPipelinePromptOperator(
        task_id="prompt",
        session=start.output,
        prompt="Summarise the positions and the notable market moves of {{ ds }} in three bullet points.",
    )
    # [END howto_operator_pipeline_prompt]

    @task
    def publish(answer: dict[str, Any]) -> dict[str, Any]:
        """Stand-in for the downstream use of the answer (a report, a table, a message)."""
        request_id = answer.get("metadata", {}).get("request_id")
        print(f"Pipeline answer for request {request_id}: {answer.get('result')}")
        return {"request_id": request_id, "result": answer.get("result")}

    # [START howto_operator_stop_session]
    stop = CandelaStopSessionOperator(task_id="stop_session", session=start.output)

    published = publish(prompt.output)
    start >> prompt >> published >> stop.as_teardown(setups=start)
    # [END howto_operator_stop_session]
