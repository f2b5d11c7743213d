"""Agent run: one agent session, several prompts (one mapped task per question), answers in the logs.

- ``start_session`` (setup) starts the agent app on the user's slot.
- ``questions`` turns the ``questions`` param into a list; ``ask`` is mapped over it (dynamic task
  mapping), one prompt per question, one at a time (a session answers one prompt at a time).
  Each ``ask`` task log shows the agent's streamed answer as it arrives.
- ``report`` collects the compact answers (response text, results, event counts) from XCom.
- ``stop_session`` is the teardown: the session is stopped even if a prompt fails.

Runs unchanged against the local emulator or a real Candela deployment: only the
``candela_default`` connection (and, for a real deployment, the ``app``/``model`` params) differ.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_candela.operators.sessions import (
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
)

with DAG(
    dag_id="candela_agent_prompt",
    description="Ask a Candela agent a list of questions in one session.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "app": Param("default/demo-agent", type="string", description="Agent app: scope/identifier[:version]"),
        "model": Param("default/demo-model", type="string", description="Model: scope/identifier[:version]"),
        "questions": Param(
            [
                "Which of our funds had the largest drawdown last week?",
                "Show the top five holdings by weight as a table.",
                "Draft a two-sentence note to the risk team about it.",
            ],
            type="array",
            items={"type": "string", "minLength": 1},
            minItems=1,
            description="One agent prompt per item",
        ),
    },
    tags=["candela", "example"],
) as dag:
    start = CandelaStartSessionOperator(
        task_id="start_session",
        app="{{ params.app }}",
        model="{{ params.model }}",
    )

    @task
    def questions(params: dict[str, Any] | None = None) -> list[str]:
        """The prompts to map over (a task, so that the list can come from the run's params)."""
        return list((params or {})["questions"])

    # [START howto_operator_agent_prompt]
    answers = CandelaSubmitAgentPromptOperator.partial(
        task_id="ask",
        session=start.output,
        # One prompt at a time: a Candela session answers prompts in sequence.
        max_active_tis_per_dagrun=1,
    ).expand(prompt=questions())
    # [END howto_operator_agent_prompt]

    @task
    def report(summaries: list[dict[str, Any]]) -> list[str]:
        """Print each answer once more, compactly, and return the response texts."""
        for number, summary in enumerate(summaries, start=1):
            counts = summary["event_counts"]
            print(f"Answer {number}: {summary['response'][:200]!r} ({sum(counts.values())} events)")
        return [summary["response"] for summary in summaries]

    stop = CandelaStopSessionOperator(task_id="stop_session", session=start.output)

    reported = report(answers.output)
    start >> answers >> reported >> stop.as_teardown(setups=start)
