"""The example DAGs: they parse without touching the network, and each runs green end to end.

Parsing: every file in ``example_dags/`` is loaded into a DagBag while every socket ``connect`` is
recorded, and the emulator's request counter must stay at zero: a DAG file must never open a
connection at parse time (every scheduler loop would pay for it).

Running: each DAG is run in this process with ``dag.test()`` (``run_dag``) against the emulator, then the
emulator's statistics and the task logs say what happened.  ``airflow dags test`` in a process of its own,
exactly what a user and ``make demo`` run, is tried by ``tests/compat/test_run_dags.py`` on every Airflow
version (a subprocess costs about ten seconds of CPU to import Airflow and parse the folder, where the run
itself costs a fraction of one).
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

from airflow_provider_candela.testing import CandelaEmulator, run_dag

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"
EXAMPLE_DAG_IDS = {
    "candela_scheduled_pipeline_prompt",
    "candela_agent_prompt",
    "candela_session_cleanup",
    "candela_taskflow",
    "candela_batch",
}
if AIRFLOW_V_3_1_PLUS:  # the review is Airflow 3.1's human-in-the-loop: one DAG more
    EXAMPLE_DAG_IDS.add("candela_reviewed_summary")
if importlib.util.find_spec("airflow.providers.common.ai") is not None:  # the common-ai extra: one DAG more
    EXAMPLE_DAG_IDS.add("candela_managed_agent")

pytestmark = pytest.mark.e2e


def _dagbag(folder: Path = EXAMPLES) -> Any:
    try:  # Airflow 3 (no example DAGs of Airflow's own: load_examples is off in tests/conftest.py)
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(folder))
    except ImportError:  # Airflow 2.11
        from airflow.models.dagbag import DagBag

        return DagBag(dag_folder=str(folder), include_examples=False)


@pytest.fixture
def recorded_connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Record every outgoing socket connection made while the fixture is active."""
    calls: list[Any] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            calls.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield calls


def test_example_dags_parse_without_errors_or_network(
    candela_emulator: CandelaEmulator, candela_connection: str, recorded_connects: list[Any]
) -> None:
    bag = _dagbag()

    assert bag.import_errors == {}, f"example DAGs failed to import: {bag.import_errors}"
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    assert recorded_connects == [], f"parsing the example DAGs opened connections: {recorded_connects}"
    assert candela_emulator.stats()["requests_total"] == 0


def test_example_dags_stop_their_sessions_in_teardowns() -> None:
    bag = _dagbag()
    for dag_id in ("candela_scheduled_pipeline_prompt", "candela_agent_prompt"):
        dag = bag.dags[dag_id]
        stop = dag.get_task("stop_session")
        assert stop.is_teardown, f"{dag_id}: stop_session must be a teardown"
        assert "start_session" in stop.upstream_task_ids, f"{dag_id}: stop_session must tear down start_session"
        assert dag.get_task("start_session").is_setup


@pytest.fixture
def run_example(
    airflow_db: Path, candela: CandelaEmulator, candela_connection: str, capfd: Any, caplog: Any
) -> Callable[..., str]:
    """``run_example(dag_id, run_conf=None)``: run an example DAG, require every task green, return its logs."""

    def run(dag_id: str, run_conf: dict[str, Any] | None = None) -> str:
        dag = _dagbag(EXAMPLES / f"{dag_id}.py").dags[dag_id]  # parsed afresh: every run starts from the file
        caplog.clear()
        result = run_dag(dag, **({} if run_conf is None else {"run_conf": run_conf}))
        captured = capfd.readouterr()
        output = captured.out + captured.err + caplog.text  # Airflow 3 logs to the console, 2.11 to its loggers
        assert result.state == "success", f"{dag_id}: {result.states}\n{output[-6000:]}"
        assert set(result.states.values()) == {"success"}, result.states
        return output

    return run


def _running(emulator: CandelaEmulator) -> dict[str, Any]:
    return {user: run for user, run in emulator.stats()["running_sessions"].items() if run}


def test_taskflow_runs_green(run_example: Callable[..., str], candela_emulator: CandelaEmulator) -> None:
    output = run_example("candela_taskflow")

    stats = candela_emulator.stats()
    assert stats["sessions_started"] == 2, "the one-task pipeline session, then the shared agent session"
    assert _running(candela_emulator) == {}, "the one-task session and the teardown leave no session running"
    assert stats["requests"]["POST /session/pipeline_submit"] == {"200": 1}
    assert stats["requests"]["POST /session/agent_submit"] == {"200": 2}
    assert "Daily summary (" in output  # the downstream task read the typed answer


def test_batch_runs_green(run_example: Callable[..., str], candela_emulator: CandelaEmulator) -> None:
    output = run_example("candela_batch")

    stats = candela_emulator.stats()
    assert stats["sessions_started"] == 1, "one session for the whole batch"
    assert _running(candela_emulator) == {}, "the batch stopped its session"
    assert stats["requests"]["POST /session/pipeline_submit"] == {"200": 4}, "one prompt per break"
    assert stats["token_grants"]["password"] == 1, "the batch task's one hook (the other tasks call no Candela)"
    assert "4 breaks: {'succeeded': 4}" in output
    assert "4/4 answered: 4 succeeded" in output


def test_scheduled_pipeline_prompt_runs_green(
    run_example: Callable[..., str], candela_emulator: CandelaEmulator
) -> None:
    output = run_example("candela_scheduled_pipeline_prompt")

    stats = candela_emulator.stats()
    assert stats["sessions_started"] == 1
    assert _running(candela_emulator) == {}, "the teardown must leave no session running"
    assert stats["requests"]["POST /session/pipeline_submit"] == {"200": 1}
    assert "Pipeline answer for request" in output  # the downstream task received the answer via XCom


def test_agent_prompt_runs_green_with_streamed_answers_in_the_logs(
    run_example: Callable[..., str], candela_emulator: CandelaEmulator
) -> None:
    output = run_example("candela_agent_prompt")

    stats = candela_emulator.stats()
    assert stats["sessions_started"] == 1
    assert stats["requests"]["POST /session/agent_submit"] == {"200": 3}, "one prompt per mapped task"
    assert _running(candela_emulator) == {}
    assert "[result] table" in output, "the streamed result event is labelled in the task log"
    assert "You asked: Which of our funds had the largest drawdown last week" in output
    assert output.count("Answer ") >= 3, "the report task received every mapped answer"


def test_session_cleanup_deletes_only_what_the_params_say(
    run_example: Callable[..., str], candela_emulator: CandelaEmulator
) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        hook.ensure_slot(timeout=30, poll_interval=0.1)
        for _ in range(2):
            hook.start_session("default/demo-pipeline", "default/demo-model")
            hook.stop_session()
    assert candela_emulator.stats()["sessions_stored"] == 2

    # Defaults: older than 7 days -> the two fresh sessions stay.
    output = run_example("candela_session_cleanup")
    assert "Deleted 0 session version(s)." in output
    assert candela_emulator.stats()["sessions_stored"] == 2

    # Dry run of "older than 0 days": both listed, none deleted.
    output = run_example("candela_session_cleanup", {"older_than_days": 0, "dry_run": True})
    assert "Would delete 2 session version(s)." in output
    assert candela_emulator.stats()["sessions_stored"] == 2

    output = run_example("candela_session_cleanup", {"older_than_days": 0})
    assert "Deleted 2 session version(s)." in output
    assert candela_emulator.stats()["sessions_stored"] == 0
