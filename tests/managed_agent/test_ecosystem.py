"""Candela agents in the common-ai ecosystem itself: ManagedAgentToolset under a pydantic-ai agent, failover groups.

The calling agent's model is pydantic-ai's offline ``TestModel``, which calls every tool it is given (with a
generated prompt) and answers with what the tools returned; the Candela agents run on the emulator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("airflow.providers.common.ai.toolsets.managed_agent", reason="common-ai is not installed")

from airflow.providers.common.ai.exceptions import ManagedAgentInvocationError
from airflow.providers.common.ai.managed_agents.failover import FailoverManagedAgentClient
from airflow.providers.common.ai.toolsets import ManagedAgentToolset
from pydantic_ai import Agent
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.test import TestModel

from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook
from airflow_provider_candela.testing import CandelaEmulator

from .conftest import AGENT, MakeHook, running


def tool_returns(result: Any) -> dict[str, str]:
    """What each tool handed back to the calling model, by tool name."""
    return {
        part.tool_name: part.content
        for message in result.all_messages()
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


def test_a_candela_agent_is_a_tool_of_a_pydantic_ai_agent(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    toolset = ManagedAgentToolset(
        hook.agent(AGENT),
        tool_name="ask_fund_analyst",
        description="Answers questions about our funds from the Candela fund analyst.",
        timeout=60,
    )
    calling_agent = Agent(TestModel(), toolsets=[toolset])

    result = calling_agent.run_sync("Which fund had the largest drawdown last week?")

    answer = tool_returns(result)["ask_fund_analyst"]
    assert answer.startswith("You asked:") and "This answer comes from the Candela emulator" in answer
    # TestModel ends the run with the tools' answers: the Candela agent's reached the calling agent.
    assert json.loads(result.output) == {"ask_fund_analyst": answer}
    stats = emulator.stats()
    assert stats["sessions_started"] == 1
    assert emulator.request_count("POST /session/agent_submit", 200) == 1
    assert running(emulator) == {}


def test_two_candela_tools_called_in_one_turn_both_answer(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    emulator.configure(event_delay=0.02)  # long enough for the two calls to overlap
    hook = make_hook()
    toolsets = [ManagedAgentToolset(hook.agent(AGENT), tool_name=name) for name in ("ask_analyst", "ask_reviewer")]
    calling_agent = Agent(TestModel(), toolsets=toolsets)

    result = calling_agent.run_sync("Review the fund report")

    answers = tool_returns(result)
    assert set(answers) == {"ask_analyst", "ask_reviewer"}
    assert all(answer.startswith("You asked:") for answer in answers.values()), answers
    assert emulator.stats()["sessions_started"] == 2
    assert emulator.request_count("POST /session", 409) == 0
    assert running(emulator) == {}


def test_a_failover_group_moves_past_a_connection_with_wrong_credentials(
    make_hook: MakeHook, emulator: CandelaEmulator
) -> None:
    primary = make_hook("candela_primary", password="wrong-password")
    standby = make_hook("candela_standby")
    group = FailoverManagedAgentClient([primary.agent(AGENT), standby.agent(AGENT)])
    calling_agent = Agent(TestModel(), toolsets=[ManagedAgentToolset(group, tool_name="ask_analyst")])

    result = calling_agent.run_sync("What is our exposure to rates?")

    assert tool_returns(result)["ask_analyst"].startswith("You asked:")
    assert group.capabilities.sessions is False and group.capabilities.structured_output is True
    assert emulator.stats()["token_grants"]["password"] == 1, "the standby's grant; the primary's was refused"
    assert emulator.stats()["sessions_started"] == 1
    assert running(emulator) == {}

    # Directly: the primary's failure is terminal (no retry of the task would fix the password).
    from airflow.providers.common.ai.managed_agents.base import ManagedAgentRequest

    with pytest.raises(ManagedAgentInvocationError, match="password"):
        primary.agent(AGENT).invoke(ManagedAgentRequest(prompt="hello"))
