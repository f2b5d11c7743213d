"""The processes of the deployment test: started in their own process groups, stopped by pid, leak-checked.

:class:`Processes` starts each service with a log file of its own and stops it by pid: its signal to
its process group, then SIGKILL to whatever of its process tree is left (Airflow puts each task runner
in a group of its own).  Each service's tree is recorded whenever it is looked at, so that the end of
the run can check that every process ever seen in it is gone; :func:`our_processes` finds the others
by the run's marker (``MARKER_ENV`` in their environment) or their working directory.  Nothing here
knows about Airflow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from airflow_provider_candela.testing import wait_until

MARKER_ENV = "CANDELA_DEPLOY_TEST_RUN"
START = time.monotonic()  # the test's clock: log lines and the summary count from here

Snapshot = tuple[dict[int, list[int]], dict[int, int]]


class ServiceDied(RuntimeError):
    """A service exited while the test ran: the deployment is broken."""


def log(message: str) -> None:
    print(f"[deploy {time.monotonic() - START:6.1f}s] {message}", flush=True)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


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


def proc_snapshot() -> Snapshot:
    """``({parent pid: [child pids]}, {pid: start time})`` of every live process."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            children.setdefault(info[0], []).append(int(entry.name))
            starts[int(entry.name)] = info[1]
    return children, starts


def process_tree(root: int, snapshot: Snapshot | None = None) -> dict[int, int]:
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


def _gone_within(tree: dict[int, int], seconds: float) -> bool:
    try:
        wait_until(lambda: not alive(tree), timeout=seconds, interval=0.1)
    except AssertionError:
        return False
    return True


def wait_until_gone(tree: dict[int, int], what: str, grace: float) -> None:
    """Give the processes of ``tree`` ``grace`` seconds to exit, then SIGKILL what is left."""
    if not _gone_within(tree, grace):
        log(f"{what}: SIGKILL to {alive(tree)}")
        signal_tree(tree, signal.SIGKILL)
        _gone_within(tree, 5.0)


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

    def refresh_tree(self, snapshot: Snapshot | None = None) -> dict[int, int]:
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
            raise ValueError(f"{name} is already running")
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
                raise ServiceDied(
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
