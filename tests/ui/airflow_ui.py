"""Helpers of the browser test: check for Chromium, install Playwright, run ``airflow api-server``, wait.

The processes started here are stopped by the process group of the child that was started (each
runs in its own session), never by name. Nothing waits a fixed time: every wait polls a condition
against a deadline.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela.testing import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Flags this closed network needs: without them Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
ADMIN_USER = "admin"
#: a user of the viewer role: may read DAGs, not connections
VIEWER_USER = "viewer"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """:func:`wait_until`, raising a ``TimeoutError`` that names ``what`` after ``timeout`` s."""
    try:
        return wait_until(condition, timeout, interval)
    except AssertionError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def require_chromium() -> Path:
    """Debian's chromium and chromium-driver, installed beforehand by ``make system-deps``; fails clearly if missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make system-deps` as root (chromium, chromium-driver)")
    return CHROMIUM


def ensure_playwright() -> None:
    """Make Playwright's Python package importable, installing it into this venv when missing.

    Only the package (with its bundled node driver) is installed; no browser is ever downloaded.
    ``make ui-test`` installs it beforehand; this covers a bare ``pytest tests``.
    """
    try:
        importlib.import_module("playwright.sync_api")
        return
    except ImportError:
        pass
    if shutil.which("uv"):
        cmd = ["uv", "pip", "install", "--python", sys.executable, "playwright"]
    elif os.environ.get("UV"):  # the Makefile exports UV="python3 -m uv"
        cmd = [*shlex.split(os.environ["UV"]), "pip", "install", "--python", sys.executable, "playwright"]
    else:
        cmd = [sys.executable, "-m", "pip", "install", "playwright"]
    done = _run(cmd, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"installing playwright failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    importlib.invalidate_caches()
    importlib.import_module("playwright.sync_api")


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run ``airflow <args>`` with ``env``; return stdout (fails the test on a non-zero exit)."""
    done = _run([AIRFLOW, *args], timeout=timeout, env=env)
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass
class AirflowServer:
    """A running ``airflow api-server`` with its own AIRFLOW_HOME and SQLite database."""

    url: str
    username: str
    password: str
    home: Path
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]
    #: every user's password (the admin's and those of ``users``), by user name
    passwords: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run ``airflow <args>`` against this server's home and database; return stdout."""
        return airflow_cli(self.env, *args, timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop the server: its own process group (it was started in a new session), TERM then KILL."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return bool(body.get("metadatabase", {}).get("status") == "healthy")


def start_airflow_server(
    home: Path,
    timeout: float = 120,
    users: dict[str, str] | None = None,
    database: Callable[[Path], Path] | None = None,
) -> AirflowServer:
    """``airflow db migrate`` then ``airflow api-server`` on a free loopback port, healthy on return.

    ``database(home)``, when given, puts a migrated database at ``home/airflow.db`` instead of the migration
    (the suite's ``copy_migrated_database``).

    SQLite in ``home``, no example DAGs, ``[core] test_connection = Enabled``, and the simple auth
    manager with one admin user (and ``users``: name -> role) whose random passwords are written to its
    passwords file.
    """
    roles = {ADMIN_USER: "admin", **(users or {})}
    passwords = {name: secrets.token_urlsafe(16) for name in roles}
    password = passwords[ADMIN_USER]
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{role}" for name, role in roles.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__BASE_URL": url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if database is None:
        airflow_cli(env, "db", "migrate", timeout=180)
    else:
        database(home)
    log_path = home / "api-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = AirflowServer(url, ADMIN_USER, password, home, env, log_path, process, passwords)
    try:
        wait_for(lambda: process.poll() is not None or _healthy(url), timeout, f"airflow api-server at {url}")
        if process.poll() is not None:
            raise RuntimeError(f"airflow api-server exited with {process.returncode}")
    except (TimeoutError, RuntimeError) as exc:
        server.stop()
        pytest.fail(f"{exc}\n{server.log_tail()}")
    return server
