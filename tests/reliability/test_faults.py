"""Fault matrix: HTTP errors, lost connections, timeouts, token failures and broken answers, in real task runs.

Each fault is injected into a real task run (``run_dag()``, i.e. ``dag.test()``) or into hook calls.

Each test states the promised outcome (succeeds after a retry, or fails with a clear message) and then
checks the emulator's own record (``/_emulator/stats``): how many sessions were started, whether one is
still running, and how many requests each route received -- nothing lost, nothing duplicated.

The DAG is ``start >> prompt >> stop`` with ``stop`` as the teardown of ``start``, as the example DAGs
are written.  A teardown runs when its setup succeeded; when ``start`` itself fails, the start task stops
whatever its failed call may have started, and the teardown is ``upstream_failed``.  Backoff waits are
shortened (``fast_retries``); ``Retry-After`` is still honoured.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.sessions import (
    CandelaDeleteSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import (
    AGENT,
    MODEL,
    PIPELINE,
    START,
    TALLY,
    RetryObserver,
    requests_of,
    running,
    session_dag,
    wait_until,
)

Emulator = CandelaEmulator
ALL_GREEN = {"start": "success", "prompt": "success", "stop": "success"}
START_FAILED = {"start": "failed", "prompt": "upstream_failed", "stop": "upstream_failed"}


class Run:
    """One ``dag.test()`` run: task states, XComs and everything the tasks logged."""

    def __init__(self, dag: Any, capsys: pytest.CaptureFixture[str]) -> None:
        capsys.readouterr()
        self.result = run_dag(dag)
        captured = capsys.readouterr()
        self.log = captured.out + captured.err
        self.dag_run = self.result.dag_run
        self.states: dict[str, str] = self.result.states
        self.state = self.result.state

    def xcom(self, task_id: str) -> Any:
        return self.result.xcom(task_id)

    def ti(self, task_id: str) -> Any:
        return self.dag_run.get_task_instance(task_id)

    def duration(self, task_id: str) -> float:
        """Seconds the task ran."""
        ti = self.ti(task_id)
        return float((ti.end_date - ti.start_date).total_seconds())


@pytest.fixture
def run(airflow_db: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def go(dag: Any) -> Run:
        return Run(dag, capsys)

    return go


def _use_connection(monkeypatch: pytest.MonkeyPatch, emulator: Emulator, **extra: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", emulator.connection_json(**extra))


def _clean_end(emulator: Emulator, *, started: int) -> dict[str, Any]:
    """Nothing running on the slot, and exactly ``started`` sessions were ever started."""
    stats = emulator.stats()
    assert stats["running_sessions"][emulator.username] is None, "a session was left running"
    assert stats["sessions_started"] == started, stats
    return stats


# ================================================================================================
# 429 and 5xx


def test_429_with_retry_after_in_seconds_on_the_start(candela: Emulator, run: Any) -> None:
    with TALLY.fault("429 Retry-After seconds"):
        candela.add_fault(match="POST /session", status=429, retry_after="1")
        result = run(session_dag("faults_429_seconds"))
        assert result.states == ALL_GREEN
        assert result.duration("start") >= 1.0  # the server's Retry-After was honoured, not the 10 ms backoff
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session") == {"429": 1, "200": 1}
        assert requests_of(stats, "POST /session/pipeline_submit") == {"200": 1}


def test_429_with_retry_after_as_http_date_on_a_prompt(candela: Emulator, run: Any) -> None:
    with TALLY.fault("429 Retry-After HTTP date"):
        with DAG("faults_429_date", schedule=None, start_date=START, catchup=False) as dag:
            start = CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)

            @task
            def arm() -> None:  # just before the prompt: the date is 2-3 s ahead (a whole second) when armed
                when = email.utils.formatdate(math.ceil(time.time()) + 2, usegmt=True)
                candela.add_fault(match="POST /session/pipeline_submit", status=429, retry_after=when)

            prompt = CandelaSubmitPipelinePromptOperator(task_id="prompt", session=start.output, prompt="Go")
            stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
            start >> arm() >> prompt >> stop.as_teardown(setups=start)
        result = run(dag)
        assert result.states == {**ALL_GREEN, "arm": "success"}
        assert result.duration("prompt") >= 1.0  # waited until the date (1 s granularity), not 10 ms
        assert result.xcom("prompt")["metadata"]["request_id"]
        stats = _clean_end(candela, started=1)
        # 429 means "not processed": the one case where a prompt is sent again
        assert requests_of(stats, "POST /session/pipeline_submit") == {"429": 1, "200": 1}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_once_is_survived_without_a_second_session(candela: Emulator, run: Any, status: int) -> None:
    with TALLY.fault(f"HTTP {status} once"):
        candela.add_fault(match="GET /slot/state", status=status)  # a read: retried
        candela.add_fault(match="POST /session", status=status, after=True)  # started, but the answer was lost
        result = run(session_dag(f"faults_{status}_once"))
        assert result.states == ALL_GREEN
        stats = _clean_end(candela, started=1)  # reconciled: the lost start is found, not repeated
        assert requests_of(stats, "POST /session") == {str(status): 1}
        assert requests_of(stats, "GET /slot/state") == {str(status): 1, "200": 1}
        assert result.xcom("start")["created_by"] == candela.username
        assert "was started by it; using that session" in result.log


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_repeatedly_fails_clearly_and_leaves_nothing_running(candela: Emulator, run: Any, status: int) -> None:
    with TALLY.fault(f"HTTP {status} repeatedly"):
        candela.add_fault(match="POST /session", status=status, count=-1)
        result = run(session_dag(f"faults_{status}_repeatedly"))
        assert result.states == START_FAILED
        assert result.state == "failed"
        assert f"Candela failed POST /session ({status}): Injected fault: HTTP {status}." in result.log
        assert "gave up after 6 attempts" in result.log and "max_retries=5" in result.log
        stats = _clean_end(candela, started=0)
        assert requests_of(stats, "POST /session") == {str(status): 6}
        assert "POST /session/pipeline_submit" not in stats["requests"]


def test_5xx_on_a_prompt_is_not_replayed_and_the_teardown_stops_the_session(candela: Emulator, run: Any) -> None:
    with TALLY.fault("HTTP 503 on a prompt"):
        candela.add_fault(match="POST /session/pipeline_submit", status=503)
        result = run(session_dag("faults_prompt_503"))
        assert result.states == {"start": "success", "prompt": "failed", "stop": "success"}
        assert "The prompt may or may not have run; it is not resubmitted automatically" in result.log
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session/pipeline_submit") == {"503": 1}


# ================================================================================================
# transport failures


def test_connection_refused_until_candela_is_back(
    candela: Emulator, run: Any, retries: RetryObserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("connection refused, then back"):
        # A retry window of several seconds: room for the emulator to restart within it.
        monkeypatch.setattr(CandelaHook, "retry_wait_base", 0.2)
        monkeypatch.setattr(CandelaHook, "retry_wait_max", 0.5)
        _use_connection(monkeypatch, candela, max_retries=100)  # a window of ~30 s, to restart in a few
        candela.stop()

        def refused(messages: list[str]) -> bool:
            return sum("Could not reach the Candela token endpoint" in m for m in messages) >= 2

        def restart_once_refused() -> None:
            retries.wait_for(refused, timeout=60)
            candela.start()  # same port, fresh state (as after a server restart)

        helper = threading.Thread(target=restart_once_refused, daemon=True)
        helper.start()
        result = run(session_dag("faults_refused"))
        helper.join(timeout=60)
        assert result.states == ALL_GREEN
        assert refused(retries.messages)
        assert "ConnectionError" in result.log  # the refused attempts are in the task log
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session") == {"200": 1}


def test_connection_reset_on_a_read_and_on_an_ambiguous_start(candela: Emulator, run: Any) -> None:
    with TALLY.fault("connection reset (read, start)"):
        candela.add_fault(match="GET /slot/metadata", drop=True)
        candela.add_fault(match="POST /session", drop=True, after=True)
        result = run(session_dag("faults_reset"))
        assert result.states == ALL_GREEN
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session") == {"dropped": 1}  # reconciled, not sent again
        assert requests_of(stats, "GET /slot/metadata") == {"dropped": 1, "200": 1}


def test_connection_reset_in_the_middle_of_an_agent_stream(candela: Emulator, run: Any) -> None:
    with TALLY.fault("connection reset mid-stream"):
        candela.add_fault(match="POST /session/agent_submit", cut_after_events=2, drop=True)
        result = run(session_dag("faults_reset_stream", app=AGENT))
        assert result.states == {"start": "success", "prompt": "failed", "stop": "success"}
        assert "broke off after 2 events" in result.log
        assert "The prompt was not resubmitted" in result.log
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session/agent_submit") == {"200": 1, "dropped": 1}


def test_read_timeout_on_slow_reads_and_a_slow_start(
    candela: Emulator, run: Any, retries: RetryObserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("read timeout (read, start)"):
        _use_connection(monkeypatch, candela, timeout="5,0.5")
        candela.add_fault(match="GET /slot/state", delay=1.5)
        candela.add_fault(match="POST /session", delay=1.5)
        result = run(session_dag("faults_read_timeout"))
        assert result.states == ALL_GREEN
        assert sum("ReadTimeout" in m for m in retries.messages) == 2
        # The abandoned start never started a session (its client had gone); the retry did.
        _clean_end(candela, started=1)


def test_read_timeout_on_a_prompt_fails_clearly_and_is_not_replayed(
    candela: Emulator, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("read timeout on a prompt"):
        _use_connection(monkeypatch, candela, timeout="5,0.5")
        candela.add_fault(match="POST /session/pipeline_submit", delay=1.5)
        result = run(session_dag("faults_read_timeout_prompt"))
        assert result.states == {"start": "success", "prompt": "failed", "stop": "success"}
        assert "POST /session/pipeline_submit failed after the prompt was sent (ReadTimeout" in result.log
        assert "not resubmitted automatically" in result.log
        # the slow request is answered by the server later; it was the only one
        stats = _wait_for_answer(candela, "POST /session/pipeline_submit")
        assert sum(requests_of(stats, "POST /session/pipeline_submit").values()) == 1
        _clean_end(candela, started=1)


def _wait_for_answer(emulator: Emulator, route: str) -> dict[str, Any]:
    def answered() -> dict[str, Any] | None:
        stats = emulator.stats()
        return stats if requests_of(stats, route) else None

    return wait_until(answered)


# ================================================================================================
# the token endpoint and token expiry


@pytest.mark.parametrize(("status", "extra"), [(429, {"retry_after": "1"}), (500, {"count": 2})])
def test_token_endpoint_failing_then_recovering(
    candela: Emulator, run: Any, status: int, extra: dict[str, Any]
) -> None:
    with TALLY.fault(f"token endpoint {status}"):
        candela.add_fault(match="POST /oauth2/token", status=status, **extra)
        result = run(session_dag(f"faults_token_{status}"))
        assert result.states == ALL_GREEN
        stats = _clean_end(candela, started=1)
        failures = extra.get("count", 1)
        assert requests_of(stats, "POST /oauth2/token") == {str(status): failures, "200": 3}  # one grant per task


def test_token_endpoint_refusing_the_credentials(candela: Emulator, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with TALLY.fault("invalid credentials"):
        connection = json.loads(candela.connection_json())
        connection["password"] = "not-the-password"
        monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", json.dumps(connection))
        result = run(session_dag("faults_bad_credentials"))
        assert result.states == START_FAILED
        assert (
            "refused the password grant (400): invalid_grant: The credentials provided were invalid. "
            "Check login, password and the extras client_id, client_secret and token_url of connection "
            "'candela_default'."
        ) in result.log
        stats = _clean_end(candela, started=0)
        assert stats["requests"] == {"POST /oauth2/token": {"400": 1}}  # not retried, no API call made


def test_token_expiry_between_two_tasks(candela: Emulator, run: Any) -> None:
    with TALLY.fault("token expiry between two tasks"):
        with DAG("faults_expiry_between_tasks", schedule=None, start_date=START, catchup=False) as dag:
            start = CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)

            @task
            def expire() -> None:
                candela.expire_tokens()

            prompt = CandelaSubmitPipelinePromptOperator(task_id="prompt", session=start.output, prompt="Go")
            stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
            start >> expire() >> prompt >> stop.as_teardown(setups=start)
        result = run(dag)
        assert result.states == {**ALL_GREEN, "expire": "success"}
        stats = _clean_end(candela, started=1)
        # Each task authenticates for itself: the token of an earlier task is never reused.
        assert stats["token_grants"] == {"password": 3, "refresh": 0}
        assert not any("401" in by_status for by_status in stats["requests"].values())


def test_token_expiry_between_two_calls_of_one_hook(candela: Emulator) -> None:
    with TALLY.fault("token expiry between two calls"), CandelaHook() as hook:
        hook.ensure_slot(poll_interval=0.01)
        candela.expire_tokens()
        assert hook.get_slot_metadata().assigned_to == candela.username
        stats = candela.stats()
        assert requests_of(stats, "GET /slot/metadata") == {"200": 2, "401": 1}  # ensure_slot's, then 401 + replay
        assert stats["token_grants"] == {"password": 1, "refresh": 1}


def test_token_expiry_in_the_middle_of_a_stream(candela: Emulator, run: Any) -> None:
    """Promise: a stream that has started is read to its end; the next call renews the token."""
    with TALLY.fault("token expiry mid-stream"):
        candela.configure(event_delay=0.1, agent_chat_events=12)
        expired_at: list[float] = []

        def expire_once_streaming() -> None:
            wait_until(lambda: requests_of(candela.stats(), "POST /session/agent_submit"), timeout=60)
            candela.expire_tokens()
            expired_at.append(time.time())

        helper = threading.Thread(target=expire_once_streaming, daemon=True)
        helper.start()
        result = run(session_dag("faults_expiry_mid_stream", app=AGENT, prompt="Tell me about the fund"))
        helper.join(timeout=30)
        assert result.states == ALL_GREEN
        assert result.xcom("prompt")["event_counts"] == {"user": 1, "chat": 12}  # nothing lost
        prompt = result.ti("prompt")
        assert prompt.start_date.timestamp() < expired_at[0] < prompt.end_date.timestamp()
        _clean_end(candela, started=1)

        # The same promise on one hook: the stream goes on, the next call re-authenticates once.
        candela.reset()
        candela.configure(slot_startup_seconds=0)
        with CandelaHook() as hook:
            hook.ensure_slot(poll_interval=0.01)
            session = hook.start_session(AGENT, MODEL)
            stream = hook.submit_prompt_to_agent(session.obj_id, "Tell me about the fund")
            first = next(stream)
            candela.expire_tokens()
            rest = list(stream)
            hook.stop_session()
        assert [first.event_type, *(e.event_type for e in rest)] == ["user"] + ["chat"] * 12
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "GET /session/stop") == {"401": 1, "204": 1}
        assert stats["token_grants"] == {"password": 1, "refresh": 1}


# ================================================================================================
# malformed answers


def test_agent_stream_cut_after_k_events_is_the_end_of_the_answer(candela: Emulator, run: Any) -> None:
    """Promise: a cleanly ended stream is complete (Candela ends an agent answer by ending the body).

    The task returns the K events it received; there is no terminator event to tell a short answer from a cut one.
    """
    with TALLY.fault("stream cut after K events"):
        candela.configure(agent_chat_events=8)
        candela.add_fault(match="POST /session/agent_submit", cut_after_events=3)
        result = run(session_dag("faults_cut_stream", app=AGENT))
        assert result.states == ALL_GREEN
        assert result.xcom("prompt")["event_counts"] == {"user": 1, "chat": 2}
        assert "Agent stream ended: 3 events" in result.log
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session/agent_submit") == {"200": 1}


def test_a_start_answer_that_is_not_json(candela: Emulator, run: Any) -> None:
    with TALLY.fault("not JSON (start)"):
        candela.add_fault(match="POST /session", not_json=True)
        result = run(session_dag("faults_not_json"))
        assert result.states == START_FAILED
        assert "Candela answered POST /session with 200 but the body is not JSON (application/json)" in result.log
        assert "Check that the host of connection 'candela_default' is the Candela API URL" in result.log
        # The server did start a session before its answer was mangled: the start task stopped it.
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session") == {"200": 1}


def test_an_agent_stream_line_that_is_not_json(candela: Emulator, run: Any) -> None:
    with TALLY.fault("not JSON (stream)"):
        candela.add_fault(match="POST /session/agent_submit", not_json=True)
        result = run(session_dag("faults_not_json_stream", app=AGENT))
        assert result.states == {"start": "success", "prompt": "failed", "stop": "success"}
        assert "Line 1 of the agent stream from POST /session/agent_submit is not JSON: 'this line is not json'" in (
            result.log
        )
        _clean_end(candela, started=1)


def test_an_unknown_field_in_every_response_is_tolerated(candela: Emulator, run: Any) -> None:
    with TALLY.fault("unknown field in every response"):
        candela.add_fault(extra_field=True, count=-1)  # every route, the token endpoint and the stream included
        with DAG("faults_extra_field", schedule=None, start_date=START, catchup=False) as dag:
            pipeline = CandelaStartSessionOperator(task_id="start_pipeline", app=PIPELINE, model=MODEL)
            ask = CandelaSubmitPipelinePromptOperator(task_id="ask", session=pipeline.output, prompt="Sum it up")
            exists = CandelaSessionExistsSensor(task_id="exists", session=pipeline.output, poke_interval=0.1)
            agent = CandelaStartSessionOperator(task_id="start_agent", app=AGENT, model=MODEL)
            chat = CandelaSubmitAgentPromptOperator(task_id="chat", session=agent.output, prompt="A table please")
            stop = CandelaStopSessionOperator(task_id="stop", session=agent.output, dispose_slot=True)
            delete = CandelaDeleteSessionOperator(task_id="delete", session=[pipeline.output, agent.output])
            pipeline >> ask >> exists >> agent >> chat >> stop.as_teardown(setups=[pipeline, agent]) >> delete
        result = run(dag)
        assert set(result.states.values()) == {"success"}, result.states
        assert result.xcom("chat")["results"][0]["content_type"] == "table"
        assert result.xcom("exists")["obj_id"] == result.xcom("start_pipeline")["obj_id"]
        assert candela.faults()[0]["remaining"] == -1  # still active: every answer carried the extra field
        stats = _clean_end(candela, started=2)
        assert stats["sessions_stored"] == 0


def test_a_missing_required_field_fails_clearly(candela: Emulator, run: Any) -> None:
    with TALLY.fault("missing required field"):
        candela.add_fault(match="POST /session", missing_field="obj_id")
        result = run(session_dag("faults_missing_field"))
        assert result.states == START_FAILED
        assert (
            "Candela answered POST /session with 200 but not with an ObjectMetadata object: missing field 'obj_id'"
        ) in result.log
        stats = _clean_end(candela, started=1)  # started server-side, then stopped by the failing start task
        assert requests_of(stats, "POST /session") == {"200": 1}


# ================================================================================================
# killed tasks


def test_on_kill_during_a_prompt_stops_the_session(
    candela: Emulator, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_candela.operators.sessions import CandelaSubmitAgentPromptOperator

    with TALLY.fault("task killed (on_kill)"):
        candela.configure(event_delay=0.1, agent_chat_events=30)
        dag = session_dag("faults_on_kill", app=AGENT, teardown=False)
        stopped_at: list[float] = []
        executing: list[Any] = []  # the task object Airflow runs (a copy of the DAG's), as Airflow's kill sees it
        execute = CandelaSubmitAgentPromptOperator.execute

        def recording_execute(self: Any, context: Any) -> Any:
            executing.append(self)
            return execute(self, context)

        monkeypatch.setattr(CandelaSubmitAgentPromptOperator, "execute", recording_execute)

        def kill_once_streaming() -> None:
            wait_until(lambda: requests_of(candela.stats(), "POST /session/agent_submit"), timeout=60)
            assert running(candela) is not None
            killed_at = time.time()
            executing[-1].on_kill()  # what Airflow calls when it kills the task
            # the task's execute, its read cut at once, stops the session as it unwinds
            with contextlib.suppress(AssertionError):
                wait_until(lambda: running(candela) is None, timeout=60)
                stopped_at.append(killed_at)

        helper = threading.Thread(target=kill_once_streaming, daemon=True)
        helper.start()
        result = run(dag)
        helper.join(timeout=30)
        assert stopped_at, "on_kill did not stop the session"
        # The prompt task was still reading its 3 s answer when on_kill was called: on_kill stopped it.
        assert result.ti("prompt").end_date.timestamp() > stopped_at[0]
        assert "Stopped the Candela session of connection 'candela_default' (task 'prompt'" in result.log
        # ... and the killed task failed instead of reading on (or succeeding): its read was abandoned by the kill,
        # not broken off by the stopped session.
        assert result.states["prompt"] == "failed"
        assert "was abandoned after" in result.log, result.log[-3000:]
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "GET /session/stop") == {"204": 1}  # on_kill's (the start found none running)


_KILL_DAG = textwrap.dedent(
    """
    import datetime as dt

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaSubmitAgentPromptOperator,
    )

    with DAG("faults_sigterm", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
        start = CandelaStartSessionOperator(task_id="start", app="default/demo-agent", model="default/demo-model")
        # No stop teardown: only the kill handling can stop this session.
        start >> CandelaSubmitAgentPromptOperator(task_id="prompt", session=start.output, prompt="Talk slowly")

    if __name__ == "__main__":
        dag.test()
    """
)


def test_sigterm_to_the_task_process_stops_its_session(candela: Emulator, airflow_db: Path, tmp_path: Path) -> None:
    with TALLY.fault("task process SIGTERM"):
        candela.configure(event_delay=0.2, agent_chat_events=100)  # a 20 s answer: the kill comes first
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "faults_sigterm.py").write_text(_KILL_DAG)
        env = {
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW_CONN_CANDELA_DEFAULT": candela.connection_json(),
        }
        log = tmp_path / "task.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, str(dags / "faults_sigterm.py")], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_until(lambda: requests_of(candela.stats(), "POST /session/agent_submit"), timeout=120)
            assert running(candela) is not None
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: running(candela) is None, timeout=30)
            still_streaming = process.poll() is None  # the answer had 15+ s to go: the stop came from the kill
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)
        text = log.read_text()
        assert still_streaming, text[-3000:]
        assert "Stopped the Candela session of connection 'candela_default' (task 'prompt'" in text
        stats = _clean_end(candela, started=1)
        assert requests_of(stats, "POST /session/agent_submit") == {"200": 1}
