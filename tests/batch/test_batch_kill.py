"""A batch task killed mid-batch (a real SIGTERM) resumes: the retry sends only the inputs not yet answered.

The DAG runs in a process with ``dag.test()`` (whose task runner calls ``on_kill`` from its signal
handler, as a worker's does); the second run has the same logical date, so it is the same task instance
(Airflow clears it, as a retry), and finds the first try's state beside ``result_path``.  The emulator's
prompt count proves that no input was sent twice.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela.testing import CandelaEmulator, wait_until

SUBMIT = "POST /session/pipeline_submit"
INPUTS = 12

_DAG = textwrap.dedent(
    """
    import datetime as dt
    import json
    import sys

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator

    with DAG("batch_kill", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
        CandelaPipelineBatchOperator(
            task_id="batch",
            app="default/demo-pipeline",
            model="default/demo-model",
            prompts=[f"prompt number {n}" for n in range(INPUTS)],
            result_path=sys.argv[1],
            fail_on_partial_error=False,
        )

    if __name__ == "__main__":
        import inspect

        when = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)  # the same run (its id from this date) both times
        given = inspect.signature(dag.test).parameters
        if "run_after" in given:  # Airflow 3
            run = dag.test(logical_date=when, run_after=when)
        else:  # Airflow 2.11
            run = dag.test(execution_date=when)
        states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
        print("RESULT " + json.dumps({"run": str(getattr(run.state, "value", run.state)), "tasks": states}))
    """
).replace("INPUTS", str(INPUTS))


def _submits(emulator: CandelaEmulator) -> int:
    return sum(emulator.stats()["requests"].get(SUBMIT, {}).values())


def _in_flight(emulator: CandelaEmulator) -> bool:
    """Whether a request has reached the emulator and is not answered yet (a prompt held for its delay)."""
    stats = emulator.stats()
    answered = sum(sum(by_status.values()) for by_status in stats["requests"].values())
    return bool(stats["requests_total"] > answered)


def _run(tmp_path: Path, emulator: CandelaEmulator, result: str, *, kill_after: int | None) -> dict[str, Any]:
    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    script = dags / "batch_kill.py"
    script.write_text(_DAG)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_CANDELA_DEFAULT": emulator.connection_json(),
    }
    log = tmp_path / f"run-{kill_after}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(script), result], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if kill_after is not None:
            wait_until(lambda: _submits(emulator) >= kill_after, timeout=120)
            wait_until(lambda: _in_flight(emulator))  # inside the next prompt: the server holds it for its delay
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else {"output": log.read_text()[-3000:]}


@pytest.mark.skipif(
    not importlib.metadata.version("apache-airflow").startswith("3."),
    reason="a real kill through dag.test() is Airflow 3's (the resume itself runs on 2.11 in test_batch.py)",
)
@pytest.mark.usefixtures("airflow_db")
def test_a_batch_killed_mid_way_resumes_without_sending_an_input_twice(
    tmp_path: Path, candela: CandelaEmulator
) -> None:
    result = tmp_path / "out" / "breaks.jsonl"
    candela.add_fault(match=SUBMIT, delay=0.4, count=-1)  # each prompt takes 0.4 s: the kill lands inside one
    first = _run(tmp_path, candela, f"file://{result}", kill_after=4)
    assert first.get("tasks") == {"batch": "failed"}, first
    sent_before = _submits(candela)
    assert 4 <= sent_before < INPUTS
    assert candela.stats()["running_sessions"].get("demo") is None, "the killed task stopped its session"

    candela.clear_faults()
    second = _run(tmp_path, candela, f"file://{result}", kill_after=None)
    assert second.get("tasks") == {"batch": "success"}, second
    assert _submits(candela) == INPUTS, "every input sent once, none twice"
    records = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(INPUTS))
    statuses = [r["status"] for r in records]
    assert statuses.count("ambiguous") <= 1, "only the prompt in flight at the kill is ambiguous"
    assert statuses.count("succeeded") + statuses.count("ambiguous") == INPUTS
