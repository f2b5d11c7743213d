"""A common-ai agent that consults a Candela agent as one of its tools.

- ``brief`` is a ``@task.agent`` task (common-ai provider): its model decides when to call the tool
  ``ask_fund_analyst``, which is the Candela agent app ``default/demo-agent``. Each call starts a
  Candela session of the app, streams the answer back to the calling model and stops the session.
- ``publish`` prints the calling agent's final answer (from XCom).

Needs the provider's ``common-ai`` extra (``pip install 'airflow-provider-candela[common-ai]'``);
without it this file defines no DAG. Connections: ``candela_default`` (Candela) and
``pydanticai_default`` (the calling agent's model). ``make demo`` sets the latter to pydantic-ai's
offline test model (``{"conn_type": "pydanticai", "extra": {"model": "test"}}``), which calls every
tool once and answers with what the tools returned; point it at a real model for a real run, and set
``APP``/``MODEL`` below to your Candela agent app and model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

try:
    from airflow.providers.common.ai.toolsets import ManagedAgentToolset

    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook
except ImportError:  # the common-ai extra is not installed
    ManagedAgentToolset = None  # type: ignore[assignment,misc]

APP = "default/demo-agent"
MODEL = "default/demo-model"

if ManagedAgentToolset is not None:
    with DAG(
        dag_id="candela_managed_agent",
        description="A common-ai agent that asks a Candela agent for help.",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        params={
            "question": Param(
                "Which of our funds had the largest drawdown last week, and why?",
                type="string",
                minLength=1,
                description="What the calling agent is asked",
            ),
        },
        tags=["candela", "example", "common-ai"],
    ) as dag:
        # Built at parse time without any request: the hook reads its connection at the first call.
        # [START howto_managed_agent_toolset]
        fund_analyst = ManagedAgentToolset(
            CandelaManagedAgentHook("candela_default", model=MODEL).agent(APP),
            tool_name="ask_fund_analyst",
            description="The Candela fund analyst: answers questions about our funds' holdings and performance.",
            timeout=600,
        )

        @task.agent(
            llm_conn_id="pydanticai_default",
            system_prompt="You write short briefs for the risk team. Ask the fund analyst for facts about our funds.",
            toolsets=[fund_analyst],
        )
        def brief(params: dict[str, Any] | None = None) -> str:
            """The prompt of the calling agent."""
            return str((params or {})["question"])

        # [END howto_managed_agent_toolset]

        @task
        def publish(answer: Any) -> str:
            """Print the calling agent's answer."""
            print(f"Brief: {answer}")
            return str(answer)

        publish(brief())
