#!/usr/bin/env python3
"""The example DAGs on a real Airflow 3.3 deployment: separate processes, Celery, PostgreSQL, Redis.

Run by ``make deployment-test`` (``tests/deployment/run.sh`` installs what it needs first), with the
``.venv-deploy`` interpreter.  Everything runs on loopback, on free ports, in a temporary directory:

* PostgreSQL (Debian's, run as the ``postgres`` user) holds the Airflow metadata DB and the Celery
  result backend; Redis (Debian's) is the Celery broker; the Candela emulator stands in for Candela.
* ``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker``
  processes (``CeleryExecutor``), each with its own log file, each waited on through its health
  (``/api/v2/monitor/health`` heartbeats, Celery ``inspect ping``), never through fixed sleeps.

Scenarios:

1. every example DAG is unpaused and triggered (unpausing also creates their scheduled runs); every
   run must succeed; new slots take 15 s to start, and the first ``start_session`` of
   ``candela_scheduled_pipeline_prompt`` (``deferrable=True``) must be seen ``deferred`` with a
   ``CandelaSlotReadyTrigger`` (slot id, conn id and timing only) and resume to succeed;
2. ``candela_deploy_wait_for_session``: two ``CandelaSessionExistsSensor(deferrable=True)`` tasks, one
   with ``candela_default`` (environment variable), one with ``candela_deploy_db`` (a connection the
   test stores in the metadata DB, so the triggerer must fetch it through the API server), wait for a
   session that the test creates (as another Candela user) only after it saw both tasks ``deferred``
   and their triggers in the ``trigger`` table, running in the triggerer (no credentials in their
   kwargs); the run must succeed and the event log must show each task deferred once;
3. the same DAG again, and the triggerer is restarted while the sensors are deferred: the triggers
   must move to the new triggerer and the run must still succeed;
4. ``candela_deploy_slow_agent``: the worker streaming an agent answer is killed (``kill -9`` of its
   whole process tree) mid-stream; the task must end ``failed`` (no heartbeat), the teardown
   ``stop_session`` must run on the other worker and stop the session, the run must end ``failed``;
   the killed worker is then replaced;
5. the emulator must show no session left running.

Every process the test started is stopped by pid (process group, then any descendant left), also on
failure or on SIGINT/SIGTERM; at the end no process carrying this run's marker and no port it used
may be left.  Options: ``--keep`` keeps the run directory (logs, Airflow home) after a success.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")

EXAMPLE_DAGS = (
    "candela_scheduled_pipeline_prompt",
    "candela_agent_prompt",
    "candela_session_cleanup",
    "candela_taskflow",
)
# Starts sessions of the same Candela user as the other examples: unpaused (its scheduled run) once they are done.
TASKFLOW_DAG = "candela_taskflow"
SENSOR_DAG = "candela_deploy_wait_for_session"
SENSOR_TASKS = ("wait_for_session", "wait_for_session_db_conn")  # candela_default (env) and candela_deploy_db (DB)
DB_CONN_ID = "candela_deploy_db"
SLOW_DAG = "candela_deploy_slow_agent"
ALL_DAGS = (*EXAMPLE_DAGS, SENSOR_DAG, SLOW_DAG)
TRIGGER_CLASSPATH = "airflow_provider_candela.triggers.sessions.CandelaSessionExistsTrigger"
PIPELINE_DAG = "candela_scheduled_pipeline_prompt"  # its start_session is deferrable=True
SLOT_TRIGGER_CLASSPATH = "airflow_provider_candela.triggers.slots.CandelaSlotReadyTrigger"
# A new slot takes this long to come up: the example's first start task must defer while it does.
SLOT_STARTUP_SECONDS = 15
TERMINAL_RUN_STATES = {"success", "failed"}
# A task whose worker died is failed once its heartbeats stop for this long (Airflow's default: 300 s).
TI_HEARTBEAT_TIMEOUT = 30
MARKER_ENV = "CANDELA_DEPLOY_TEST_RUN"
# Every wait ends by this many seconds after the start, whatever its own timeout (the target: < 15 min).
BUDGET = float(os.environ.get("CANDELA_DEPLOY_BUDGET", "840"))

T = TypeVar("T")
START = time.monotonic()


class DeploymentTestError(AssertionError):
    """A check of the deployment test failed (the message says which and what was seen)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP reached the test: stop everything and exit."""


def log(message: str) -> None:
    print(f"[deploy {time.monotonic() - START:6.1f}s] {message}", flush=True)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns a truthy value; raise after ``timeout`` seconds (or at the budget)."""
    deadline = min(time.monotonic() + timeout, START + BUDGET)
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except DeploymentTestError:
            raise
        except Exception as err:
            last_error, value = err, None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise DeploymentTestError(
                f"timed out waiting for {what} (timeout {timeout:.0f} s, budget {BUDGET:.0f} s){detail}"
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def proc_snapshot() -> tuple[dict[int, list[int]], dict[int, int]]:
    """``({parent pid: [child pids]}, {pid: start time})`` of every live process."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            children.setdefault(info[0], []).append(int(entry.name))
            starts[int(entry.name)] = info[1]
    return children, starts


def process_tree(root: int, snapshot: tuple[dict[int, list[int]], dict[int, int]] | None = None) -> dict[int, int]:
    """``{pid: start time}`` of ``root`` and all its live descendants."""
    children, starts = snapshot or proc_snapshot()
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in tree:
            tree[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return tree


def signal_tree(tree: dict[int, int], sig: int) -> None:
    """Send ``sig`` to each process of ``tree`` that is still the same process (pid not reused)."""
    for pid, started in tree.items():
        info = _stat(pid)
        if info is not None and info[1] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def alive(tree: dict[int, int]) -> list[int]:
    return [pid for pid, started in tree.items() if (info := _stat(pid)) is not None and info[1] == started]


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int
    started_at: float
    tree: dict[int, int] = field(default_factory=dict)  # every process seen in its tree

    @property
    def pid(self) -> int:
        return self.popen.pid

    def refresh_tree(self, snapshot: tuple[dict[int, list[int]], dict[int, int]] | None = None) -> dict[int, int]:
        self.tree.update(process_tree(self.pid, snapshot))
        return self.tree


class Processes:
    """Starts services in their own process groups, with a log file each; stops them by pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}
        self.stopped: list[Service] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, user: str | None = None, stop_signal: int = 15
    ) -> Service:
        if name in self.services:
            raise DeploymentTestError(f"{name} is already running")
        log_path = self.log_dir / f"{name}.log"
        suffix = 2
        while log_path.exists():
            log_path, suffix = self.log_dir / f"{name}-{suffix}.log", suffix + 1
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.log_dir,
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        service = Service(name, popen, log_path, stop_signal, time.time())
        self.services[name] = service
        log(f"started {name} (pid {popen.pid}), log {log_path.name}")
        return service

    def check_running(self) -> None:
        """Raise if a service died; also records every process of each service's tree (for the leak check)."""
        snapshot = proc_snapshot()
        for service in self.services.values():
            service.refresh_tree(snapshot)
            if service.popen.poll() is not None:
                raise DeploymentTestError(
                    f"{service.name} (pid {service.pid}) exited with code {service.popen.returncode}; "
                    f"see {service.log_path}:\n{tail(service.log_path)}"
                )

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """Stop a service: its signal to its process group, then SIGKILL to whatever of its tree is left."""
        service = self.services.pop(name)
        self.stopped.append(service)
        tree = service.refresh_tree()
        if service.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, service.stop_signal)
            try:
                service.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop within {timeout:.0f} s of signal {service.stop_signal}: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.popen.wait(10)
        # Descendants in other process groups (Airflow puts each task runner in its own group).
        wait_until_gone(tree, f"the processes of {name}", grace=5.0)
        log(f"stopped {name} (pid {service.pid}, exit code {service.popen.returncode})")

    def kill_tree(self, name: str) -> list[int]:
        """``kill -9`` a service's whole process tree at once (frozen first, so nothing respawns)."""
        service = self.services.pop(name)
        self.stopped.append(service)
        live = process_tree(service.pid)
        signal_tree(live, signal.SIGSTOP)
        live.update(process_tree(service.pid))  # anything forked just before the freeze
        service.tree.update(live)
        signal_tree(live, signal.SIGKILL)
        service.popen.wait(10)
        wait_until_gone(live, f"the processes of {name}", grace=10.0)
        return sorted(live)

    def stop_all(self) -> None:
        for name in reversed(list(self.services)):
            try:
                self.stop(name)
            except Exception as err:
                log(f"stopping {name} failed: {type(err).__name__}: {err}")


def wait_until_gone(tree: dict[int, int], what: str, grace: float) -> None:
    deadline = time.monotonic() + grace
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left := alive(tree):
        log(f"{what}: SIGKILL to {left}")
        signal_tree(tree, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def our_processes(marker: str, workdir: Path) -> list[int]:
    """Pids (other than this one) that carry this run's marker in their environment or run inside its directory.

    Both: a process that renames itself (setproctitle: the API server, Celery, PostgreSQL) may overwrite the
    environment that /proc shows, and a process may change its working directory.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or _stat(int(entry.name)) is None:
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
                continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")).is_relative_to(workdir):
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------------------ HTTP
def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class AirflowApi:
    """The Airflow 3 public REST API with a JWT from the simple auth manager."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.username = username
        self.password = password
        self.token: str | None = None

    def login(self) -> None:
        status, body = http_json(
            "POST", f"{self.base_url}/auth/token", {"username": self.username, "password": self.password}
        )
        if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
            raise DeploymentTestError(f"POST /auth/token answered {status}: {body!r}")
        self.token = body["access_token"]

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)) -> Any:
        if self.token is None:
            self.login()
        status, answer = http_json(
            method, f"{self.base_url}/api/v2{path}", body, {"Authorization": f"Bearer {self.token}"}
        )
        if status == 401:
            self.login()
            status, answer = http_json(
                method, f"{self.base_url}/api/v2{path}", body, {"Authorization": f"Bearer {self.token}"}
            )
        if status not in expect:
            raise DeploymentTestError(f"{method} /api/v2{path} answered {status}: {answer!r}")
        return answer

    def health(self) -> dict[str, Any]:
        status, body = http_json("GET", f"{self.base_url}/api/v2/monitor/health", timeout=5)
        if status != 200 or not isinstance(body, dict):
            raise DeploymentTestError(f"health answered {status}: {body!r}")
        return body

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/dags/{dag_id}/dagRuns?limit=100")
        runs: list[dict[str, Any]] = answer["dag_runs"]
        return runs

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")
        return run

    def tis(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=100")
        tis: list[dict[str, Any]] = answer["task_instances"]
        return tis

    def ti(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        for ti in self.tis(dag_id, run_id):
            if ti["task_id"] == task_id and ti.get("map_index", -1) == -1:
                return ti
        return None

    def events(self, dag_id: str, run_id: str, task_id: str) -> list[str]:
        """The audit log's events of a task (``running``, ``deferred``, ``heartbeat timeout``, ...)."""
        query = urllib.parse.urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "limit": 100})
        answer = self.call("GET", f"/eventLogs?{query}")
        return [entry["event"] for entry in answer["event_logs"]]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, label: str = "manual") -> str:
        run_id = f"deploy_{label}__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
        self.call(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"dag_run_id": run_id, "logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}},
        )
        return run_id


# ------------------------------------------------------------------------------------------ the test
@dataclass
class RunRecord:
    dag_id: str
    run_id: str
    expected: str
    state: str = "?"
    seconds: float | None = None
    note: str = ""


class DeploymentTest:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir()
        self.procs = Processes(self.log_dir)
        self.marker = secrets.token_hex(8)
        os.environ[MARKER_ENV] = self.marker  # every child inherits it: the leak check looks for it
        self.ports: dict[str, int] = {}
        self.checks: list[str] = []
        self.records: list[RunRecord] = []
        self.deferrals: list[str] = []
        self.restarts: list[str] = []
        self.deferred_start = ""  # the run of the example pipeline DAG whose start_session was seen deferred
        self.phases: list[tuple[str, float]] = []
        self.env: dict[str, str] = {}
        self.pg_password = secrets.token_urlsafe(16)
        self.redis_password = secrets.token_urlsafe(16)
        self.api: AirflowApi | None = None
        self.emulator: Any = None
        self.producer_conn_id = "candela_producer"
        self.producer_conn = ""
        self.admin_password = ""

    # -------------------------------------------------------------- bookkeeping
    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise DeploymentTestError(message)
        self.checks.append(message)
        log(f"ok: {message}")

    def phase(self, name: str) -> None:
        self.phases.append((name, time.monotonic()))
        log(f"=== {name}")

    # -------------------------------------------------------------- infrastructure
    def start_postgres(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
        if not bins:
            raise DeploymentTestError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres)")
        bin_dir = bins[-1].parent
        pg_dir = self.workdir / "postgres"
        pg_dir.mkdir(mode=0o700)
        shutil.chown(pg_dir, "postgres", "postgres")
        pwfile = pg_dir / "pwfile"
        pwfile.write_text(self.pg_password + "\n")
        pwfile.chmod(0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        with (self.log_dir / "initdb.log").open("ab") as out:
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(pg_dir / "data"), "-U", "airflow", f"--pwfile={pwfile}",
                 "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"],
                stdout=out, stderr=subprocess.STDOUT, check=True, user="postgres", group="postgres",
                extra_groups=[], cwd=pg_dir, timeout=180,
            )  # fmt: skip
        pwfile.unlink()
        port = self.ports["postgres"] = free_port()
        self.procs.start(
            "postgres",
            [str(bin_dir / "postgres"), "-D", str(pg_dir / "data"), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=300",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", MARKER_ENV: self.marker},
            user="postgres",
            stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for clients to disconnect
        )  # fmt: skip
        import psycopg2

        def connect() -> Any:
            self.procs.check_running()
            return psycopg2.connect(
                host="127.0.0.1", port=port, user="airflow", password=self.pg_password, dbname="postgres",
                connect_timeout=3,
            )  # fmt: skip

        conn = wait_for("PostgreSQL to accept connections", connect, 60, 0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        log(f"PostgreSQL {bin_dir.parent.name} ready on 127.0.0.1:{port} (database airflow)")

    def db(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.ports["postgres"], user="airflow", password=self.pg_password,
            dbname="airflow", connect_timeout=5,
        )  # fmt: skip
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.db()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def start_redis(self) -> None:
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        port = self.ports["redis"] = free_port()
        conf = redis_dir / "redis.conf"
        conf.write_text(
            f'bind 127.0.0.1\nport {port}\nrequirepass {self.redis_password}\nsave ""\nappendonly no\n'
            f'dir {redis_dir}\ndaemonize no\nprotected-mode yes\nlogfile ""\n'
        )
        conf.chmod(0o600)
        self.procs.start("redis", [shutil.which("redis-server") or "redis-server", str(conf)], dict(os.environ))

        def pong() -> bool:
            self.procs.check_running()
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(f"AUTH {self.redis_password}\r\nPING\r\n".encode())
                answer = b""
                while b"PONG" not in answer and len(answer) < 200:
                    chunk = sock.recv(200)
                    if not chunk:
                        break
                    answer += chunk
                return b"+PONG" in answer

        wait_for("Redis to answer PING", pong, 30, 0.2)
        log(f"Redis ready on 127.0.0.1:{port}")

    def start_emulator(self) -> None:
        from airflow_provider_candela.testing import CandelaEmulator

        port = self.ports["emulator"] = free_port()
        emulator = CandelaEmulator(
            port=port, password=secrets.token_urlsafe(12), client_secret=secrets.token_urlsafe(12), access_token=""
        )
        emulator.url = f"http://127.0.0.1:{port}"
        emulator.token_url = f"{emulator.url}/oauth2/token"
        argv = [sys.executable, "-m", "airflow_provider_candela.emulator", "--port", str(port)]
        for flag in ("host", "username", "password", "client_id", "client_secret", "domain"):
            # "--flag=value": a random secret may start with '-', which argparse would take for an option
            argv.append(f"--{flag.replace('_', '-')}={emulator.flags[flag]}")
        argv += ["--access-token", ""]
        self.procs.start("emulator", argv, dict(os.environ))

        def answers() -> bool:
            self.procs.check_running()
            emulator.stats()
            return True

        wait_for("the Candela emulator to answer", answers, 30, 0.2)
        self.emulator = emulator
        producer_password = secrets.token_urlsafe(12)
        emulator.add_user("producer", producer_password)
        self.producer_conn = json.dumps(
            {"conn_type": "candela", "host": emulator.url, "login": "producer", "password": producer_password,
             "extra": emulator.connection_extra()}
        )  # fmt: skip
        log(f"Candela emulator ready on {emulator.url} (users: demo for the DAGs, producer for the test)")

    def airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        home = self.workdir / "airflow"
        home.mkdir()
        dags = self.workdir / "dags"
        dags.mkdir()
        for source in sorted((REPO / "example_dags").glob("*.py")) + sorted((HERE / "dags").glob("*.py")):
            shutil.copy2(source, dags / source.name)
        passwords = home / "simple_auth_manager_passwords.json"
        self.admin_password = secrets.token_urlsafe(16)
        passwords.write_text(json.dumps({"admin": self.admin_password}))
        passwords.chmod(0o600)
        api_port = self.ports["api-server"] = free_port()
        pg = f"airflow:{self.pg_password}@127.0.0.1:{self.ports['postgres']}/airflow"
        settings = {
            "core": {
                "executor": "CeleryExecutor",
                "load_examples": "False",
                "dags_folder": str(dags),
                "fernet_key": Fernet.generate_key().decode(),
                "execution_api_server_url": f"http://127.0.0.1:{api_port}/execution/",
                "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
                "simple_auth_manager_users": "admin:admin",
                "simple_auth_manager_passwords_file": str(passwords),
                "hostname_callable": "candela_deploy_host.hostname",
                "dags_are_paused_at_creation": "True",
            },
            "database": {"sql_alchemy_conn": f"postgresql+psycopg2://{pg}"},
            "celery": {
                "broker_url": f"redis://:{self.redis_password}@127.0.0.1:{self.ports['redis']}/0",
                "result_backend": f"db+postgresql://{pg}",
                "worker_concurrency": "2",
                "sync_parallelism": "1",
            },
            "api": {
                "host": "127.0.0.1",
                "port": str(api_port),
                "base_url": f"http://127.0.0.1:{api_port}",
                "workers": "1",
                "secret_key": secrets.token_urlsafe(32),
            },
            "api_auth": {"jwt_secret": secrets.token_urlsafe(64)},  # >= 64 bytes for HS512
            # Longer than any task of the test: a task still running after this is redelivered by Redis.
            "celery_broker_transport_options": {"visibility_timeout": "7200"},
            "scheduler": {
                "scheduler_heartbeat_sec": "2",
                "scheduler_idle_sleep_time": "0.5",
                "task_instance_heartbeat_timeout": str(TI_HEARTBEAT_TIMEOUT),
                "task_instance_heartbeat_timeout_detection_interval": "5",
                "scheduler_health_check_threshold": "30",
            },
            "triggerer": {"job_heartbeat_sec": "2", "triggerer_health_check_threshold": "30"},
            "dag_processor": {
                "refresh_interval": "5",
                "parsing_processes": "1",
                "min_file_process_interval": "60",
                "bundle_refresh_check_interval": "5",
            },
            "logging": {"base_log_folder": str(home / "logs")},
        }
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
        env.update(
            {
                f"AIRFLOW__{section.upper()}__{key.upper()}": value
                for section, options in settings.items()
                for key, value in options.items()
            }
        )
        env["AIRFLOW_HOME"] = str(home)
        env["AIRFLOW_CONN_CANDELA_DEFAULT"] = self.emulator.connection_json()
        env["AIRFLOW_CONN_" + self.producer_conn_id.upper()] = self.producer_conn
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "support"), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def start_airflow(self) -> AirflowApi:
        self.env = self.airflow_env()
        os.environ.update(self.env)  # the test's own Airflow imports (ORM, Celery app, hook) use the same config
        sys.path.insert(0, str(HERE / "support"))
        log("airflow db migrate")
        with (self.log_dir / "db-migrate.log").open("ab") as out:
            done = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=600, check=False)  # fmt: skip
        if done.returncode != 0:
            raise DeploymentTestError(f"airflow db migrate failed:\n{tail(self.log_dir / 'db-migrate.log')}")
        self.procs.start("api-server", [AIRFLOW, "api-server"], self.env)
        self.procs.start("scheduler", [AIRFLOW, "scheduler"], self.env)
        self.procs.start("dag-processor", [AIRFLOW, "dag-processor"], self.env)
        self.start_triggerer()
        for number in (1, 2):
            self.start_worker(number)
        api = AirflowApi(f"http://127.0.0.1:{self.ports['api-server']}", "admin", self.admin_password)

        def healthy() -> dict[str, Any] | None:
            self.procs.check_running()
            health = api.health()
            components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return health if all(health[c]["status"] == "healthy" for c in components) else None

        health = wait_for("the api-server health endpoint to report every component healthy", healthy, 300, 1)
        self.check(
            True,
            "api-server /api/v2/monitor/health: metadatabase, scheduler, triggerer and dag-processor healthy "
            f"(heartbeats {health['scheduler']['latest_scheduler_heartbeat']}, "
            f"{health['triggerer']['latest_triggerer_heartbeat']}, "
            f"{health['dag_processor']['latest_dag_processor_heartbeat']})",
        )
        for number in (1, 2):
            self.wait_worker(number)
        api.login()
        return api

    def start_triggerer(self) -> Service:
        env = {**self.env, "CANDELA_DEPLOY_HOSTNAME": "candela-triggerer"}
        return self.procs.start("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], env)

    def start_worker(self, number: int) -> Service:
        env = {**self.env, "CANDELA_DEPLOY_HOSTNAME": f"candela-worker-{number}"}
        argv = [AIRFLOW, "celery", "worker", "--concurrency", "2", "--skip-serve-logs",
                "--celery-hostname", f"worker{number}@candela-deploy"]  # fmt: skip
        return self.procs.start(f"worker-{number}", argv, env)

    def wait_worker(self, number: int) -> None:
        from airflow.providers.celery.executors.celery_executor_utils import app

        name = f"worker{number}@candela-deploy"

        def pong() -> bool:
            self.procs.check_running()
            replies = app.control.inspect(destination=[name], timeout=2).ping() or {}
            return replies.get(name, {}).get("ok") == "pong"

        wait_for(f"Celery worker {name} to answer inspect ping", pong, 180, 1)
        self.check(True, f"Celery worker {name} answers inspect ping")

    # -------------------------------------------------------------- helpers on runs
    def wait_dags_parsed(self, api: AirflowApi) -> None:
        def parsed() -> bool:
            self.procs.check_running()
            errors = api.call("GET", "/importErrors")
            if errors["total_entries"]:
                raise DeploymentTestError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)}")
            found = {dag["dag_id"] for dag in api.call("GET", "/dags?limit=100")["dags"]}
            return set(ALL_DAGS) <= found

        wait_for("the dag-processor to parse every DAG", parsed, 180, 1)
        self.check(True, f"all {len(ALL_DAGS)} DAGs parsed by the dag-processor, no import errors")

    def wait_run(self, api: AirflowApi, dag_id: str, run_id: str, timeout: float = 420) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            self.procs.check_running()
            run = api.run(dag_id, run_id)
            return run if run["state"] in TERMINAL_RUN_STATES else None

        return wait_for(f"run {dag_id}/{run_id} to end", ended, timeout, 1)

    def record(self, run: dict[str, Any], expected: str, note: str = "") -> RunRecord:
        seconds = None
        if run.get("start_date") and run.get("end_date"):
            start = datetime.fromisoformat(run["start_date"])
            seconds = (datetime.fromisoformat(run["end_date"]) - start).total_seconds()
        record = RunRecord(run["dag_id"], run["dag_run_id"], expected, run["state"], seconds, note)
        self.records.append(record)
        return record

    def wait_all_runs(self, api: AirflowApi, dag_id: str, minimum: int, timeout: float = 420) -> list[dict[str, Any]]:
        def ended() -> list[dict[str, Any]] | None:
            self.procs.check_running()
            runs = api.runs(dag_id)
            done = len(runs) >= minimum and all(run["state"] in TERMINAL_RUN_STATES for run in runs)
            return runs if done else None

        return wait_for(f"every run of {dag_id} to end", ended, timeout, 1)

    def assert_success(self, api: AirflowApi, run: dict[str, Any], note: str = "") -> None:
        self.record(run, "success", note)
        if run["state"] != "success":
            states = {
                f"{ti['task_id']}[{ti['map_index']}]": ti["state"] for ti in api.tis(run["dag_id"], run["dag_run_id"])
            }
            raise DeploymentTestError(f"run {run['dag_id']}/{run['dag_run_id']} ended {run['state']}: {states}")
        self.check(True, f"{run['dag_id']} run {run['dag_run_id']} ({run['run_type']}) succeeded")

    def ti_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> Path:
        return (
            Path(self.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
            / f"dag_id={dag_id}"
            / f"run_id={run_id}"
            / f"task_id={task_id}"
            / f"attempt={try_number}.log"
        )

    # -------------------------------------------------------------- Candela (as the producer user)
    def producer_hook(self) -> Any:
        from airflow_provider_candela.hooks.candela import CandelaHook

        return CandelaHook(self.producer_conn_id)

    def new_base_session(self) -> dict[str, str]:
        """Start and stop a session as the producer user; return its ids (the awaited one is its next version)."""
        with self.producer_hook() as hook:
            hook.ensure_slot(timeout=60)
            hook.stop_session()
            meta = hook.start_session("default/demo-agent", "default/demo-model")
            hook.stop_session()
        ids: dict[str, str] = meta.obj_id.model_dump(mode="json")
        return ids

    def start_next_version(self, base: dict[str, str]) -> dict[str, str]:
        with self.producer_hook() as hook:
            hook.stop_session()
            meta = hook.start_session("default/demo-agent", "default/demo-model", parent_session=base)
        ids: dict[str, str] = meta.obj_id.model_dump(mode="json")
        return ids

    def stop_producer_session(self) -> None:
        with self.producer_hook() as hook:
            hook.stop_session()

    @staticmethod
    def next_version(version: str) -> str:
        """The emulator's (and Candela's) next version of a session continued with ``parent_session``."""
        major, minor, _patch = version.split(".")
        return f"{major}.{int(minor) + 1}.0"

    # -------------------------------------------------------------- deferral evidence
    def wait_deferred(self, api: AirflowApi, run_id: str) -> None:
        """Both sensors of the run reach ``deferred`` (seen live through the REST API)."""

        def deferred() -> dict[str, dict[str, Any]] | None:
            self.procs.check_running()
            tis = {ti["task_id"]: ti for ti in api.tis(SENSOR_DAG, run_id) if ti["task_id"] in SENSOR_TASKS}
            for task_id, ti in tis.items():
                if ti["state"] in ("success", "failed", "upstream_failed", "skipped"):
                    raise DeploymentTestError(f"{task_id} ended {ti['state']} before the session existed")
            return (
                tis if len(tis) == len(SENSOR_TASKS) and all(t["state"] == "deferred" for t in tis.values()) else None
            )

        tis = wait_for(f"{SENSOR_DAG}/{run_id}: {' and '.join(SENSOR_TASKS)} deferred", deferred, 240, 0.5)
        for task_id, ti in tis.items():
            self.deferrals.append(f"{run_id} {task_id}: seen deferred (try {ti['try_number']})")
        self.check(True, f"{' and '.join(SENSOR_TASKS)} of {run_id} are in state deferred (REST API)")

    def trigger_rows(self, run_id: str) -> dict[str, tuple[int, str, int | None, str | None]]:
        """``{task_id: (trigger id, classpath, triggerer job id, next_method)}`` of the run's deferred TIs."""
        rows = self.query(
            "SELECT ti.task_id, t.id, t.classpath, t.triggerer_id, ti.next_method FROM task_instance ti "
            "JOIN trigger t ON t.id = ti.trigger_id WHERE ti.dag_id = %s AND ti.run_id = %s",
            (SENSOR_DAG, run_id),
        )
        return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}

    def check_triggers(self, run_id: str) -> dict[str, int]:
        """The deferred TIs' trigger rows: our trigger class, ids + conn id only, each run by a triggerer."""
        rows = wait_for(
            f"the triggers of {run_id} to be assigned to a triggerer",
            lambda: (
                r
                if len(r := self.trigger_rows(run_id)) == len(SENSOR_TASKS) and all(v[2] for v in r.values())
                else None
            ),
            60,
            0.5,
        )
        from airflow.models.trigger import Trigger
        from airflow.utils.session import create_session

        jobs = {}
        for task_id, (trigger_id, classpath, triggerer_id, next_method) in sorted(rows.items()):
            self.check(
                classpath == TRIGGER_CLASSPATH and next_method == "execute_complete",
                f"{task_id}: trigger {trigger_id} is {classpath.rsplit('.', 1)[1]}, the TI resumes in {next_method}",
            )
            with create_session() as session:
                trigger = session.get(Trigger, trigger_id)
                kwargs = dict(trigger.kwargs) if trigger is not None else {}
            expected_keys = {"scope", "identifier", "version", "candela_conn_id", "poll_interval", "end_time"}
            leaked = [secret for secret in self._candela_secrets() if secret in json.dumps(kwargs, default=str)]
            self.check(
                set(kwargs) == expected_keys and not leaked,
                f"{task_id}: trigger kwargs hold ids, conn id ({kwargs.get('candela_conn_id')}) and timing only, "
                "no credential",
            )
            self.deferrals.append(f"{run_id} {task_id}: trigger {trigger_id} run by triggerer job {triggerer_id}")
            jobs[task_id] = int(triggerer_id)  # type: ignore[arg-type]
        return jobs

    def wait_start_deferred(self, api: AirflowApi) -> str:
        """The example pipeline DAG's deferrable start waits for its new slot in the triggerer; its run id."""

        def deferred() -> tuple[str, int, str] | None:
            self.procs.check_running()
            rows = self.query(
                "SELECT ti.run_id, t.id, t.classpath FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
                "WHERE ti.dag_id = %s AND ti.task_id = 'start_session' AND ti.state = 'deferred'",
                (PIPELINE_DAG,),
            )
            return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None

        run_id, trigger_id, classpath = wait_for(f"{PIPELINE_DAG}: start_session deferred", deferred, 240, 0.25)
        from airflow.models.trigger import Trigger
        from airflow.utils.session import create_session

        with create_session() as session:
            trigger = session.get(Trigger, trigger_id)
            kwargs = dict(trigger.kwargs) if trigger is not None else {}
        leaked = [secret for secret in self._candela_secrets() if secret in json.dumps(kwargs, default=str)]
        self.check(
            classpath == SLOT_TRIGGER_CLASSPATH
            and set(kwargs) == {"slot_id", "assigned", "candela_conn_id", "poll_interval", "end_time"}
            and not leaked,
            f"{PIPELINE_DAG} {run_id} start_session deferred to {classpath.rsplit('.', 1)[1]} for slot "
            f"{kwargs.get('slot_id')} (slot id, conn id and timing only, no credential)",
        )
        self.deferrals.append(f"{run_id} start_session: deferred while slot {kwargs.get('slot_id')} started")
        return run_id

    def check_deferral_recorded(self, api: AirflowApi, run_id: str) -> None:
        """After the run: Airflow's event log shows each sensor deferred once, and it resumed without a retry."""
        for task_id in SENSOR_TASKS:
            events = api.events(SENSOR_DAG, run_id, task_id)
            ti = api.ti(SENSOR_DAG, run_id, task_id)
            self.check(
                events.count("deferred") == 1 and ti is not None and ti["try_number"] == 1 and ti["state"] == "success",
                f"event log of {task_id}: {events} (deferred once, resumed in try 1)",
            )

    def trigger_log(self, run_id: str, task_id: str, triggerer_job: int) -> Path:
        """The log a triggerer job writes for a sensor's trigger (next to the task's own log)."""
        task_log = self.ti_log(SENSOR_DAG, run_id, task_id)
        return task_log.with_name(f"{task_log.name}.trigger.{triggerer_job}.log")

    def wait_trigger_running(self, run_id: str, jobs: dict[str, int]) -> None:
        """Each trigger has started in its triggerer job (that job's trigger log says so)."""
        for task_id, job in jobs.items():
            path = self.trigger_log(run_id, task_id, job)
            wait_for(
                f"triggerer job {job} to run the trigger of {task_id} ({path.name})",
                lambda path=path: path.exists() and "starting" in path.read_text(errors="replace"),
                60,
                0.5,
            )

    def _candela_secrets(self) -> list[str]:
        conn = json.loads(self.emulator.connection_json())
        producer = json.loads(self.producer_conn)
        return [conn["password"], conn["extra"]["client_secret"], producer["password"]]

    def create_db_connection(self, api: AirflowApi) -> None:
        """``candela_deploy_db``: the same Candela user as ``candela_default``, but stored in the metadata DB."""
        conn = json.loads(self.emulator.connection_json())
        api.call(
            "POST",
            "/connections",
            {
                "connection_id": DB_CONN_ID,
                "conn_type": "candela",
                "host": conn["host"],
                "login": conn["login"],
                "password": conn["password"],
                "extra": json.dumps(conn["extra"]),
            },
            expect=(201,),
        )
        self.check(
            f"AIRFLOW_CONN_{DB_CONN_ID.upper()}" not in self.env,
            f"connection {DB_CONN_ID} created in the metadata DB (REST API), in no process's environment",
        )

    # -------------------------------------------------------------- scenarios
    def scenario_examples_and_deferral(self, api: AirflowApi) -> dict[str, str]:
        self.phase("example DAGs + deferrable sensors")
        self.emulator.configure(slot_startup_seconds=SLOT_STARTUP_SECONDS)
        unpaused = [dag_id for dag_id in ALL_DAGS if dag_id != TASKFLOW_DAG]
        for dag_id in unpaused:
            api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        self.check(True, f"unpaused {', '.join(unpaused)}")
        triggered = {
            dag_id: api.trigger(dag_id) for dag_id in ("candela_session_cleanup", "candela_scheduled_pipeline_prompt")
        }
        self.deferred_start = self.wait_start_deferred(api)
        base = self.new_base_session()
        wanted = {**base, "version": self.next_version(base["version"])}
        run_id = api.trigger(SENSOR_DAG, wanted, label="deferral")
        self.wait_deferred(api, run_id)
        self.wait_trigger_running(run_id, self.check_triggers(run_id))
        exists_before = self.emulator.stats()["requests"].get("GET /sessions/exists", {}).get("200", 0)
        created = self.start_next_version(base)
        self.check(created == wanted, f"the test created the awaited session {created} only after the deferral")
        run = self.wait_run(api, SENSOR_DAG, run_id)
        self.stop_producer_session()
        self.assert_success(api, run, "sensors deferred, session created afterwards")
        self.check_deferral_recorded(api, run_id)
        exists_after = self.emulator.stats()["requests"].get("GET /sessions/exists", {}).get("200", 0)
        self.check(
            exists_after >= exists_before + len(SENSOR_TASKS),
            f"the triggers found the session with GET /sessions/exists ({exists_after - exists_before} calls)",
        )
        return triggered

    def scenario_triggerer_restart(self, api: AirflowApi) -> None:
        self.phase("triggerer restart while the sensors are deferred")
        base = self.new_base_session()
        wanted = {**base, "version": self.next_version(base["version"])}
        run_id = api.trigger(SENSOR_DAG, wanted, label="triggerer_restart")
        self.wait_deferred(api, run_id)
        old_jobs = self.check_triggers(run_id)
        self.wait_trigger_running(run_id, old_jobs)
        old_pid = self.procs.services["triggerer"].pid
        self.check(True, f"triggerer job(s) {sorted(set(old_jobs.values()))} (pid {old_pid}) run the triggers")
        self.procs.stop("triggerer")
        states = {ti["task_id"]: ti["state"] for ti in api.tis(SENSOR_DAG, run_id) if ti["task_id"] in SENSOR_TASKS}
        self.check(
            set(states.values()) == {"deferred"}, f"the sensors stay deferred while no triggerer runs ({states})"
        )
        restarted_at = datetime.now(UTC)
        new = self.start_triggerer()

        def moved() -> dict[str, int] | None:
            self.procs.check_running()
            rows = self.trigger_rows(run_id)
            jobs = {task_id: row[2] for task_id, row in rows.items() if row[2] is not None}
            if len(jobs) == len(SENSOR_TASKS) and all(jobs[t] != old_jobs[t] for t in SENSOR_TASKS):
                return jobs  # type: ignore[return-value]
            return None

        new_jobs = wait_for("the triggers to move to the new triggerer", moved, 120, 0.5)

        def healthy_again() -> bool:
            beat = api.health()["triggerer"]
            return (
                beat["status"] == "healthy"
                and datetime.fromisoformat(beat["latest_triggerer_heartbeat"]) > restarted_at
            )

        wait_for("the health endpoint to show the new triggerer's heartbeat", healthy_again, 60, 0.5)
        self.wait_trigger_running(run_id, new_jobs)
        self.check(
            True,
            f"the triggers moved from triggerer job(s) {sorted(set(old_jobs.values()))} (pid {old_pid}) to job(s) "
            f"{sorted(set(new_jobs.values()))} (pid {new.pid}) and run there",
        )
        for task_id, job in sorted(new_jobs.items()):
            self.deferrals.append(f"{run_id} {task_id}: trigger resumed by the restarted triggerer (job {job})")
        self.start_next_version(base)
        run = self.wait_run(api, SENSOR_DAG, run_id)
        self.stop_producer_session()
        self.assert_success(api, run, "triggerer restarted while deferred")
        self.check_deferral_recorded(api, run_id)
        self.restarts.append(
            f"triggerer restarted (SIGTERM, pid {old_pid} -> {new.pid}) while 2 sensors were deferred: triggers moved "
            f"from job(s) {sorted(set(old_jobs.values()))} to {sorted(set(new_jobs.values()))}, run succeeded"
        )

    def scenario_examples_finish(self, api: AirflowApi, triggered: dict[str, str]) -> None:
        self.phase("example DAG runs (scheduled + triggered) end; agent prompt DAG")
        for dag_id in ("candela_session_cleanup", "candela_scheduled_pipeline_prompt"):
            # Unpausing created one scheduled run (catchup=False), the test triggered another.
            runs = self.wait_all_runs(api, dag_id, minimum=2)
            # No new scheduled run while the other DAGs use the same Candela user (one session per user).
            api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})
            run_ids = {run["dag_run_id"] for run in runs}
            self.check(triggered[dag_id] in run_ids, f"{dag_id}: the triggered run is among {len(runs)} run(s)")
            for run in runs:
                self.assert_success(api, run)
        events = api.events(PIPELINE_DAG, self.deferred_start, "start_session")
        self.check(
            events.count("deferred") == 1,
            f"{PIPELINE_DAG} {self.deferred_start}: start_session deferred once, then resumed and succeeded ({events})",
        )
        run_id = api.trigger("candela_agent_prompt")
        run = self.wait_run(api, "candela_agent_prompt", run_id)
        self.assert_success(api, run)
        asks = [ti for ti in api.tis("candela_agent_prompt", run_id) if ti["task_id"] == "ask"]
        self.check(
            len(asks) == 3 and all(ti["state"] == "success" for ti in asks),
            "candela_agent_prompt: 3 mapped ask tasks succeeded",
        )
        hosts = sorted({ti["hostname"] for ti in api.tis("candela_agent_prompt", run_id)})
        log(f"candela_agent_prompt tasks ran on {hosts}")
        api.call("PATCH", f"/dags/{TASKFLOW_DAG}", {"is_paused": False})  # creates its scheduled run
        for run in self.wait_all_runs(api, TASKFLOW_DAG, minimum=1):
            self.assert_success(api, run, "one-task typed pipeline prompt, agent decorators on a shared session")
        api.call("PATCH", f"/dags/{TASKFLOW_DAG}", {"is_paused": True})

    def scenario_kill_worker(self, api: AirflowApi) -> None:
        self.phase("kill -9 the worker streaming an agent answer")
        emulator = self.emulator
        emulator.configure(event_delay=0.25, agent_chat_events=400)  # a stream of ~100 s
        before = emulator.stats()
        run_id = api.trigger(SLOW_DAG, label="kill_worker")

        def streaming() -> dict[str, Any] | None:
            self.procs.check_running()
            ti = api.ti(SLOW_DAG, run_id, "ask")
            if not ti or ti["state"] != "running" or not ti.get("hostname"):
                return None
            stats = emulator.stats()
            started = stats["requests"].get("POST /session/agent_submit", {}).get("200", 0)
            if started <= before["requests"].get("POST /session/agent_submit", {}).get("200", 0):
                return None
            path = self.ti_log(SLOW_DAG, run_id, "ask", ti["try_number"])
            return ti if path.exists() and "[user]" in path.read_text(errors="replace") else None

        ti = wait_for("ask to be streaming the agent's answer", streaming, 240, 0.5)
        hostname = ti["hostname"]
        victim = {"candela-worker-1": "worker-1", "candela-worker-2": "worker-2"}.get(hostname)
        self.check(victim is not None, f"ask runs on {hostname} (pid {ti['pid']}), found by the TI's hostname")
        assert victim is not None
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        service = self.procs.services[victim]
        tree = service.refresh_tree()
        self.check(ti["pid"] in tree, f"the TI's pid {ti['pid']} is in {victim}'s process tree (pid {service.pid})")
        session = emulator.stats()["running_sessions"].get("demo")
        self.check(session is not None, f"the agent session {session} runs while the answer streams")
        stops_before = emulator.stats()["requests"].get("GET /session/stop", {}).get("204", 0)
        killed = self.procs.kill_tree(victim)
        killed_at = time.monotonic()
        log(f"killed {victim} with SIGKILL: pids {killed}")
        self.check(
            emulator.stats()["running_sessions"].get("demo") == session,
            "the session is still running right after the kill (no on_kill ran)",
        )
        run = self.wait_run(api, SLOW_DAG, run_id, timeout=TI_HEARTBEAT_TIMEOUT + 240)
        states = {t["task_id"]: t for t in api.tis(SLOW_DAG, run_id)}
        ask, stop = states["ask"], states["stop_session"]
        self.record(run, "failed", f"{victim} killed mid-stream; teardown stopped the session")
        ask_events = api.events(SLOW_DAG, run_id, "ask")
        self.check(
            ask["state"] == "failed" and "heartbeat timeout" in ask_events,
            f"ask ended {ask['state']} after its worker died; event log {ask_events}",
        )
        self.check(
            stop["state"] == "success" and stop["hostname"] == f"candela-{survivor}",
            f"the teardown stop_session succeeded on {stop['hostname']} ({stop['state']})",
        )
        self.check(run["state"] == "failed", f"the run ended in a clear state: {run['state']}")
        after = emulator.stats()
        stops = after["requests"].get("GET /session/stop", {}).get("204", 0) - stops_before
        self.check(
            after["running_sessions"].get("demo") is None and stops >= 1,
            f"the session was stopped by the teardown ({stops} GET /session/stop after the kill)",
        )
        emulator.configure(event_delay=0.0, agent_chat_events=None)
        log(f"run ended {time.monotonic() - killed_at:.0f} s after the kill; replacing {victim}")
        number = int(victim.rsplit("-", 1)[1])
        self.start_worker(number)
        self.wait_worker(number)
        self.restarts.append(
            f"{victim} killed -9 mid-stream (pids {killed}): ask failed, stop_session on {survivor} stopped the "
            f"session, run {run['state']}; {victim} replaced"
        )

    def final_checks(self, api: AirflowApi) -> None:
        self.phase("final checks")
        running = self.emulator.stats()["running_sessions"]
        self.check(all(value is None for value in running.values()), f"no Candela session left running ({running})")
        for dag_id in ALL_DAGS:
            for run in api.runs(dag_id):
                if run["state"] not in TERMINAL_RUN_STATES:
                    raise DeploymentTestError(f"{dag_id}/{run['dag_run_id']} is still {run['state']}")
        for record in self.records:
            if record.state != record.expected:
                raise DeploymentTestError(
                    f"{record.dag_id}/{record.run_id}: {record.state}, expected {record.expected}"
                )
        self.check(True, f"all {len(self.records)} DAG runs ended as expected")

    # -------------------------------------------------------------- main
    def run(self) -> None:
        self.phase("infrastructure: PostgreSQL, Redis, Candela emulator")
        self.start_postgres()
        self.start_redis()
        self.start_emulator()
        self.phase("Airflow: db migrate, api-server, scheduler, dag-processor, triggerer, 2 Celery workers")
        api = self.api = self.start_airflow()
        self.create_db_connection(api)
        self.wait_dags_parsed(api)
        triggered = self.scenario_examples_and_deferral(api)
        self.scenario_triggerer_restart(api)
        self.scenario_examples_finish(api, triggered)
        self.scenario_kill_worker(api)
        self.final_checks(api)

    def teardown(self) -> list[str]:
        """Stop everything; return the leaks found (processes, ports)."""
        self.phase("teardown")
        self.procs.stop_all()
        problems = []
        seen: dict[int, int] = {}
        for service in self.procs.stopped:
            seen.update(service.tree)
        left = sorted(set(alive(seen)) | set(our_processes(self.marker, self.workdir)))
        if left:
            problems.append(f"processes left behind: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if open_ports := {name: port for name, port in self.ports.items() if port_open(port)}:
            problems.append(f"ports still open: {open_ports}")
        if not problems:
            self.checks.append("no process or port left behind")
            ports = sorted(self.ports.values())
            log(
                f"ok: nothing left behind ({len(seen)} processes seen in the services' trees all gone, none with "
                f"this run's marker or directory; ports {ports} closed)"
            )
        return problems

    def summary(self, error: BaseException | None, problems: list[str]) -> None:
        total = time.monotonic() - START
        print("\n" + "=" * 100)
        print("Deployment test summary (Airflow 3.3, CeleryExecutor, PostgreSQL, Redis, separate processes)")
        print("-" * 100)
        print(f"{'DAG':36} {'run':48} {'state':8} {'expected':8} {'secs':>5}")
        for r in self.records:
            secs = f"{r.seconds:5.0f}" if r.seconds is not None else "    ?"
            print(f"{r.dag_id:36} {r.run_id[:48]:48} {r.state:8} {r.expected:8} {secs}")
            if r.note:
                print(f"{'':36}   {r.note}")
        print("Deferrals seen:")
        for line in self.deferrals or ["(none)"]:
            print(f"  - {line}")
        print("Restarts survived:")
        for line in self.restarts or ["(none)"]:
            print(f"  - {line}")
        print("Time:")
        ends = [t for _, t in self.phases[1:]] + [time.monotonic()]
        for (name, started), ended in zip(self.phases, ends, strict=True):
            print(f"  {ended - started:6.0f} s  {name}")
        print(f"  {total:6.0f} s  total")
        failed = 1 if (error is not None or problems) else 0
        if error is not None:
            print(f"FAILED: {type(error).__name__}: {error}")
        for problem in problems:
            print(f"FAILED: {problem}")
        print("=" * 100)
        print(f"deployment-test: {len(self.checks)} passed, {failed} failed", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs) after a success")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("deployment-test: run as root (PostgreSQL is started as the postgres user)", file=sys.stderr)
        return 2

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="candela-deploy-"))
    workdir.chmod(0o711)  # the postgres user must reach its data directory inside
    log(f"run directory {workdir}")
    test = DeploymentTest(workdir)
    error: BaseException | None = None
    try:
        test.run()
    except (Exception, Interrupted) as err:
        error = err
        if not isinstance(err, DeploymentTestError | Interrupted):
            traceback.print_exc()
        log(f"FAILED: {type(err).__name__}: {err}")
    finally:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # let the teardown finish
            problems = test.teardown()
        except Exception as err:
            problems = [f"teardown failed: {type(err).__name__}: {err}"]
    if error is not None or problems:
        for service in test.procs.stopped:
            print(f"\n--- last lines of {service.log_path}")
            print(tail(service.log_path, 15))
    test.summary(error, problems)
    if error is None and not problems and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"run directory kept: {workdir}")
    return 0 if error is None and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
