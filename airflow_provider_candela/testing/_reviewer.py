"""Answer Airflow's human-in-the-loop reviews the way a person would: through the REST API of an ``api-server``.

``ApiServer`` runs ``airflow api-server`` on a free loopback port over an existing Airflow home (so that it shares
the metadata database with ``airflow dags test``), with Airflow's simple auth manager and one user whose random
password never leaves the temporary home.  ``Reviewer`` logs in as that user and lists, reads and answers the
reviews (``/api/v2/.../hitlDetails``).  Used by ``run_dags`` (``make demo`` answers its review itself), the
review tests and the deployment test.  Standard library only; Airflow 3.1+ on the server side.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["ApiServer", "ReviewReplacedError", "Reviewer", "ReviewerError"]

SIMPLE_AUTH_MANAGER: Final = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
#: The states of a task that waits for its review: parked (3.3+) or deferred to the HITL trigger (3.1, 3.2).
_PARKED: Final = ("awaiting_input", "deferred")


class ReviewerError(RuntimeError):
    """The api-server did not start, or answered a review request with an error (the message has its answer)."""


class ReviewReplacedError(ReviewerError):
    """The task replaced the review after it was read (Airflow 3.4+ answers 409): read it again and answer that."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_airflow(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``airflow <args>`` (this Python's Airflow) in a session of its own, its output appended to ``log``."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen[bytes], term_wait: float = 20) -> None:
    """TERM then KILL the process group of ``process`` (started by :func:`start_airflow`), and reap it."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def auth_env(home: Path, user: str = "reviewer", role: str = "admin") -> dict[str, str]:
    """The settings of the simple auth manager with one ``user`` (password in ``home``), for every Airflow command.

    Returns the environment additions; the password is ``ApiServer.password_of(home, user)``.
    """
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({user: secrets.token_urlsafe(16)}))
        passwords.chmod(0o600)
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:{role}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }


@dataclass
class ApiServer:
    """A running ``airflow api-server`` over ``env``'s Airflow home (its database migrated already)."""

    url: str
    username: str
    password: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, env: Mapping[str, str], *, user: str = "reviewer", timeout: float = 180) -> ApiServer:
        """Start it on a free loopback port; return once ``/api/v2/monitor/health`` says the database is healthy."""
        home = Path(env["AIRFLOW_HOME"])
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        full = {**env, **auth_env(home, user), "AIRFLOW__API__BASE_URL": url, "NO_PROXY": "127.0.0.1,localhost"}
        password = json.loads(Path(full["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())[user]
        log = home / "api-server.log"
        process = start_airflow(["api-server", "--host", "127.0.0.1", "--port", str(port)], full, log)
        server = cls(url, user, password, process, log)
        deadline = time.monotonic() + timeout
        while not server.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = log.read_text(errors="replace")[-3000:]
                raise ReviewerError(f"airflow api-server at {url} did not start (exit code {process.poll()}):\n{tail}")
            time.sleep(0.25)
        return server

    def healthy(self) -> bool:
        """Whether the API server answers its health check."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2) as response:
                body = json.loads(response.read())
        except (OSError, ValueError):
            return False
        return bool(body.get("metadatabase", {}).get("status") == "healthy")

    def reviewer(self) -> Reviewer:
        """A :class:`Reviewer` logged in as this server's admin user."""
        return Reviewer(self.url, self.username, self.password)

    def stop(self) -> None:
        """Stop the API server (its whole process group)."""
        stop_process_group(self.process)


@dataclass
class Reviewer:
    """A person answering reviews through the REST API: a JWT from ``/auth/token``, then ``hitlDetails`` calls."""

    url: str
    username: str
    password: str = field(repr=False)
    #: Seconds a review's task must have been seen parked before :meth:`pending` offers it (see there).
    settle: float = 1.0
    _token: str | None = field(default=None, repr=False)
    _parked_since: dict[str, float] = field(default_factory=dict, repr=False)

    def call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        """One call of the API server's REST API as this reviewer: the JSON answer (``None`` when empty).

        :raises ReviewerError: the server answered with an error (its status and message).
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:2000].decode(errors="replace")
            error = ReviewReplacedError if err.code == 409 and "replaced" in detail else ReviewerError
            raise error(f"{method} {path}: {err.code} {detail}") from None
        return json.loads(text) if text else None

    def token(self) -> str:
        """The API's access token of this reviewer (logs in at the first call)."""
        if self._token is None:
            login = {"username": self.username, "password": self.password}
            answer = self.call("POST", "/auth/token", login, auth=False)
            self._token = str(answer["access_token"])
        return self._token

    @staticmethod
    def _ti_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        quote = urllib.parse.quote
        return (
            f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(task_id, safe='')}/{map_index}"
        )

    @classmethod
    def _review_path(cls, ti: Mapping[str, Any]) -> str:
        """The ``hitlDetails`` URL of task instance ``ti`` (as the API lists it), with its region when it has one.

        An iteration of a task-group loop (Airflow 3.4+) shares dag, run, task and map index with the other
        iterations; ``region_id`` and ``region_index`` say which one it is.
        """
        path = cls._ti_path(ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["map_index"]) + "/hitlDetails"
        region = {key: ti[key] for key in ("region_id", "region_index") if ti.get(key) is not None}
        return f"{path}?{urllib.parse.urlencode(region)}" if region else path

    def pending(self, dag_id: str = "~") -> list[dict[str, Any]]:
        """The reviews waiting for an answer (of ``dag_id``, or of every DAG), each with its ``task_instance``.

        Only those whose task has parked to wait (``awaiting_input``, or ``deferred`` before Airflow 3.3), and
        was seen parked at least :attr:`settle` seconds ago: the request is written a moment before the task parks,
        and ``dag.test()`` (``airflow dags test``) writes the parked state once more after its execution API did.
        An answer given in between is recorded without resuming the task, or its resume is overwritten (SQLite
        has no row locks), and the task then waits forever: a person is never that quick, a script is.
        """
        path = f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='~')}/dagRuns/~/hitlDetails?response_received=false"
        details: list[dict[str, Any]] = self.call("GET", path)["hitl_details"]
        now = time.monotonic()
        ready = []
        for review in details:
            ti = review["task_instance"]
            if ti.get("state") not in _PARKED:
                continue
            request = json.dumps([self._review_path(ti), review.get("created_at")])  # this try's request
            if now - self._parked_since.setdefault(request, now) >= self.settle:
                ready.append(review)
        return ready

    def detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """The review of one task instance (its latest try)."""
        detail: dict[str, Any] = self.call("GET", self._ti_path(dag_id, run_id, task_id, map_index) + "/hitlDetails")
        return detail

    def respond(
        self,
        review: Mapping[str, Any],
        option: str,
        params_input: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Answer ``review`` (an entry of :meth:`pending`) with ``option`` (``"Approve"`` / ``"Reject"``).

        The answer names the request it answers (``request_created_at``, the review's ``created_at``): when the
        task replaced it since (a retry or a clear asked again), Airflow 3.4+ refuses the answer instead of applying
        it to content the reviewer did not see.  Older Airflow ignores the field.

        :raises ReviewReplacedError: the review was replaced; read :meth:`pending` again and answer the new one.
        """
        body: dict[str, Any] = {"chosen_options": [option], "params_input": dict(params_input or {})}
        if review.get("created_at"):
            body["request_created_at"] = review["created_at"]
        answer: dict[str, Any] = self.call("PATCH", self._review_path(review["task_instance"]), body)
        return answer

    def wait_for(
        self, task_id: str, *, dag_id: str = "~", timeout: float = 300, alive: Callable[[], bool] = lambda: True
    ) -> dict[str, Any]:
        """The open review of ``task_id``, once there is one (polled; ``alive()`` False gives up early)."""
        deadline = time.monotonic() + timeout
        while True:
            for review in self.pending(dag_id):
                if review["task_instance"]["task_id"] == task_id:
                    return review
            if time.monotonic() > deadline or not alive():
                raise ReviewerError(f"no open review of task '{task_id}' after {timeout:.0f} s")
            time.sleep(0.25)
