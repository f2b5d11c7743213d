"""What a task leaves behind when it ends badly: no late-started session, no prompt sent twice, clear errors.

- A start cut off (a task timeout, a managed-agent timeout) while Candela still carries it out: the
  emulator's ``detach`` fault reads the start, then starts the session seconds later although the client
  has gone; the cleanup must catch that session and stop it.
- A one-task prompt whose answer arrived but whose stop failed returns the answer (a retry would send
  the prompt again).
- Two one-task sessions at once on one Candela user replace each other: the error says so.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_candela.exceptions import CandelaTimeoutError
from airflow_provider_candela.operators.sessions import (
    CandelaStartSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import AGENT, MODEL, PIPELINE, START, TALLY, requests_of, running, wait_until


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _run_failing(dag: DAG) -> dict[str, str]:
    """The task states of a run whose task fails by a timeout (Airflow 2.11's dag.test() re-raises it)."""
    try:
        return run_dag(dag).states
    except BaseException as err:
        assert sys.modules["airflow"].__version__.startswith("2.")
        assert type(err).__name__ == "AirflowTaskTimeout"
        return {}


# ------------------------------------------------------------------------------------------------
# a start carried out after the client stopped waiting


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("one_task", [False, True], ids=["start-operator", "one-task-prompt"])
def test_a_start_cut_by_the_task_timeout_and_carried_out_late_is_stopped(
    candela: CandelaEmulator, one_task: bool
) -> None:
    with TALLY.fault(f"execution_timeout during a start carried out late ({'one-task' if one_task else 'start'})"):
        candela.add_fault(match="POST /session", delay=3, detach=True)
        timeout = dt.timedelta(seconds=1)
        with _dag(f"late_start_{one_task}") as dag:
            if one_task:
                CandelaSubmitPipelinePromptOperator(
                    task_id="task", app=PIPELINE, model=MODEL, prompt="Hi", execution_timeout=timeout
                )
            else:
                CandelaStartSessionOperator(task_id="task", app=PIPELINE, model=MODEL, execution_timeout=timeout)
        # failed, not succeeded: the 1 s timeout cut the 3 s start
        assert _run_failing(dag) in ({"task": "failed"}, {})
        stats = candela.stats()
        assert stats["sessions_started"] == 1, "the emulator carried out the start after the timeout"
        assert running(candela) is None, "the late session was stopped"
        assert requests_of(stats, "POST /session/pipeline_submit") == {}


def test_a_managed_agent_timeout_during_a_start_carried_out_late_leaves_no_session(
    candela: CandelaEmulator,
) -> None:
    pytest.importorskip("airflow.providers.common.ai.managed_agents.base", reason="needs the common-ai extra")
    from airflow.providers.common.ai.managed_agents.base import ManagedAgentRequest

    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook

    with TALLY.fault("managed-agent timeout during a start carried out late"):
        candela.add_fault(match="POST /session", delay=3, detach=True)
        hook = CandelaManagedAgentHook(model=MODEL)
        with pytest.raises(CandelaTimeoutError, match="did not answer within 1 s"):
            hook.agent(AGENT).invoke(ManagedAgentRequest(prompt="Hello", timeout=1))
        assert candela.stats()["sessions_started"] == 1
        assert running(candela) is None
        # the next invocation through the same hook works as usual
        assert hook.agent(AGENT).invoke(ManagedAgentRequest(prompt="again", timeout=30)).text
        assert running(candela) is None


def test_a_start_whose_answer_is_lost_but_carried_out_late_is_stopped_by_the_cleanup(
    candela: CandelaEmulator,
) -> None:
    """The hook alone: the start is cancelled mid-flight; stop_session_best_effort catches the late session."""
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        candela.add_fault(match="POST /session", delay=2, detach=True)
        threading.Timer(0.5, hook.cancel, args=("the test cancelled it",)).start()
        with pytest.raises(Exception, match="the test cancelled it"):
            hook.start_session(PIPELINE, MODEL)
        assert running(candela) is None and candela.stats()["sessions_started"] == 0  # not yet
        assert hook.stop_session_best_effort("cleanup after the cancel")
    assert candela.stats()["sessions_started"] == 1
    assert running(candela) is None


# ------------------------------------------------------------------------------------------------
# an answered prompt is never sent again because its cleanup failed


def _failing_stops(candela: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_retries=1`` and the next two stops answer 503: the task's own stop fails."""
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", candela.connection_json(max_retries=1))
    candela.add_fault(match="GET /session/stop", status=503, count=2)


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("kind", ["pipeline-operator", "agent-operator", "pipeline-decorator", "agent-decorator"])
def test_an_answered_one_task_prompt_whose_stop_fails_returns_its_answer(
    candela: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with TALLY.fault(f"the stop after an answered one-task prompt fails ({kind})"):
        with _dag(f"stop_fails_{kind.replace('-', '_')}") as dag:
            if kind == "pipeline-operator":
                CandelaSubmitPipelinePromptOperator(task_id="ask", app=PIPELINE, model=MODEL, prompt="Hi", retries=1)
            elif kind == "agent-operator":
                CandelaSubmitAgentPromptOperator(task_id="ask", app=AGENT, model=MODEL, prompt="Hi", retries=1)
            else:
                decorator = task.candela_pipeline if kind == "pipeline-decorator" else task.candela_agent
                app = PIPELINE if kind == "pipeline-decorator" else AGENT

                @decorator(task_id="ask", app=app, model=MODEL, retries=1)
                def ask() -> str:
                    return "Hi"

                ask()
        _failing_stops(candela, monkeypatch)
        result = run_dag(dag)
        assert result.states == {"ask": "success"}
        answer = result.xcom("ask")
        assert answer["result"] if "pipeline" in kind else answer["response"]
        route = "POST /session/pipeline_submit" if "pipeline" in kind else "POST /session/agent_submit"
        assert sum(requests_of(candela.stats(), route).values()) == 1, "the prompt was sent once"
        assert requests_of(candela.stats(), "GET /session/stop") == {"503": 2}
        # the session it could not stop still runs: the next start with if_session_running="stop" clears it
        assert running(candela) is not None


# ------------------------------------------------------------------------------------------------
# one-task sessions on one Candela user at the same time


_FIRST_AGENT = """
import datetime as dt, json
from airflow.providers.common.compat.sdk import DAG
from airflow_provider_candela.operators.sessions import CandelaSubmitAgentPromptOperator

with DAG("replaced_first", schedule=None, start_date=dt.datetime(2024, 1, 1)):
    op = CandelaSubmitAgentPromptOperator(
        task_id="first", app="default/demo-agent", model="default/demo-model", prompt="One"
    )
try:
    op.execute({})
    print("OUTCOME " + json.dumps("succeeded"))
except Exception as exc:
    print("OUTCOME " + json.dumps(f"{type(exc).__name__}: {exc}"))
"""


def test_parallel_one_task_agents_on_one_user_say_that_another_start_replaced_their_session(
    candela: CandelaEmulator,
) -> None:
    with TALLY.fault("two one-task agent prompts at once on one Candela user"):
        candela.configure(event_delay=0.3, agent_chat_events=20)  # a 6 s answer
        # The first task in a process of its own (as a second worker would run it), the second here.
        first = subprocess.Popen(
            [sys.executable, "-c", _FIRST_AGENT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_until(lambda: candela.request_count("POST /session/agent_submit", 200) == 1, timeout=60)
            with _dag("replaced"):
                second = CandelaSubmitAgentPromptOperator(task_id="second", app=AGENT, model=MODEL, prompt="Two")
            answer = second.execute({})  # starts while the first streams: stops its session (one per user)
            output, _ = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        lines = [line for line in output.splitlines() if line.startswith("OUTCOME ")]
        assert lines, output[-3000:]
        message = json.loads(lines[-1][len("OUTCOME ") :])
        assert message.startswith(("CandelaApiError", "CandelaAmbiguousError")), message
        assert "is no longer running" in message and "replaced it" in message, message
        assert "max_active_tis_per_dag=1" in message and "its own Candela user" in message
        assert answer["response"]
        # the first task's cleanup did not stop the second's session; the second stopped its own
        assert running(candela) is None
        assert candela.stats()["sessions_started"] == 2
