"""Daily TaskFlow DAG: a typed one-task pipeline prompt, then agent questions on a shared session.

- ``summarise`` is the whole scheduled pipeline prompt in one task: ``@task.candela_pipeline`` starts a
  session of the pipeline app, sends the prompt the function returns, stops the session (also when
  the prompt fails or the task is killed) and validates the answer's ``result`` into ``DailySummary``;
  XCom holds its JSON form.
- ``report`` is an ordinary downstream task that reads the typed answer.
- ``start_agent`` (setup) and ``stop_agent`` (teardown) frame an agent session shared by two
  ``@task.candela_agent`` prompts; the second reads the first's answer.

Candela runs one session per user, so the agent session starts after the pipeline's one-task session
has stopped.  Runs unchanged against the local emulator or a real Candela deployment: only the
``candela_default`` connection and the app and model params differ.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task
from pydantic import BaseModel

from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator, CandelaStopSessionOperator


class DailySummary(BaseModel):
    """What the pipeline's ``result`` must hold (the fields the emulator's demo pipeline answers with)."""

    answer: str
    word_count: int


with DAG(
    dag_id="candela_taskflow",
    description="Every day, a typed pipeline summary in one task, then two agent questions in one session.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one Candela session per user: never two runs at once
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "pipeline": Param("default/demo-pipeline", type="string", description="Pipeline app: scope/identifier"),
        "agent": Param("default/demo-agent", type="string", description="Agent app: scope/identifier"),
        "model": Param("default/demo-model", type="string", description="Model: scope/identifier[:version]"),
    },
    tags=["candela", "example", "taskflow"],
) as dag:
    # [START howto_decorator_candela_pipeline]
    @task.candela_pipeline(app="{{ params.pipeline }}", model="{{ params.model }}", output_type=DailySummary)
    def summarise(ds: str | None = None) -> str:
        """The function returns the prompt; the task returns the typed answer."""
        return f"Summarise the trades booked on {ds} in three bullet points."

    @task
    def report(summary: dict[str, Any]) -> str:
        """Stand-in for the downstream use of the typed answer."""
        typed = DailySummary.model_validate(summary)
        print(f"Daily summary ({typed.word_count} words): {typed.answer}")
        return typed.answer

    # [END howto_decorator_candela_pipeline]

    # [START howto_decorator_candela_agent]
    start = CandelaStartSessionOperator(task_id="start_agent", app="{{ params.agent }}", model="{{ params.model }}")

    @task.candela_agent(session=start.output)
    def ask_breaks(summary: dict[str, Any]) -> str:
        return f"Give me a table of the breaks behind this summary: {summary['answer']}"

    @task.candela_agent(session=start.output)
    def ask_owner(breaks: dict[str, Any]) -> str:
        return f"Who should look at the {len(breaks['results'])} table(s) of breaks you sent?"

    stop = CandelaStopSessionOperator(task_id="stop_agent", session=start.output)

    summary = summarise()
    breaks = ask_breaks(summary)
    report(summary)
    summary >> start >> breaks >> ask_owner(breaks) >> stop.as_teardown(setups=start)
    # [END howto_decorator_candela_agent]
