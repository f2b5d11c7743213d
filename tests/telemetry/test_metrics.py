"""The Candela metrics of a real ``airflow dags test`` run reach a StatsD listener on a loopback UDP port.

Airflow sends them (``[metrics] statsd_on``, tags in InfluxDB form with ``statsd_influxdb_enabled``);
the listener is a plain UDP socket of this test.  The DAG is the deferrable scheduled pipeline example
(a slot that takes a moment to start: the slot wait is timed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_candela.testing import CandelaEmulator

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"


class _StatsD:
    """Every datagram received on a loopback UDP port, split into metric lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines += data.decode("utf-8", "replace").splitlines()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def named(self, prefix: str) -> list[str]:
        return [line for line in self.lines if line.split(",", 1)[0].split(":", 1)[0].endswith(prefix)]


@pytest.fixture
def statsd() -> Iterator[_StatsD]:
    listener = _StatsD()
    yield listener
    listener.close()


def test_a_dag_run_sends_the_candela_metrics(
    airflow_db: Path, candela_emulator: CandelaEmulator, statsd: _StatsD
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

    def tagged(prefix: str, **tags: str) -> list[str]:
        return [line for line in statsd.named(prefix) if all(f"{k}={v}" in line for k, v in tags.items())]

    assert tagged("candela.request", route="POST/session/pipeline_submit", status="200"), statsd.lines[:40]
    assert all(line.endswith("|ms") for line in statsd.named("candela.request")), "a timer"
    assert tagged("candela.token.grants", grant="password")
    assert tagged("candela.session.started", app="default/demo-pipeline")
    assert tagged("candela.session.stopped")
    assert tagged("candela.prompt", kind="pipeline", outcome="success")
    assert tagged("candela.slot.wait", deferred="true"), "the deferred slot wait is timed, by the trigger"
    assert statsd.named("candela.slot.wait")[0].endswith("|ms")
    secrets = [candela_emulator.password, json.loads(candela_emulator.connection_json())["extra"]["client_secret"]]
    assert not [s for s in secrets if any(s in line for line in statsd.lines)], "no secret in any metric"
