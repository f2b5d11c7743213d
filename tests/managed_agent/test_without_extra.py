"""Without the common-ai extra the provider works as before, and DAG files never pay for the contract.

The child processes hide common-ai's modules (and pydantic-ai) with an import hook, as if the extra were not
installed; only common-ai's provider info stays importable, because Airflow reads it from the installed entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from airflow_provider_candela.testing import CandelaEmulator

EXAMPLE = Path(__file__).resolve().parents[2] / "example_dags" / "candela_managed_agent.py"

HIDE_COMMON_AI = """
import importlib.abc, sys

class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow.providers.common.ai.get_provider_info":
            return None
        if name == "pydantic_ai" or name.startswith(("pydantic_ai.", "airflow.providers.common.ai.")):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, _Hide())
"""


def run_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_operators_sensors_and_the_plain_hook_never_import_the_contract() -> None:
    result = run_child(
        """
        import json, sys
        import airflow_provider_candela.operators.sessions
        import airflow_provider_candela.sensors.sessions
        import airflow_provider_candela.triggers.sessions
        import airflow_provider_candela.hooks.candela
        import airflow_provider_candela.get_provider_info
        loaded = sorted(m for m in sys.modules if m.startswith(("airflow.providers.common.ai", "pydantic_ai")))
        print(json.dumps({"loaded": loaded}))
        """
    )
    # Airflow's provider discovery reads common-ai's provider info; nothing of the contract, nothing of pydantic-ai.
    assert set(result["loaded"]) <= {"airflow.providers.common.ai", "airflow.providers.common.ai.get_provider_info"}


def test_without_common_ai_the_provider_works_the_hook_says_what_to_install_and_the_example_has_no_dag(
    candela_emulator: CandelaEmulator,
) -> None:
    candela_emulator.configure(slot_startup_seconds=0)
    result = run_child(
        HIDE_COMMON_AI
        + """
import json, os
EXAMPLE = os.environ["EXAMPLE"]
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.get_provider_info import get_provider_info

with CandelaHook() as hook:
    hook.ensure_slot(poll_interval=0.01)
    session = hook.start_session("default/demo-agent", "default/demo-model")
    with hook.submit_prompt_to_agent(session.obj_id, "Hello without the extra") as stream:
        text = "".join(event.content for event in stream if event.event_type == "chat")
    hook.stop_session()
try:
    import airflow_provider_candela.hooks.managed_agent
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
else:
    error = None
import runpy
example = runpy.run_path(EXAMPLE)
print(json.dumps({
    "text": text,
    "error": error,
    "provider": get_provider_info()["package-name"],
    "example_defines_a_dag": "dag" in example,
}))
""",
        env={"AIRFLOW_CONN_CANDELA_DEFAULT": candela_emulator.connection_json(), "EXAMPLE": str(EXAMPLE)},
    )
    assert result["text"].startswith("You asked: Hello without the extra.")
    assert result["provider"] == "airflow-provider-candela"
    assert result["error"] is not None
    assert result["error"].startswith("AirflowOptionalProviderFeatureException: CandelaManagedAgentHook needs")
    assert "pip install 'airflow-provider-candela[common-ai]'" in result["error"]
    assert result["example_defines_a_dag"] is False, "example_dags/candela_managed_agent.py needs the extra"
