"""Suite-wide setup: an isolated Airflow home (SQLite, no example DAGs) for every test process.

The environment is set at import time, before any test module imports Airflow, so Airflow reads
this home and never the user's ``~/airflow``.  The Candela emulator fixtures come from the
package's pytest plugin (``airflow_provider_candela.testing``), enabled by ``-p`` in pyproject.toml's
pytest ``addopts``, as a user enables it.

The metadata database is migrated once per ``pytest`` run: the first process that needs it (of the
pytest-xdist workers ``make test`` starts) runs ``airflow db migrate`` into a folder the run's processes
share, under a lock, and every process copies that file into its own home.

The session checks that it leaves nothing behind: every temporary file of the suite and of the
processes it starts goes to a folder of its own (``TMPDIR``; pytest's ``tmp_path`` folders stay
where pytest keeps them), and every process it starts carries ``CANDELA_TEST_SESSION`` in its
environment.  At the end, ``candela-*`` entries left in that folder and processes still running
fail the session (the last test gets the error), then both are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela.testing import wait_until

_TEMP = Path(tempfile.mkdtemp(prefix="candela-tests-"))
atexit.register(shutil.rmtree, _TEMP, True)  # also when no test ran (e.g. --collect-only)
_SESSION_VAR = "CANDELA_TEST_SESSION"
os.environ[_SESSION_VAR] = uuid.uuid4().hex
_HOME = _TEMP / "airflow-home"
_HOME.mkdir()
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ.pop("AIRFLOW_CONN_CANDELA_DEFAULT", None)
# Shared by the processes of one pytest run: pytest-xdist's workers inherit the variable from the process that ran
# this first (and that process alone removes the folder when it exits).
_SHARED_VAR = "CANDELA_TESTS_SHARED"
if _SHARED_VAR not in os.environ:
    os.environ[_SHARED_VAR] = tempfile.mkdtemp(prefix="candela-tests-shared-")
    atexit.register(shutil.rmtree, os.environ[_SHARED_VAR], True)


# The test files that take longest (each starts Airflow processes, a browser or a child that imports Airflow; from
# the summary at the end of `make test`), longest first. They run first, so that the run's processes share the
# long ones instead of one process ending the run with one of them. `make test` keeps this order
# (--no-loadscope-reorder; pytest-xdist would otherwise hand out the files with the most tests first).
_LONGEST_FIRST = (
    "tests/reliability/test_kills_and_deadlines.py",
    "tests/ui/test_candela_page_api.py",
    "tests/batch/test_batch_kill.py",
    "tests/e2e/test_example_dags.py",
    "tests/ui/test_airflow_ui_connection.py",
    "tests/compat/test_run_dags.py",
    "tests/ui/test_docs_site.py",
    "tests/ui/test_review_ui.py",
    "tests/review/test_review.py",
    "tests/reliability/test_faults.py",
    "tests/reliability/test_secrets.py",
    "tests/operators/test_one_hook_per_task.py",
    "tests/ui/test_candela_page.py",
    "tests/compat/test_review_deferred.py",
    "tests/ui/test_candela_page_forgery.py",
    "tests/reliability/test_cleanup.py",
    "tests/reliability/test_load.py",
    "tests/reliability/test_bad_input.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of ``_LONGEST_FIRST`` first, in that order; the others after them, as collected."""
    rank = {path: index for index, path in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: a file's order stays


def _processes_with_env(name: str, value: str) -> list[str]:
    """Live processes (``"pid: command line"``) whose environment holds ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in environ:
            found.append(f"{pid}: {cmdline.strip()}")
    return found


@pytest.fixture
def processes_with_env() -> Callable[[str, str], list[str]]:
    """``processes_with_env(name, value)``: the live processes whose environment holds ``name=value``."""
    return _processes_with_env


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the session if its tests leave ``candela-*`` temporary files or running processes behind."""
    tmp_path_factory.getbasetemp()  # pytest's own folders: in the system's temporary directory, as usual
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tempfile.tempdir = str(_TEMP)
    try:
        yield
    finally:
        session = os.environ[_SESSION_VAR]
        with contextlib.suppress(AssertionError):  # a process may still be exiting
            wait_until(lambda: not _processes_with_env(_SESSION_VAR, session), timeout=5, interval=0.2)
        processes = _processes_with_env(_SESSION_VAR, session)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(process.split(":", 1)[0]), signal.SIGKILL)
        shutil.rmtree(_HOME, ignore_errors=True)
        files = sorted(entry.name for entry in _TEMP.iterdir() if entry.name.startswith("candela-"))
        tempfile.tempdir = None
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(_TEMP, ignore_errors=True)
    problems = [f"process still running (now killed): {process}" for process in processes]
    problems += [f"left in the temporary directory (now removed): {name}" for name in files]
    assert not problems, "The test session left things behind:\n" + "\n".join(problems)


def copy_migrated_database(home: Path) -> Path:
    """Put a migrated SQLite metadata database at ``home/airflow.db``; returns its path.

    The run's first call migrates one (``airflow db migrate`` in a home of its own, under a lock the run's
    processes share); every call copies that file.
    """
    shared = Path(os.environ[_SHARED_VAR])
    template = shared / "airflow.db"
    with (shared / "migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not template.exists():
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
            env.update(
                AIRFLOW_HOME=str(shared / "home"),
                AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{shared / 'migrating.db'}",
            )
            airflow = Path(sys.executable).with_name("airflow")
            done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=env, check=False)
            assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            (shared / "migrating.db").rename(template)  # whole or absent: a failed migration is tried again
    target = home / "airflow.db"
    shutil.copyfile(template, target)
    return target


@pytest.fixture(scope="session")
def migrated_database() -> Callable[[Path], Path]:
    """``migrated_database(home)``: :func:`copy_migrated_database`, for the fixtures of other folders."""
    return copy_migrated_database


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """The suite's SQLite metadata database (needed by ``run_dag()``), migrated once per run and copied."""
    copy_migrated_database(_HOME)
    yield _HOME


@pytest.fixture
def candela(candela_emulator: Any, candela_connection: str) -> Iterator[Any]:
    """The reset emulator with ``candela_default`` pointing at it and instant slot start-up."""
    candela_emulator.configure(slot_startup_seconds=0)
    yield candela_emulator


@pytest.fixture(scope="session")
def api_server(airflow_db: Path) -> Iterator[Any]:
    """A real ``airflow api-server`` over the suite's Airflow home (it shares the metadata database), for reviews."""
    from airflow_provider_candela.testing import ApiServer

    server = ApiServer.start(dict(os.environ))
    try:
        yield server
    finally:
        server.stop()
