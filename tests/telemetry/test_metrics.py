"""The Candela metrics of a real ``airflow dags test`` run reach a StatsD listener on a loopback UDP port.

Airflow sends them (``[metrics] statsd_on``, tags in InfluxDB form with ``statsd_influxdb_enabled``);
the listener is ``airflow_provider_candela.testing.StatsdListener``.  The DAG is the deferrable scheduled
pipeline example (a slot that takes a moment to start: the slot wait is timed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_candela.testing import CandelaEmulator, StatsdListener

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


def test_a_dag_run_sends_the_candela_metrics(
    airflow_db: Path, candela_emulator: CandelaEmulator, statsd: StatsdListener
) -> None:
    candela_emulator.configure(slot_startup_seconds=1.0)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW_CONN_CANDELA_DEFAULT": candela_emulator.connection_json(),
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    }
    dag_id = "candela_scheduled_pipeline_prompt"
    cmd = [str(Path(sys.executable).with_name("airflow")), "dags", "test", dag_id]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    assert statsd.named("candela.request", route="POST/session/pipeline_submit", status="200"), statsd.lines[:40]
    assert all(line.endswith("|ms") for line in statsd.named("candela.request")), "a timer"
    assert statsd.named("candela.token.grants", grant="password")
    assert statsd.named("candela.session.started", app="default/demo-pipeline")
    assert statsd.named("candela.session.stopped")
    assert statsd.named("candela.prompt", kind="pipeline", outcome="success")
    assert statsd.named("candela.slot.wait", deferred="true"), "the deferred slot wait is timed, by the trigger"
    assert statsd.named("candela.slot.wait")[0].endswith("|ms")
    secrets = [candela_emulator.password, json.loads(candela_emulator.connection_json())["extra"]["client_secret"]]
    assert not [s for s in secrets if any(s in line for line in statsd.lines)], "no secret in any metric"
