"""A killed task never succeeds and does not wait for its call; no call outlives its deadline; redirects are refused.

Kills are real: SIGTERM to a process running the DAG with ``dag.test()``, whose task runner calls the
operator's ``on_kill`` from its signal handler, as a worker's does.  Slow servers are the emulator
(``event_delay``, delay faults) or, where it cannot produce the fault, a tiny server in this module on a
free loopback port: one that trickles its body a byte at a time, one that redirects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaCancelledError,
    CandelaResponseError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import AGENT, MODEL, PIPELINE, START, TALLY, requests_of, running, wait_until

# ------------------------------------------------------------------------------------------------
# killed tasks: SIGTERM to the process that runs the task

_KILL_DAG = textwrap.dedent(
    """
    import datetime as dt
    import json
    import sys

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaSubmitAgentPromptOperator,
        CandelaSubmitPipelinePromptOperator,
    )

    KIND = sys.argv[1]
    with DAG("kill_" + KIND, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
        app = "default/demo-pipeline" if KIND in ("pipeline", "onetask") else "default/demo-agent"
        if KIND == "onetask":
            CandelaSubmitPipelinePromptOperator(task_id="prompt", app=app, model="default/demo-model", prompt="Hi")
        else:
            start = CandelaStartSessionOperator(task_id="start", app=app, model="default/demo-model")
        if KIND == "pipeline":
            start >> CandelaSubmitPipelinePromptOperator(task_id="prompt", session=start.output, prompt="Slow")
        elif KIND not in ("start", "onetask"):
            start >> CandelaSubmitAgentPromptOperator(task_id="prompt", session=start.output, prompt="Talk")

    if __name__ == "__main__":
        run = dag.test()
        states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
        print("RESULT " + json.dumps({"run": str(getattr(run.state, "value", run.state)), "tasks": states}))
    """
)


#: Seconds a killed task process may take to exit before the test stops it and fails: a hang guard, far above
#: what an exit takes on a busy machine, and far below the answers the tests kill it in (10 minutes).
EXIT_GUARD = 120


def _kill_while(
    tmp_path: Path, kind: str, emulator: CandelaEmulator, busy: Callable[[], bool]
) -> tuple[dict[str, Any], str]:
    """Run the DAG of ``kind`` in a process, SIGTERM it once ``busy()`` (the task is inside its call); (result, output).

    ``result`` has the run's and tasks' states and ``failed_after_kill``: whether the task's failure was logged
    after the signal (the kill failed it).  A process still running :data:`EXIT_GUARD` s after the signal fails
    the test.
    """
    dags = tmp_path / "dags"
    dags.mkdir()
    script = dags / "kill_dag.py"
    script.write_text(_KILL_DAG)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_CANDELA_DEFAULT": emulator.connection_json(),
    }
    log = tmp_path / "task.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(script), kind], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(busy, timeout=120)
        killed_at = time.time()
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=EXIT_GUARD)
        hung = process.poll() is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    text = log.read_text()
    assert not hung, f"the task process still ran {EXIT_GUARD} s after SIGTERM (hang guard):\n{text[-3000:]}"
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :]) if lines else {}
    failed = [line[:27] for line in text.splitlines() if "Task failed with exception" in line]
    if failed:
        result["failed_after_kill"] = dt.datetime.fromisoformat(failed[-1]).timestamp() >= killed_at
    return result, text


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        pytest.param("agent-long", {"event_delay": 0.2, "agent_chat_events": 3000}, id="long-agent-stream"),
        pytest.param("agent-short", {"event_delay": 0.4, "agent_chat_events": 4}, id="short-agent-stream"),
    ],
)
def test_sigterm_during_an_agent_stream_fails_the_task(
    candela: CandelaEmulator, airflow_db: Path, tmp_path: Path, kind: str, config: dict[str, Any]
) -> None:
    with TALLY.fault(f"SIGTERM during an agent stream ({kind})"):
        candela.configure(**config)
        result, text = _kill_while(
            tmp_path, kind, candela, lambda: bool(requests_of(candela.stats(), "POST /session/agent_submit"))
        )
        assert result.pop("failed_after_kill", None) is True, f"the kill did not fail the task:\n{text[-3000:]}"
        assert result == {"run": "failed", "tasks": {"start": "success", "prompt": "failed"}}, text[-3000:]
        assert "Stopped the Candela session of connection 'candela_default' (task 'prompt'" in text
        assert running(candela) is None


def test_sigterm_during_a_pipeline_prompt_fails_the_task(
    candela: CandelaEmulator, airflow_db: Path, tmp_path: Path
) -> None:
    with TALLY.fault("SIGTERM during a pipeline prompt"):
        candela.add_fault(match="POST /session/pipeline_submit", delay=600)  # the answer would take 10 minutes
        result, text = _kill_while(
            tmp_path,
            "pipeline",
            candela,
            lambda: not candela.faults(),  # the delayed request arrived
        )
        assert result.pop("failed_after_kill", None) is True, f"the kill did not fail the task:\n{text[-3000:]}"
        assert result == {"run": "failed", "tasks": {"start": "success", "prompt": "failed"}}, text[-3000:]
        assert running(candela) is None


def test_sigterm_while_waiting_for_a_slot_fails_the_start(
    candela: CandelaEmulator, airflow_db: Path, tmp_path: Path
) -> None:
    with TALLY.fault("SIGTERM while the slot starts"):
        candela.configure(slot_startup_seconds=600)
        result, text = _kill_while(
            tmp_path, "start", candela, lambda: bool(requests_of(candela.stats(), "GET /slot/state"))
        )
        assert result.pop("failed_after_kill", None) is True, f"the kill did not fail the task:\n{text[-3000:]}"
        assert result == {"run": "failed", "tasks": {"start": "failed"}}, text[-3000:]
        stats = candela.stats()
        assert stats["sessions_started"] == 0 and running(candela) is None


@pytest.mark.parametrize(("kind", "task"), [("start", "start"), ("onetask", "prompt")])
def test_sigterm_during_a_start_carried_out_late_leaves_no_session(
    candela: CandelaEmulator, airflow_db: Path, tmp_path: Path, kind: str, task: str
) -> None:
    with TALLY.fault(f"SIGTERM during a start that Candela carries out after the client left ({kind})"):
        # The server reads the start, and starts the session 3 s later whether or not the client still waits.
        candela.add_fault(match="POST /session", delay=3, detach=True)
        result, text = _kill_while(tmp_path, kind, candela, lambda: not candela.faults())
        assert result.get("tasks") == {task: "failed"}, text[-3000:]
        stats = candela.stats()
        assert stats["sessions_started"] == 1, "the emulator did not carry out the late start"
        assert running(candela) is None, text[-3000:]
        assert "was carried out after all: stopping session" in text


def test_cancel_from_another_thread_ends_the_stream(candela: CandelaEmulator) -> None:
    with TALLY.fault("hook cancelled while streaming"):
        candela.configure(event_delay=0.2, agent_chat_events=3000)  # a 10-minute answer
        with CandelaHook() as hook:
            hook.ensure_slot(timeout=10)
            session = hook.start_session(AGENT, MODEL).obj_id
            stream = hook.submit_prompt_to_agent(session, "Talk")
            seen = 0
            with pytest.raises(CandelaCancelledError) as info, stream:
                for _ in stream:
                    seen += 1
                    if seen == 5:  # the kill comes from another thread while this one reads on
                        threading.Thread(target=hook.cancel, args=("task 'prompt' was killed",)).start()
            assert 5 <= seen < 3001, "cut, not read to its end"
            assert f"was abandoned after {seen} events" in str(info.value)
            assert "task 'prompt' was killed" in str(info.value)
            with pytest.raises(CandelaCancelledError):
                hook.user_has_slot()  # a cancelled hook refuses new calls
        with CandelaHook() as other:
            other.stop_session()


def test_a_stopped_session_cuts_its_stream(candela: CandelaEmulator) -> None:
    with TALLY.fault("session stopped while its answer streams"):
        candela.configure(event_delay=0.1, agent_chat_events=300)
        with CandelaHook() as hook, CandelaHook() as stopper:
            hook.ensure_slot(timeout=10)
            session = hook.start_session(AGENT, MODEL).obj_id
            seen = 0
            with pytest.raises(CandelaApiError) as info, hook.submit_prompt_to_agent(session, "Talk") as stream:
                for _ in stream:
                    seen += 1
                    if seen == 5:
                        stopper.stop_session()
            assert 5 <= seen < 301, "cut, not read to its end"
            assert f"broke off after {seen} events" in str(info.value)


# ------------------------------------------------------------------------------------------------
# slow servers: deadlines


class _TinyServer:
    """A loopback HTTP server answering every request with ``handler(path, method, body, send)``."""

    def __init__(self, handler: Callable[[socket.socket, str, str, bytes], None]) -> None:
        self._handler = handler
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.requests: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", 0))
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append((method, path))
                self._handler(conn, method, path, body)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def tiny_server() -> Iterator[Callable[[Callable[[socket.socket, str, str, bytes], None]], _TinyServer]]:
    servers: list[_TinyServer] = []

    def make(handler: Callable[[socket.socket, str, str, bytes], None]) -> _TinyServer:
        servers.append(_TinyServer(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _pat_hook(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> CandelaHook:
    conn = {"conn_type": "candela", "host": url, "extra": {"access_token": "pat-for-tests", **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_TINY", json.dumps(conn))
    return CandelaHook("candela_tiny")


def _trickle(conn: socket.socket, method: str, path: str, body: bytes) -> None:
    payload = b"true" + b" " * 60
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload))
    for byte in payload:
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


def test_a_trickling_body_fails_within_connect_plus_read_timeout(
    tiny_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("server trickles its body (1 byte / 0.5 s)"):
        server = tiny_server(_trickle)  # 64 bytes in 32 s: read to its end, the call would succeed
        hook = _pat_hook(monkeypatch, server.url, timeout="1,1", max_retries=0)
        with pytest.raises(CandelaApiError) as info, hook:
            hook.user_has_slot()
        message = str(info.value)
        assert "no complete answer within 2 s (1 s to connect + 1 s to read bound each attempt)" in message
        assert "trickled its body" in message


def test_a_trickling_agent_line_fails_after_the_read_timeout(tiny_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(conn: socket.socket, method: str, path: str, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
        conn.sendall(b'{"event_type":"user","content":"hi"}\n')
        for byte in b'{"event_type":"chat","content":"' + b"x" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.3)

    with TALLY.fault("server trickles an agent event"):
        server = tiny_server(handler)
        hook = _pat_hook(monkeypatch, server.url, timeout="1,1.5", max_retries=0)
        with hook, pytest.raises(CandelaTimeoutError) as info:
            for _ in hook.submit_prompt_to_agent("default/session-1", "hi"):
                pass
        assert "was cut after 1 events" in str(info.value)
        assert "no event arrived for 1.5 s" in str(info.value)


def test_stream_timeout_bounds_the_whole_agent_answer(
    candela: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("agent answer longer than stream_timeout"):
        candela.configure(event_delay=0.1, agent_chat_events=200)  # 20 s of events, each well within the gap
        monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", candela.connection_json(stream_timeout="2"))
        with CandelaHook() as hook:
            hook.ensure_slot(timeout=10)
            session = hook.start_session(AGENT, MODEL).obj_id
            with pytest.raises(CandelaTimeoutError) as info:
                for _ in hook.submit_prompt_to_agent(session, "Talk"):
                    pass
            assert "took longer than stream_timeout (2 s)" in str(info.value)
            hook.stop_session()


def test_an_empty_agent_answer_is_an_error(candela: CandelaEmulator) -> None:
    with TALLY.fault("agent answers 200 with an empty body"), CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        session = hook.start_session(AGENT, MODEL).obj_id
        candela.add_fault(match="POST /session/agent_submit", status=200, body="")
        with pytest.raises(CandelaResponseError) as info:
            list(hook.submit_prompt_to_agent(session, "Talk"))
        assert "streamed no event" in str(info.value)
        hook.stop_session()


# ------------------------------------------------------------------------------------------------
# redirects


@pytest.mark.parametrize("status", [301, 307, 308])
def test_redirects_are_refused_naming_the_location(
    tiny_server: Any, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    with TALLY.fault(f"{status} redirect to another origin"):
        elsewhere = tiny_server(lambda conn, *_: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrue"))

        def redirect(conn: socket.socket, method: str, path: str, body: bytes) -> None:
            conn.sendall(
                b"HTTP/1.1 %d Moved\r\nLocation: %s%s\r\nContent-Length: 0\r\n\r\n"
                % (status, elsewhere.url.encode(), path.encode())
            )

        server = tiny_server(redirect)
        hook = _pat_hook(monkeypatch, server.url, max_retries=0)
        with hook:
            with pytest.raises(CandelaApiError) as info:
                hook.user_has_slot()
            assert f"answered with {status} redirecting to {elsewhere.url}/slot/user_has_slot" in str(info.value)
            assert "Set the host of connection 'candela_tiny'" in str(info.value)
            with pytest.raises(CandelaApiError):
                hook.submit_pipeline_prompt("default/session-1", "a prompt that must not travel")
        assert elsewhere.requests == [], "a redirect was followed"


# ------------------------------------------------------------------------------------------------
# a start never stops someone's session for nothing


@pytest.mark.usefixtures("airflow_db")
def test_a_mistyped_app_stops_no_running_session(candela: CandelaEmulator) -> None:
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator

    with TALLY.fault("start with a mistyped app while a session runs"):
        with CandelaHook() as hook:
            hook.ensure_slot(timeout=10)
            theirs = hook.start_session(PIPELINE, MODEL).obj_id
        with DAG("typo_start", schedule=None, start_date=START) as dag:
            CandelaStartSessionOperator(task_id="start", app="default/demo-pipelin", model=MODEL)
        run = run_dag(dag)
        assert run.states == {"start": "failed"}
        stats = candela.stats()
        assert requests_of(stats, "GET /session/stop") == {}
        assert running(candela) is not None and running(candela) == theirs.model_dump(mode="json")


@pytest.mark.usefixtures("airflow_db")
def test_a_start_stops_and_retries_only_when_a_session_runs(candela: CandelaEmulator) -> None:
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.sessions import CandelaStartSessionOperator

    with TALLY.fault("start while an earlier try's session runs"):
        with DAG("start_twice", schedule=None, start_date=START) as dag:
            CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)
        first = run_dag(dag).xcom("start")
        assert requests_of(candela.stats(), "GET /session/stop") == {}, "nothing ran: no stop needed"
        second = run_dag(dag).xcom("start")
        stats = candela.stats()
        assert requests_of(stats, "POST /session") == {"200": 2, "409": 1}
        assert requests_of(stats, "GET /session/stop") == {"204": 1}
        assert running(candela) == second["obj_id"] != first["obj_id"]
