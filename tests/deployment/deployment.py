"""The deployment the scenarios run on: Airflow 3.3 in separate processes, Celery, PostgreSQL, Redis.

Everything runs on loopback, on free ports, in one temporary directory:

* PostgreSQL (Debian's, run as the ``postgres`` user) holds the Airflow metadata DB and the Celery
  result backend; Redis (Debian's) is the Celery broker; the Candela emulator stands in for Candela.
* ``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker``
  processes (``CeleryExecutor``), each with its own log file, each waited on through its health
  (``/api/v2/monitor/health`` heartbeats, Celery ``inspect ping``), never through fixed sleeps.
* Connections: ``candela_default`` (the DAGs' Candela user ``demo``) and ``candela_producer`` (user
  ``producer``, for the test's own sessions) as ``AIRFLOW_CONN_*`` variables of every process;
  ``candela_deploy_db`` (user ``demo`` again) stored only in the metadata DB, through the REST API.

:class:`Deployment` starts and stops it and gives the scenarios what they act and assert through: the
REST API (:class:`AirflowApi`), the metadata DB, the emulator's controls, the services' processes and
logs.  Its services run under :class:`processes.Processes`; :meth:`Deployment.stop` stops them and
reports any process of the run and any port of the run still open.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from processes import MARKER_ENV, START, Processes, Service, alive, log, our_processes, tail

from airflow_provider_candela.testing import CandelaEmulator, StatsdListener, wait_until

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")

DB_CONN_ID = "candela_deploy_db"  # the Candela connection stored in the metadata DB (not in any environment)
TERMINAL_RUN_STATES = {"success", "failed"}
# A task whose worker died is failed once its heartbeats stop for this long (Airflow's default: 300 s).
TI_HEARTBEAT_TIMEOUT = 30
# Every wait ends by this many seconds after the start, whatever its own timeout (the target: < 15 min).
BUDGET = float(os.environ.get("CANDELA_DEPLOY_BUDGET", "840"))

T = TypeVar("T")


class DeploymentTestError(AssertionError):
    """A check of the deployment test failed (the message says which and what was seen)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------ REST API
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

    def dag_ids(self) -> set[str]:
        return {dag["dag_id"] for dag in self.call("GET", "/dags?limit=100")["dags"]}

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", {"is_paused": paused})

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


# ------------------------------------------------------------------------------------------ the deployment
@dataclass
class RunRecord:
    dag_id: str
    run_id: str
    expected: str
    state: str = "?"
    seconds: float | None = None
    note: str = ""


class Deployment:
    """The servers and Airflow services of one test run, and the evidence the scenarios collect on them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir()
        self.procs = Processes(self.log_dir)
        self.marker = secrets.token_hex(8)
        os.environ[MARKER_ENV] = self.marker  # every child inherits it: the leak check looks for it
        self.ports: dict[str, int] = {}
        self.env: dict[str, str] = {}
        self.pg_password = secrets.token_urlsafe(16)
        self.redis_password = secrets.token_urlsafe(16)
        self.admin_password = ""
        self.emulator = CandelaEmulator(
            password=secrets.token_urlsafe(12), client_secret=secrets.token_urlsafe(12), access_token=""
        )
        self.producer_conn_id = "candela_producer"
        self.producer_conn = ""
        self._api: AirflowApi | None = None
        # Evidence for the summary: passed checks, DAG runs, deferrals and restarts seen.
        self.checks: list[str] = []
        self.records: list[RunRecord] = []
        self.deferrals: list[str] = []
        self.restarts: list[str] = []
        self.statsd = StatsdListener()  # every Airflow service sends its metrics here

    @property
    def api(self) -> AirflowApi:
        if self._api is None:
            raise DeploymentTestError("the Airflow API server was never started")
        return self._api

    # -------------------------------------------------------------- checks and waits
    def ok(self, message: str) -> None:
        """Record a check that passed (what a wait or an arrangement established)."""
        self.checks.append(message)
        log(f"ok: {message}")

    def check(self, condition: bool, message: str) -> None:
        """Assert ``condition``; ``message`` says what holds (and is the failure's message if it does not)."""
        if not condition:
            raise DeploymentTestError(message)
        self.ok(message)

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        """``wait_until(check)`` within ``timeout`` and the run's budget, failing at once if a service died.

        An exception from ``check`` (a server not up yet, a connection reset) counts as "not yet", except a
        :class:`DeploymentTestError`, which fails the wait.
        """
        errors: list[Exception] = []

        def attempt() -> T | None:
            self.procs.check_running()
            try:
                return check()
            except DeploymentTestError:
                raise
            except Exception as err:
                errors.append(err)
                return None

        try:
            return wait_until(attempt, timeout=min(timeout, START + BUDGET - time.monotonic()), interval=interval)
        except DeploymentTestError:
            raise
        except AssertionError:
            last = errors[-1] if errors else None
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise DeploymentTestError(
                f"timed out waiting for {what} (timeout {timeout:.0f} s, budget {BUDGET:.0f} s){detail}"
            ) from None

    # -------------------------------------------------------------- start and stop
    def start_servers(self) -> None:
        """PostgreSQL, Redis and the Candela emulator."""
        self.start_postgres()
        self.start_redis()
        self.start_emulator()

    def start_airflow(self, dag_ids: tuple[str, ...]) -> None:
        """``db migrate``, the Airflow services and both workers, the DB connection; waits for ``dag_ids`` parsed."""
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
        self._api = api = AirflowApi(f"http://127.0.0.1:{self.ports['api-server']}", "admin", self.admin_password)

        def healthy() -> dict[str, Any] | None:
            health = api.health()
            components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return health if all(health[c]["status"] == "healthy" for c in components) else None

        health = self.wait_for("the api-server health endpoint to report every component healthy", healthy, 300, 1)
        self.ok(
            "api-server /api/v2/monitor/health: metadatabase, scheduler, triggerer and dag-processor healthy "
            f"(heartbeats {health['scheduler']['latest_scheduler_heartbeat']}, "
            f"{health['triggerer']['latest_triggerer_heartbeat']}, "
            f"{health['dag_processor']['latest_dag_processor_heartbeat']})"
        )
        for number in (1, 2):
            self.wait_worker(number)
        api.login()
        self.create_db_connection()
        self.wait_dags_parsed(dag_ids)

    def stop(self) -> list[str]:
        """Stop everything; return the leaks found (processes, ports)."""
        self.procs.stop_all()
        self.statsd.close()
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
            ports = sorted(self.ports.values())
            self.ok(
                f"nothing left behind ({len(seen)} processes seen in the services' trees all gone, none with "
                f"this run's marker or directory; ports {ports} closed)"
            )
        return problems

    # -------------------------------------------------------------- servers
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
        conn = self.wait_for("PostgreSQL to accept connections", lambda: self._connect("postgres", 3), 60, 0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        log(f"PostgreSQL {bin_dir.parent.name} ready on 127.0.0.1:{port} (database airflow)")

    def _connect(self, dbname: str, timeout: int) -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.ports["postgres"], user="airflow", password=self.pg_password,
            dbname=dbname, connect_timeout=timeout,
        )  # fmt: skip

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on the metadata DB."""
        conn = self._connect("airflow", 5)
        conn.autocommit = True
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
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(f"AUTH {self.redis_password}\r\nPING\r\n".encode())
                answer = b""
                while b"PONG" not in answer and len(answer) < 200:
                    chunk = sock.recv(200)
                    if not chunk:
                        break
                    answer += chunk
                return b"+PONG" in answer

        self.wait_for("Redis to answer PING", pong, 30, 0.2)
        log(f"Redis ready on 127.0.0.1:{port}")

    def start_emulator(self) -> None:
        """The emulator as a service of its own (log file, process group), run with the flags it was made with."""
        emulator = self.emulator
        port = self.ports["emulator"] = free_port()
        self.procs.start("emulator", emulator.command(port), dict(os.environ))
        emulator.port, emulator.url = port, f"http://127.0.0.1:{port}"
        emulator.token_url = f"{emulator.url}/oauth2/token"
        self.wait_for("the Candela emulator to answer", emulator.stats, 30, 0.2)
        producer_password = secrets.token_urlsafe(12)
        emulator.add_user("producer", producer_password)
        self.producer_conn = json.dumps(
            {"conn_type": "candela", "host": emulator.url, "login": "producer", "password": producer_password,
             "extra": emulator.connection_extra()}
        )  # fmt: skip
        log(f"Candela emulator ready on {emulator.url} (users: demo for the DAGs, producer for the test)")

    def candela_secrets(self) -> list[str]:
        """The Candela passwords and client secret of the run (none may appear in a trigger's kwargs)."""
        conn = json.loads(self.emulator.connection_json())
        producer = json.loads(self.producer_conn)
        return [conn["password"], conn["extra"]["client_secret"], producer["password"]]

    # -------------------------------------------------------------- Airflow
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
            "metrics": {
                "statsd_on": "True",
                "statsd_host": "127.0.0.1",
                "statsd_port": str(self.statsd.port),
                "statsd_influxdb_enabled": "True",  # the tags ride along with the names
            },
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
            replies = app.control.inspect(destination=[name], timeout=2).ping() or {}
            return replies.get(name, {}).get("ok") == "pong"

        self.wait_for(f"Celery worker {name} to answer inspect ping", pong, 180, 1)
        self.ok(f"Celery worker {name} answers inspect ping")

    def create_db_connection(self) -> None:
        """``candela_deploy_db``: the same Candela user as ``candela_default``, but stored in the metadata DB."""
        conn = json.loads(self.emulator.connection_json())
        self.api.call(
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

    def wait_dags_parsed(self, dag_ids: tuple[str, ...]) -> None:
        def parsed() -> bool:
            errors = self.api.call("GET", "/importErrors")
            if errors["total_entries"]:
                raise DeploymentTestError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)}")
            return set(dag_ids) <= self.api.dag_ids()

        self.wait_for("the dag-processor to parse every DAG", parsed, 180, 1)
        self.ok(f"all {len(dag_ids)} DAGs parsed by the dag-processor, no import errors")

    # -------------------------------------------------------------- runs, task logs, triggers
    def wait_run(self, dag_id: str, run_id: str, timeout: float = 420) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            run = self.api.run(dag_id, run_id)
            return run if run["state"] in TERMINAL_RUN_STATES else None

        return self.wait_for(f"run {dag_id}/{run_id} to end", ended, timeout, 1)

    def wait_all_runs(self, dag_id: str, minimum: int, timeout: float = 420) -> list[dict[str, Any]]:
        """Every run of ``dag_id`` (at least ``minimum`` of them), once all have ended."""

        def ended() -> list[dict[str, Any]] | None:
            runs = self.api.runs(dag_id)
            done = len(runs) >= minimum and all(run["state"] in TERMINAL_RUN_STATES for run in runs)
            return runs if done else None

        return self.wait_for(f"every run of {dag_id} to end", ended, timeout, 1)

    def record(self, run: dict[str, Any], expected: str, note: str = "") -> RunRecord:
        seconds = None
        if run.get("start_date") and run.get("end_date"):
            start = datetime.fromisoformat(run["start_date"])
            seconds = (datetime.fromisoformat(run["end_date"]) - start).total_seconds()
        record = RunRecord(run["dag_id"], run["dag_run_id"], expected, run["state"], seconds, note)
        self.records.append(record)
        return record

    def assert_success(self, run: dict[str, Any], note: str = "") -> None:
        self.record(run, "success", note)
        if run["state"] != "success":
            states = {
                f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
                for ti in self.api.tis(run["dag_id"], run["dag_run_id"])
            }
            raise DeploymentTestError(f"run {run['dag_id']}/{run['dag_run_id']} ended {run['state']}: {states}")
        self.ok(f"{run['dag_id']} run {run['dag_run_id']} ({run['run_type']}) succeeded")

    def ti_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> Path:
        return (
            Path(self.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
            / f"dag_id={dag_id}"
            / f"run_id={run_id}"
            / f"task_id={task_id}"
            / f"attempt={try_number}.log"
        )

    def trigger_log(self, dag_id: str, run_id: str, task_id: str, triggerer_job: int) -> Path:
        """The log a triggerer job writes for a task's trigger (next to the task's own log)."""
        task_log = self.ti_log(dag_id, run_id, task_id)
        return task_log.with_name(f"{task_log.name}.trigger.{triggerer_job}.log")

    def trigger_kwargs(self, trigger_id: int) -> dict[str, Any]:
        """The kwargs of a trigger row, decrypted (through Airflow's ORM)."""
        from airflow.models.trigger import Trigger
        from airflow.utils.session import create_session

        with create_session() as session:
            trigger = session.get(Trigger, trigger_id)
            return dict(trigger.kwargs) if trigger is not None else {}

    def leaked_secrets(self, kwargs: dict[str, Any]) -> list[str]:
        """The run's Candela secrets that appear in ``kwargs``."""
        text = json.dumps(kwargs, default=str)
        return [secret for secret in self.candela_secrets() if secret in text]
