"""With tracing off, a Candela call imports nothing of OpenTelemetry (beyond what Airflow itself imported).

Run in a fresh interpreter: the modules present after ``import airflow`` and the hook's import are the
baseline; a real call to the emulator (a token grant, a request) must add no ``opentelemetry`` module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from airflow_provider_candela.testing import CandelaEmulator

_PROBE = """
import json, sys
from airflow_provider_candela.hooks.candela import CandelaHook
before = {name for name in sys.modules if name.startswith("opentelemetry")}
with CandelaHook() as hook:
    hook.user_has_slot()
    tracer = hook.telemetry.tracer
after = {name for name in sys.modules if name.startswith("opentelemetry")}
print("RESULT " + json.dumps({"added": sorted(after - before), "tracer": tracer is not None}))
"""


def _probe(emulator: CandelaEmulator, **env: str) -> dict[str, object]:
    environment = {**os.environ, "AIRFLOW_CONN_CANDELA_DEFAULT": emulator.connection_json(), **env}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result: dict[str, object] = json.loads(line[len("RESULT ") :])
    return result


def test_a_call_with_tracing_off_imports_no_opentelemetry(candela_emulator: CandelaEmulator) -> None:
    result = _probe(candela_emulator, AIRFLOW__TRACES__OTEL_ON="False")
    assert result == {"added": [], "tracer": False}


def test_with_tracing_on_the_hook_uses_the_process_tracer(candela_emulator: CandelaEmulator) -> None:
    result = _probe(candela_emulator, AIRFLOW__TRACES__OTEL_ON="True")
    assert result["tracer"] is True
