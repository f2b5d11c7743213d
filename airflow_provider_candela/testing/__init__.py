"""Run the Candela emulator from tests (a pytest plugin) or scripts.

``CandelaEmulator`` starts ``python -m airflow_provider_candela.emulator`` as a subprocess on a free
loopback port and drives its ``/_emulator/`` controls.  The pytest fixtures, once a test suite enables
this module as a pytest plugin (``pytest_plugins = ["airflow_provider_candela.testing"]`` in its top-level
``conftest.py``, or ``pytest -p airflow_provider_candela.testing``; installing the provider loads nothing
into anyone's pytest runs):

* ``candela_emulator_server`` (session scope): one emulator process for the whole run;
* ``candela_emulator`` (function scope): the same server, reset (sessions, slots, tokens, faults,
  statistics) and with its start-up config restored;
* ``candela_connection`` (function scope): sets ``AIRFLOW_CONN_CANDELA_DEFAULT`` to a connection
  pointing at the emulator and yields the connection id ``"candela_default"``.

:func:`run_dag` runs a DAG object once with ``dag.test()`` and returns its task states and XComs;
:func:`wait_until` polls a condition with a deadline.  ``python -m
airflow_provider_candela.testing.run_dags`` runs every DAG of a folder with ``airflow dags test``
against an emulator.

As a pytest plugin it is imported at the start of the run: only the standard library at module level.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, TypeVar

from airflow_provider_candela.testing._reviewer import ApiServer, Reviewer, ReviewerError, ReviewReplacedError
from airflow_provider_candela.testing._run_dag import DagRunResult, run_dag
from airflow_provider_candela.testing._silent import SilentCandela, SilentStats

__all__ = [
    "ApiServer",
    "CandelaEmulator",
    "CandelaEmulatorError",
    "DagRunResult",
    "ReviewReplacedError",
    "Reviewer",
    "ReviewerError",
    "SilentCandela",
    "SilentStats",
    "StatsdListener",
    "candela_connection",
    "candela_emulator",
    "candela_emulator_server",
    "run_dag",
    "wait_until",
]

_T = TypeVar("_T")

_READY_PREFIX: Final = "Candela emulator listening on "
_DEFAULTS: Final[dict[str, Any]] = {
    "host": "127.0.0.1",
    "username": "demo",
    "password": "demo-password",
    "client_id": "demo-client",
    "client_secret": "demo-client-secret",
    "access_token": "demo-pat",
    "domain": "demo",
}
_RESTORABLE: Final = ("token_ttl", "slot_startup_seconds", "slot_start_fails", "event_delay", "agent_chat_events")
_RESTORE_DEFAULTS: Final[dict[str, Any]] = {
    "token_ttl": 3600.0,
    "slot_startup_seconds": 0.3,
    "slot_start_fails": False,
    "event_delay": 0.0,
    "agent_chat_events": None,
}


class StatsdListener:
    """A StatsD server on a loopback UDP port that keeps every metric line it receives (for tests).

    Point Airflow at it (``[metrics] statsd_on``, ``statsd_host = 127.0.0.1``, ``statsd_port = listener.port``,
    and ``statsd_influxdb_enabled`` for the tags), then look the Candela metrics up with :meth:`named`.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="statsd-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.extend(data.decode("utf-8", "replace").splitlines())

    def named(self, name: str, **tags: str) -> list[str]:
        """The lines of metric ``name`` (any prefix, e.g. ``airflow.``) carrying every tag of ``tags``."""
        found = [line for line in self.lines if line.split(",", 1)[0].split(":", 1)[0].endswith(name)]
        return [line for line in found if all(f"{k}={v}" in line for k, v in tags.items())]

    def close(self) -> None:
        """Stop listening and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def wait_until(condition: Callable[[], _T | None], timeout: float = 20.0, interval: float = 0.02) -> _T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout`` s.

    For tests that wait on the emulator (``wait_until(lambda: emu.stats()["sessions_started"] >= 1)``)
    instead of sleeping a fixed time.

    :param condition: called until it returns something truthy.
    :param timeout: seconds to keep trying.
    :param interval: seconds between two calls.
    :raises AssertionError: with the last value seen, when the condition is not met in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


def _unverified_tls() -> ssl.SSLContext:
    """TLS without certificate checks, for the control calls to our own loopback subprocess only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class CandelaEmulatorError(RuntimeError):
    """The emulator did not start, or a control call failed."""


class CandelaEmulator:
    """A Candela emulator subprocess on a loopback port.

    Keyword arguments are the command-line flags with ``_`` for ``-`` (``token_ttl=1``,
    ``slot_startup_seconds=0``, ``catalog="catalog.json"``, ``fault=[{...}]`` ...); ``port=None``
    (the default) picks a free port; ``ssl_certfile=`` and ``ssl_keyfile=`` serve HTTPS (``url`` then
    starts with ``https://``; the control calls of this class do not verify that certificate, they
    only ever talk to this loopback subprocess).  Use as a context manager or call :meth:`start` /
    :meth:`stop`::

        with CandelaEmulator(token_ttl=5) as emulator:
            print(emulator.url, emulator.token_url, emulator.username, emulator.password)

    :param startup_timeout: seconds :meth:`start` waits for the emulator to answer.
    :param flags: the command-line flags, as above.
    """

    def __init__(self, *, startup_timeout: float = 20.0, **flags: Any) -> None:
        self.flags: dict[str, Any] = {**_DEFAULTS, **flags}
        self.startup_timeout = startup_timeout
        self.host: str = str(self.flags["host"])
        self.username: str = str(self.flags["username"])
        self.password: str = str(self.flags["password"])
        self.client_id: str = str(self.flags["client_id"])
        self.client_secret: str = str(self.flags["client_secret"])
        self.access_token: str | None = self.flags["access_token"] or None
        self.port: int | None = flags.get("port")
        self.url = ""
        self.token_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._catalog_file: Path | None = None  # a dict catalogue, written for the subprocess; removed in stop()

    # ------------------------------------------------------------------ lifecycle
    def command(self, port: int) -> list[str]:
        """The command line :meth:`start` runs: the emulator with this object's flags, on ``port``.

        For a caller that runs the process under its own supervisor (log file, process group) and then
        sets :attr:`url` and :attr:`token_url` itself, e.g. the deployment test.
        """
        cmd = [sys.executable, "-m", "airflow_provider_candela.emulator"]
        for name, value in self.flags.items():
            if name == "port" or value is None or value is False:
                continue
            flag = "--" + name.replace("_", "-")
            if value is True:  # a switch such as --slot-start-fails
                cmd.append(flag)
                continue
            if name in ("fault", "faults"):
                for fault in value if isinstance(value, list | tuple) else [value]:
                    cmd.append("--fault=" + (fault if isinstance(fault, str) else json.dumps(fault)))
            elif name == "catalog" and isinstance(value, dict):
                with tempfile.NamedTemporaryFile(
                    "w", suffix=".json", prefix="candela-catalog-", delete=False
                ) as handle:
                    json.dump(value, handle)
                self._catalog_file = Path(handle.name)
                cmd.append(f"{flag}={handle.name}")
            else:
                # "--flag=value": a value may start with '-' (random secrets do), which argparse
                # would otherwise take for an option.
                cmd.append(f"{flag}={value}")
        cmd += ["--port", str(port)]
        return cmd

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> CandelaEmulator:
        """Start the subprocess and wait until it answers; returns self."""
        if self.running:
            return self
        self._stderr = tempfile.TemporaryFile("w+", prefix="candela-emulator-stderr-")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            self.command(self.port if self.port is not None else 0),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        url = self._read_url()
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.token_url = f"{url}/oauth2/token"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self._control("GET", "/_emulator/config", timeout=2.0)
                return self
            except (OSError, CandelaEmulatorError):
                if time.monotonic() > deadline or not self.running:
                    self.stop()
                    raise CandelaEmulatorError(f"the Candela emulator at {url} did not answer") from None
                time.sleep(0.02)

    def _read_url(self) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        stdout = process.stdout
        found: list[str] = []
        ready = threading.Event()

        def reader() -> None:
            for line in stdout:
                if not found and line.startswith(_READY_PREFIX):
                    found.append(line[len(_READY_PREFIX) :].strip())
                    ready.set()
            ready.set()

        threading.Thread(target=reader, name="candela-emulator-stdout", daemon=True).start()
        if not ready.wait(self.startup_timeout) or not found:
            error = self._stderr_text()
            self.stop()
            raise CandelaEmulatorError(
                f"the Candela emulator did not start within {self.startup_timeout:.0f} s "
                f"(command: {' '.join(process.args)}); stderr:\n{error}"  # type: ignore[arg-type]
            )
        return found[0]

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-4000:]
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Stop the subprocess (SIGTERM, then SIGKILL after 5 s).  Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._catalog_file is not None:
            self._catalog_file.unlink(missing_ok=True)
            self._catalog_file = None

    def restart(self) -> CandelaEmulator:
        """Stop and start again on the same port (state is lost, as after a server restart)."""
        self.stop()
        return self.start()

    def __enter__(self) -> CandelaEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ controls
    def _control(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        context = _unverified_tls() if self.url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise CandelaEmulatorError(f"{method} {path} failed with HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: requests per route and status, token grants, TCP connections ..."""
        result: dict[str, Any] = self._control("GET", "/_emulator/stats")
        return result

    def request_count(self, route: str, status: int | str | None = None) -> int:
        """How many ``route`` requests (``"GET /sessions/exists"``) it answered; with ``status``, with that status."""
        by_status: dict[str, int] = self.stats()["requests"].get(route, {})
        return by_status.get(str(status), 0) if status is not None else sum(by_status.values())

    def reset(self) -> None:
        """Forget sessions, slots, tokens, faults and statistics (users and config stay)."""
        self._control("POST", "/_emulator/reset")

    def add_fault(self, **fault: Any) -> None:
        """Inject a fault, e.g. ``add_fault(match="POST /session", status=503, retry_after="1")``."""
        self._control("POST", "/_emulator/faults", fault)

    def faults(self) -> list[dict[str, Any]]:
        """The active faults with their remaining counts."""
        result: list[dict[str, Any]] = self._control("GET", "/_emulator/faults")
        return result

    def clear_faults(self) -> None:
        """``DELETE /_emulator/faults``: remove every fault not yet used up."""
        self._control("DELETE", "/_emulator/faults")

    def tokens(self) -> dict[str, list[str]]:
        """``GET /_emulator/tokens``: every access and refresh token issued since the last reset (for leak checks)."""
        result: dict[str, list[str]] = self._control("GET", "/_emulator/tokens")
        return result

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far (refresh tokens and the PAT stay valid)."""
        self._control("POST", "/_emulator/expire_tokens")

    def configure(self, **config: Any) -> dict[str, Any]:
        """Change the emulator's settings: ``event_delay``, ``token_ttl``, ``slot_startup_seconds``, ...

        The keys: ``event_delay``, ``token_ttl``, ``slot_startup_seconds``, ``slot_start_fails`` and
        ``agent_chat_events``.

        ``slot_start_fails=True``: slots assigned from now on end in ERRORED instead of HOST_READY.
        """
        result: dict[str, Any] = self._control("PATCH", "/_emulator/config", config)
        return result

    def add_user(self, username: str, password: str) -> None:
        """Add (or change the password of) a user; every user has their own slot."""
        self._control("POST", "/_emulator/users", {"username": username, "password": password})

    def restore_config(self) -> None:
        """Put back the config the emulator was started with."""
        self.configure(**{key: self.flags.get(key, _RESTORE_DEFAULTS[key]) for key in _RESTORABLE})

    # ------------------------------------------------------------------ Airflow connection
    def connection_extra(self, pat: bool = False) -> dict[str, Any]:
        """The ``extra`` of a Candela connection to this emulator (OAuth2 client, or the PAT)."""
        if pat:
            return {"access_token": self.access_token}
        return {"token_url": self.token_url, "client_id": self.client_id, "client_secret": self.client_secret}

    def connection_json(self, pat: bool = False, **extra_overrides: Any) -> str:
        """JSON for ``AIRFLOW_CONN_CANDELA_DEFAULT`` (conn_type candela, host = the API URL)."""
        conn: dict[str, Any] = {"conn_type": "candela", "host": self.url}
        if not pat:
            conn["login"] = self.username
            conn["password"] = self.password
        conn["extra"] = {**self.connection_extra(pat), **extra_overrides}
        return json.dumps(conn)

    def __repr__(self) -> str:
        return f"CandelaEmulator(url={self.url!r}, running={self.running})"


try:
    import pytest
except ImportError:  # pragma: no cover - usable without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def candela_emulator_server() -> Iterator[CandelaEmulator]:
        """One Candela emulator subprocess for the whole test session."""
        emulator = CandelaEmulator().start()
        try:
            yield emulator
        finally:
            emulator.stop()

    @pytest.fixture
    def candela_emulator(candela_emulator_server: CandelaEmulator) -> Iterator[CandelaEmulator]:
        """The session's emulator, reset to a clean state (restarted if a test stopped it)."""
        if not candela_emulator_server.running:
            candela_emulator_server.start()
        candela_emulator_server.reset()
        candela_emulator_server.restore_config()
        yield candela_emulator_server

    @pytest.fixture
    def candela_connection(candela_emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        """``AIRFLOW_CONN_CANDELA_DEFAULT`` pointing at the emulator; yields ``"candela_default"``."""
        monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", candela_emulator.connection_json())
        yield "candela_default"
