"""The review on Airflow 3.1 and 3.2: the task defers to the standard provider's ``HITLTrigger`` on a real triggerer.

There ``airflow dags test`` cannot serve a review (the trigger gets no answer from its supervisor), so this test
runs Airflow as a deployment does, in processes of its own over the suite's SQLite database: ``api-server``,
``dag-processor``, ``scheduler`` (LocalExecutor) and ``triggerer``.  One DAG run holds four reviewed prompts; a
person answers them through the REST API (:class:`~airflow_provider_candela.testing.Reviewer`): approve, edit,
reject, and one nobody answers within its ``approval_timeout``.  Candela is the emulator, over real HTTP.
Airflow 3.3+ waits in ``awaiting_input`` instead (``tests/review``).
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_3_PLUS
from airflow_provider_candela.testing import ApiServer, CandelaEmulator, Reviewer, wait_until
from airflow_provider_candela.testing._reviewer import _free_port, auth_env, start_airflow, stop_process_group

pytestmark = [
    pytest.mark.skipif(
        not AIRFLOW_V_3_1_PLUS or AIRFLOW_V_3_3_PLUS, reason="the deferred review is Airflow 3.1's and 3.2's"
    ),
    pytest.mark.usefixtures("airflow_db"),
]

DAG_ID = "candela_review_deferred"
#: What the emulator's pipeline answers to the DAG's prompt.
ANSWER = {"answer": "Processed 4 words: Summarise the changed positions", "word_count": 4}
EDITED = {"answer": "Two positions changed.", "word_count": 3}
DAG_FILE = textwrap.dedent(
    f'''
    import datetime as dt

    from airflow.sdk import DAG
    from pydantic import BaseModel

    from airflow_provider_candela.operators.sessions import CandelaSubmitPipelinePromptOperator


    class Summary(BaseModel):
        answer: str
        word_count: int


    # One task runs at a time (a deferred one does not count): each prompts in a session of its own on the same
    # Candela user, and the slot holds one session.
    with DAG("{DAG_ID}", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, max_active_tasks=1):
        for task_id, options in {{
            "approve": {{}},
            "edit": {{"allow_modifications": True}},
            "reject": {{}},
            "timeout": {{"approval_timeout": dt.timedelta(seconds=3)}},
        }}.items():
            CandelaSubmitPipelinePromptOperator(
                task_id=task_id,
                app="default/demo-pipeline",
                model="default/demo-model",
                prompt="Summarise the changed positions",
                output_type=Summary,
                require_approval=True,
                **options,
            )
    '''
)


@pytest.fixture
def deployment(airflow_db: Path, candela: CandelaEmulator, tmp_path: Path) -> Iterator[Reviewer]:
    """The four Airflow processes over the suite's database, with the DAG above; yields a logged-in reviewer."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    env = {
        **os.environ,
        **auth_env(airflow_db),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # one secret for every process
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW_CONN_CANDELA_DEFAULT": candela.connection_json(),
    }
    server = ApiServer.start(env)
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{server.url}/execution/"
    processes = []
    try:
        for command in (["dag-processor"], ["scheduler"], ["triggerer", "--skip-serve-logs"]):
            processes.append(start_airflow(command, env, tmp_path / f"{command[0]}.log"))
        yield server.reviewer()
    finally:
        for process in processes:
            stop_process_group(process, term_wait=30)
        server.stop()


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in folder.glob("*.log"))


def _task_states(reviewer: Reviewer, run_id: str) -> dict[str, str]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    return {ti["task_id"]: ti["state"] for ti in reviewer.call("GET", path)["task_instances"]}


def _xcom(reviewer: Reviewer, run_id: str, task_id: str, key: str = "return_value") -> Any:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}?deserialize=true"
    value = reviewer.call("GET", path)["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_approve_edit_reject_and_timeout_on_a_real_scheduler_and_triggerer(
    deployment: Reviewer, candela: CandelaEmulator, tmp_path: Path, airflow_db: Path
) -> None:
    reviewer = deployment
    try:
        wait_until(lambda: _parsed(reviewer), timeout=180, interval=0.5)
        run_id = reviewer.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
        answers = {"approve": ("Approve", None), "edit": ("Approve", {"answer": EDITED}), "reject": ("Reject", None)}
        seen: dict[str, dict[str, Any]] = {}
        for task_id, (option, params) in answers.items():
            review = reviewer.wait_for(task_id, dag_id=DAG_ID, timeout=240)
            states = _task_states(reviewer, run_id)
            assert states[task_id] == "deferred", f"the task waits deferred for its review: {states}"
            # Airflow 3.1/3.2 fail a deferred task whose trigger fires before the scheduler has read the
            # executor's event of the deferring try (apache/airflow#66374): a person answers later than that.
            wait_until(lambda task=task_id: _defer_exit_read(tmp_path / "scheduler.log", task), timeout=120)
            seen[task_id] = review
            reviewer.respond(review, option, params)

        def finished() -> str | None:
            state = reviewer.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        assert wait_until(finished, timeout=240, interval=0.5) == "failed", "a rejected review fails its task"
        assert _task_states(reviewer, run_id) == {
            "approve": "success",
            "edit": "success",
            "reject": "failed",
            "timeout": "failed",
        }
        assert "Summarise the changed positions" in seen["approve"]["body"], "the review shows the prompt"
        assert _xcom(reviewer, run_id, "approve") == ANSWER
        assert _xcom(reviewer, run_id, "edit") == EDITED, "the reviewer's edit is the task's result"
        decisions = {task: _xcom(reviewer, run_id, task, key="review") for task in ("approve", "edit", "reject")}
        assert decisions["approve"]["decision"] == "approved" and decisions["approve"]["edited"] is False
        assert decisions["edit"]["decision"] == "approved" and decisions["edit"]["edited"] is True
        assert decisions["reject"]["decision"] == "rejected"
        assert decisions["approve"]["responded_by"], "who approved is recorded"
        assert _xcom(reviewer, run_id, "timeout", key="review")["decision"] == "timed_out"
        assert candela.stats()["running_sessions"][candela.username] is None, "no session held during the waits"
    except BaseException:
        print(_logs(tmp_path))
        print("task states:", _task_states(reviewer, run_id) if "run_id" in locals() else "no run")
        print("Candela saw:", candela.stats())
        for log in sorted((airflow_db / "logs").glob(f"dag_id={DAG_ID}/**/*.log")):
            print(f"--- {log}\n{log.read_text(errors='replace')[-12000:]}")
        raise


def _defer_exit_read(log: Path, task_id: str) -> bool:
    """Whether the scheduler has read the executor's event of ``task_id``'s try that deferred."""
    event = f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG_ID}', "
    return f"{event}task_id='{task_id}'" in log.read_text(errors="replace")


def _parsed(reviewer: Reviewer) -> bool:
    """Whether the dag-processor has registered the DAG (the API knows it)."""
    dags = reviewer.call("GET", f"/api/v2/dags?dag_id_pattern={DAG_ID}")["dags"]
    return any(dag["dag_id"] == DAG_ID for dag in dags)
