"""The example DAG ``candela_managed_agent``: a ``@task.agent`` task whose tool is a Candela agent, run end to end.

The calling agent's model is pydantic-ai's offline test model, named by a ``pydanticai`` connection (as in
``make demo``); the Candela agent runs on the emulator.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("airflow.providers.common.ai.toolsets.managed_agent", reason="common-ai is not installed")

from airflow.providers.common.ai.managed_agents.base import ManagedAgentRequest

from airflow_provider_candela.testing import CandelaEmulator, run_dag

from .conftest import running

EXAMPLE = Path(__file__).resolve().parents[2] / "example_dags" / "candela_managed_agent.py"
TEST_MODEL_CONNECTION = json.dumps({"conn_type": "pydanticai", "extra": {"model": "test"}})

pytestmark = pytest.mark.e2e


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("candela_managed_agent_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_dag_parses_without_a_request(emulator: CandelaEmulator) -> None:
    dag = load_example().dag

    assert dag.dag_id == "candela_managed_agent"
    assert set(dag.task_ids) == {"brief", "publish"}
    assert emulator.stats()["requests_total"] == 0


def test_a_deep_copy_of_the_task_copies_the_tool_without_its_connections(emulator: CandelaEmulator) -> None:
    """Airflow deep-copies tasks (``partial_subset``, clearing with downstream): the hook is rebuilt, not copied."""
    toolset = load_example().dag.get_task("brief").toolsets[0]
    hook = toolset.client.hook
    hook.agent("default/demo-agent").invoke(ManagedAgentRequest(prompt="warm the hook up"))

    copied = copy.deepcopy(toolset).client.hook

    assert copied is not hook
    assert (copied.candela_conn_id, copied.model, copied.slot_ready_timeout) == (
        hook.candela_conn_id,
        hook.model,
        hook.slot_ready_timeout,
    )
    answer = copied.agent("default/demo-agent").invoke(ManagedAgentRequest(prompt="copied"))
    assert answer.text.startswith("You asked: copied.")
    hook.close()
    copied.close()


def test_the_example_dag_runs_green_and_the_candela_answer_reaches_the_calling_agent(
    airflow_db: Path, emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PYDANTICAI_DEFAULT", TEST_MODEL_CONNECTION)

    result = run_dag(load_example().dag)

    assert result.states == {"brief": "success", "publish": "success"}
    # TestModel's final answer is the JSON of what the tools returned; Airflow 3 reads that XCom back decoded.
    published = result.xcom("publish")
    brief = published if isinstance(published, dict) else json.loads(published)
    assert brief["ask_fund_analyst"].startswith("You asked:")
    assert "This answer comes from the Candela emulator" in brief["ask_fund_analyst"]
    assert emulator.stats()["sessions_started"] == 1
    assert emulator.request_count("POST /session/agent_submit", 200) == 1
    assert running(emulator) == {}
