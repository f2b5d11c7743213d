"""Daily client summary that a person approves (or edits) before it is sent on (Airflow 3.1+).

- ``summarise`` is a one-task pipeline prompt (``@task.candela_pipeline``) with a typed answer,
  ``require_approval=True`` and ``allow_modifications=True``: Candela answers, the task stops its session,
  and the answer waits on Airflow's Required Actions page.  The task holds no worker slot and no Candela
  session while it waits (``awaiting_input`` on Airflow 3.3).  Approved, its XCom is Candela's answer or the
  reviewer's edit (checked against ``ClientSummary``); rejected, or not reviewed within four hours, the task
  fails and ``send`` does not run.  The XCom key ``review`` records who decided, when, and whether they edited.
- ``send`` is the downstream task: it only ever sees an approved answer.

``make demo`` answers the review itself through Airflow's REST API (it says so in its output), so the demo
runs unattended.  On a real deployment a person answers it in the UI, or any client through
``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails``.

The review is Airflow 3.1's human-in-the-loop: on older Airflow this file defines no DAG (``require_approval=True``
would fail there when the DAG is parsed, naming the version needed).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import Param, dag, task
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS
from pydantic import BaseModel


class ClientSummary(BaseModel):
    """What the pipeline's ``result`` must hold (the fields the emulator's demo pipeline answers with)."""

    answer: str
    word_count: int


@dag(
    dag_id="candela_reviewed_summary",
    description="A daily client summary from a Candela pipeline, approved or edited by a person before it is sent.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "pipeline": Param("default/demo-pipeline", type="string", description="Pipeline app: scope/identifier"),
        "model": Param("default/demo-model", type="string", description="Model: scope/identifier[:version]"),
    },
    tags=["candela", "example", "review"],
)
def candela_reviewed_summary() -> None:
    # [START howto_review_require_approval]
    @task.candela_pipeline(
        app="{{ params.pipeline }}",
        model="{{ params.model }}",
        output_type=ClientSummary,
        require_approval=True,
        allow_modifications=True,
        approval_timeout=timedelta(hours=4),
        retries=1,
        retry_delay=timedelta(minutes=1),
    )
    def summarise(ds: str | None = None) -> str:
        """The function returns the prompt; the task returns the answer once a person approved it."""
        return f"Summarise for the client the positions that changed on {ds}, in plain words."

    # [END howto_review_require_approval]

    @task
    def send(summary: dict[str, Any]) -> str:
        """Stand-in for sending the approved summary to the client."""
        approved = ClientSummary.model_validate(summary)
        print(f"Sending the approved summary ({approved.word_count} words): {approved.answer}")
        return approved.answer

    send(summarise())


if AIRFLOW_V_3_1_PLUS:
    candela_reviewed_summary()
