"""``python -m airflow_provider_candela.testing.run_dags``: the tool behind ``make demo``, for DAG authors.

One run over a throw-away folder with three DAG files: a DAG that uses the provider and cleans up after
itself, a DAG that leaves its Candela session running, and a file that fails to import.  The tool must
run both DAGs for real (``airflow dags test``), report their task states and return values, report the
import error and the session left running, exit 1, and leave no process behind; its temporary Airflow home
is kept only with ``--keep``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_3_PLUS
from airflow_provider_candela.testing import wait_until

GOOD_DAG = '''
"""Starts a pipeline session, prompts it, stops it."""
from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.sessions import (
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitPipelinePromptOperator,
)

with DAG(dag_id="rd_good", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    start = CandelaStartSessionOperator(task_id="start", app="default/demo-pipeline", model="default/demo-model")
    prompt = CandelaSubmitPipelinePromptOperator(task_id="prompt", session=start.output, prompt="Hello run_dags")
    stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
    start >> prompt >> stop.as_teardown(setups=start)
'''

LEAKY_DAG = '''
"""Starts a session and never stops it."""
from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator

with DAG(dag_id="rd_leaky", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    CandelaStartSessionOperator(task_id="start", app="default/demo-pipeline", model="default/demo-model")
'''

_MARKER_VAR = "CANDELA_RUN_DAGS_TEST_MARKER"

BROKEN_DAG = '''
"""An Airflow DAG file whose import fails."""
import candela_module_that_does_not_exist  # noqa: F401
'''


ProcessesWithEnv = Callable[[str, str], list[str]]


def _env(marker: str, temp: Path) -> dict[str, str]:
    """run_dags' environment: no Airflow settings, a marker on every process, its own temporary directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env[_MARKER_VAR] = marker
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    return env


@pytest.fixture
def dag_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run-dags-folder"
    folder.mkdir()
    (folder / "good.py").write_text(textwrap.dedent(GOOD_DAG))
    (folder / "leaky.py").write_text(textwrap.dedent(LEAKY_DAG))
    (folder / "broken_dag.py").write_text(textwrap.dedent(BROKEN_DAG))
    return folder


def test_run_dags_reports_results_import_errors_and_leftover_sessions(
    dag_folder: Path, processes_with_env: ProcessesWithEnv
) -> None:
    marker = uuid.uuid4().hex
    temp = dag_folder.parent / "tmp"
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_provider_candela.testing.run_dags", "--keep", str(dag_folder)],
        env=_env(marker, temp),
        cwd=dag_folder.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr

    assert "2 DAG(s): rd_good, rd_leaky" in out
    assert f"FAIL import error in {dag_folder / 'broken_dag.py'}" in out
    assert "candela_module_that_does_not_exist" in out
    # rd_good ran for real: every task succeeded, the start task's XCom is the session's metadata.
    good = out.split("OK   rd_good: success", 1)[1].split("\nOK ", 1)[0]
    for task_id in ("start", "prompt", "stop"):
        assert any(line.split()[:2] == [task_id, "success"] for line in good.splitlines()), good
    assert '{"obj_id":{"scope":"default","identifier":"session-' in good
    assert '"request_id"' in good
    assert "OK   rd_leaky: success" in out
    # What the emulator saw: two sessions started, one still running (rd_leaky's).
    assert "sessions started:  2" in out
    assert "left running:      1 (demo: default/session-" in out
    assert "Emulator stopped; no process left running." in out
    assert "FAILED: 1 DAG file(s) failed to import; Candela session(s) left running for: demo" in out
    kept = Path(out.split("Airflow home(s) and logs kept in ", 1)[1].split()[0])
    assert kept.parent == temp and kept.name.startswith("candela-run-dags-")  # --keep: in $TMPDIR, named in the output
    assert (kept / "home-0" / "run-dags-logs" / "rd_good.log").is_file()
    assert processes_with_env(_MARKER_VAR, marker) == []


def test_run_dags_ctrl_c_leaves_nothing_running(dag_folder: Path, processes_with_env: ProcessesWithEnv) -> None:
    (dag_folder / "leaky.py").unlink()
    (dag_folder / "broken_dag.py").unlink()
    marker = uuid.uuid4().hex
    log = dag_folder.parent / "run_dags.out"
    temp = dag_folder.parent / "tmp"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_candela.testing.run_dags", str(dag_folder)],
            env=_env(marker, temp),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own process group, as a terminal's Ctrl-C would signal
        )

    def dag_started() -> bool:
        assert proc.poll() is None, log.read_text()
        return "airflow dags test rd_good" in log.read_text()

    try:
        wait_until(dag_started, timeout=300, interval=0.1)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert "Interrupted: stopping what is running" in out
    assert "FAILED: interrupted" in out
    # Without --keep the Airflow home goes, also after a failure or an interruption.
    assert "Airflow home(s) and logs deleted; run again with --keep to keep them." in out
    assert [entry.name for entry in temp.iterdir() if entry.name.startswith("candela-run-dags-")] == []
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not processes_with_env(_MARKER_VAR, marker), timeout=10, interval=0.1)
    assert processes_with_env(_MARKER_VAR, marker) == []


@pytest.mark.skipif(
    not AIRFLOW_V_3_1_PLUS or AIRFLOW_V_3_3_PLUS, reason="before 3.3 `airflow dags test` cannot serve a review"
)
def test_run_dags_skips_a_reviewed_dag_before_airflow_3_3_saying_why(tmp_path: Path) -> None:
    folder = tmp_path / "reviewed"
    folder.mkdir()
    example = Path(__file__).resolve().parents[2] / "example_dags" / "candela_reviewed_summary.py"
    (folder / example.name).write_text(example.read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_provider_candela.testing.run_dags", str(folder)],
        env=_env(uuid.uuid4().hex, tmp_path / "tmp"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "SKIP candela_reviewed_summary: a person reviews an answer there (require_approval)" in out
    assert "`airflow dags test` cannot serve a review" in out
    assert "airflow dags test candela_reviewed_summary" not in out, "not run, so it cannot hang"
    assert "All 0 DAG run(s) succeeded. 1 skipped: candela_reviewed_summary." in out
    assert "requests:          0" in out
