"""Run every DAG of one or more folders with ``airflow dags test`` against a local Candela emulator.

    python -m airflow_provider_candela.testing.run_dags [DAG_FOLDER ...] [--pat] [--catalog FILE] [--keep]

For each folder: a throw-away Airflow home (SQLite, no example DAGs, ``dags_folder`` = the folder), ``airflow
db migrate``, ``AIRFLOW_CONN_CANDELA_DEFAULT`` pointing at the emulator, then ``airflow dags test <dag_id>``
for every DAG found in the folder.  It prints each DAG's state, duration, task states and return values (as
read back from the Airflow metadata database), then what the emulator saw (requests, token grants, TCP
connections, sessions started and sessions left running), and stops the emulator.  Nothing is left running,
also on Ctrl-C or failure.  Exit code: 0 when every DAG run succeeded, no DAG file failed to import and no
Candela session was left running; 1 otherwise; 130 when interrupted.

A DAG with a task that waits for a person's review (``require_approval=True``, Airflow 3.1+) runs with an ``airflow
api-server`` beside it, sharing its metadata database: each review is approved, unedited, through Airflow's REST
API, as a person would in the UI, and the output says so.  Before Airflow 3.3 such a DAG is skipped, and the output
says why: there the review waits deferred on Airflow's HITL trigger, which ``airflow dags test`` cannot serve (it
needs a scheduler and a triggerer).  A skipped DAG is no failure.

Your real Airflow configuration is not used: ``AIRFLOW__*`` settings and ``AIRFLOW_HOME`` are dropped from the
environment of the Airflow commands (``AIRFLOW_CONN_*`` and ``AIRFLOW_VAR_*`` are kept, so DAGs can still
read other connections and variables).  The Airflow home is deleted afterwards, also after a failure (the last
lines of a failed command are printed); ``--keep`` keeps it, and its ``run-dags-logs/`` folder with the full
output of every command, in a ``candela-run-dags-*`` folder of the temporary directory (the run prints which).

The DAG files are parsed, and the runs read back, by ``_dag_worker`` processes inside the temporary home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from airflow_provider_candela.testing import CandelaEmulator

_TAIL_LINES = 40
_VALUE_WIDTH = 100


class _Interrupted(Exception):
    """Raised in the main thread by SIGTERM, so that clean-up runs as on Ctrl-C."""


@dataclass
class _DagResult:
    dag_id: str
    folder: Path
    exit_code: int
    wall_seconds: float
    log: Path
    run: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.run is not None and self.run["state"] == "success"


@dataclass
class _Runner:
    """Runs child commands in their own process group, so that they and all their children can be ended."""

    verbose: bool
    current: subprocess.Popen[str] | None = None
    stray_groups: list[int] = field(default_factory=list)

    def run(
        self, cmd: list[str], env: dict[str, str], log: Path, timeout: float, echo: bool = False
    ) -> tuple[int, str]:
        """Run ``cmd``; its stdout+stderr go to ``log`` (and to the console with ``--verbose``)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        captured: list[str] = []
        with log.open("w", encoding="utf-8") as sink:
            sink.write("$ " + " ".join(cmd) + "\n")
            sink.flush()
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            self.current = proc
            pump = threading.Thread(
                target=self._pump, args=(proc.stdout, sink, captured, self.verbose or echo), daemon=True
            )
            pump.start()
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"   timed out after {timeout:.0f} s: stopping it", flush=True)
                self.end_current()
                code = 124
            finally:  # also on Ctrl-C: end the command first, then collect the rest of its output
                self.end_current()
                self._kill_group(proc.pid)
                pump.join(timeout=10)
                self.current = None
        return code, "".join(captured)

    @staticmethod
    def _pump(stream: IO[str] | None, sink: IO[str], captured: list[str], echo: bool) -> None:
        if stream is None:
            return
        for line in stream:
            sink.write(line)
            captured.append(line)
            if echo:
                sys.stdout.write("   | " + line)
                sys.stdout.flush()

    def _kill_group(self, pgid: int) -> None:
        """End whatever the child left behind in its process group."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        self.stray_groups.append(pgid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def end_current(self) -> None:
        """SIGTERM the running command's process group, SIGKILL after 10 s."""
        proc = self.current
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _airflow_env(home: Path, folder: Path, connection_json: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AIRFLOW__") or k == "AIRFLOW_HOME")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_CANDELA_DEFAULT": connection_json,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _worker(runner: _Runner, command: list[str], env: dict[str, str], log: Path) -> Any:
    """Run ``_dag_worker`` in the temporary Airflow home; return the JSON line it prints last."""
    code, output = runner.run(
        [sys.executable, "-m", "airflow_provider_candela.testing._dag_worker", *command], env, log, timeout=300
    )
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"{command[0]} failed (exit code {code}; log {log.name}):\n{_tail(output)}")
    return json.loads(lines[-1])


def _tail(text: str, n: int = _TAIL_LINES) -> str:
    return "\n".join("   | " + line for line in text.splitlines()[-n:])


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _print_result(result: _DagResult) -> None:
    run = result.run
    mark = "OK  " if result.ok else "FAIL"
    if run is None:
        print(f"{mark} {result.dag_id}: no DAG run recorded (exit code {result.exit_code})")
        return
    print(
        f"{mark} {result.dag_id}: {run['state']} in {_fmt_seconds(run['duration'])} "
        f"(run {run['run_id']}; `airflow dags test` took {result.wall_seconds:.1f} s, exit code {result.exit_code})"
    )
    tasks = run["tasks"]
    if not tasks:
        return
    names = [t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else "") for t in tasks]
    width = max(12, *(len(n) for n in names))
    print(f"     {'task':<{width}}  {'state':<16} {'duration':>9}  return value")
    for name, task in zip(names, tasks, strict=True):
        value = _short(task["return_value"]) if task["has_return_value"] else "-"
        state = str(task["state"])
        print(f"     {name:<{width}}  {state:<16} {_fmt_seconds(task['duration']):>9}  {value}")


def _object_id(value: Any) -> str:
    if isinstance(value, dict) and "identifier" in value:
        version = f":{value['version']}" if value.get("version") else ""
        return f"{value.get('scope')}/{value['identifier']}{version}"
    return str(value)


def _print_stats(stats: dict[str, Any]) -> list[str]:
    """Print what the emulator saw; return the users whose session is still running."""
    grants = stats.get("token_grants", {})
    running = {user: sid for user, sid in stats.get("running_sessions", {}).items() if sid}
    print("\nWhat the Candela emulator saw:")
    print(f"  requests:          {stats.get('requests_total', 0)}")
    print(
        f"  token grants:      {sum(grants.values())} ("
        + ", ".join(f"{kind} {count}" for kind, count in sorted(grants.items()))
        + ")"
    )
    print(f"  TCP connections:   {stats.get('tcp_connections', 0)}")
    print(f"  sessions started:  {stats.get('sessions_started', 0)}")
    left = ", ".join(f"{user}: {_object_id(sid)}" for user, sid in sorted(running.items()))
    print(f"  left running:      {len(running)}" + (f" ({left})" if running else ""))
    routes = stats.get("requests", {})
    if routes:
        width = max(len(route) for route in routes)
        for route, statuses in sorted(routes.items(), key=lambda item: item[0].split(" ", 1)[::-1]):
            counts = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
            print(f"    {route:<{width}}  {counts}")
    return sorted(running)


class _AutoReviewer:
    """Approves every open review of the DAG being run, through the REST API of an api-server (a thread)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.reviewer = server.reviewer()
        self.dag_id = ""
        self.answered: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-dags-reviewer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            if not self.dag_id:
                continue
            try:
                for review in self.reviewer.pending(self.dag_id):
                    ti = review["task_instance"]
                    self.reviewer.respond(review, "Approve")
                    name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
                    self.answered.append(name)
                    print(
                        f"   review of {ti['dag_id']}.{name} answered through Airflow's REST API "
                        f"({self.server.url}): Approve, as user '{self.reviewer.username}'",
                        flush=True,
                    )
            except Exception as exc:  # reported, and the run times out or fails visibly
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.errors) > 20:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.stop()


def _run_folder(
    folder: Path, home: Path, connection_json: str, runner: _Runner, timeout: float
) -> tuple[list[_DagResult], dict[str, str], list[str]]:
    """Run every DAG of ``folder``: the results, the import errors, and the DAGs skipped (each said why)."""
    env = _airflow_env(home, folder, connection_json)
    logs = home / "run-dags-logs"
    print(f"\n==> {folder}: Airflow home {home}")
    started = time.monotonic()
    code, output = runner.run([sys.executable, "-m", "airflow", "db", "migrate"], env, logs / "db-migrate.log", 600)
    if code != 0:
        raise RuntimeError(f"`airflow db migrate` failed (exit code {code}):\n{_tail(output)}")
    print(f"   airflow db migrate: {time.monotonic() - started:.1f} s")
    found = _worker(runner, ["inspect", str(folder)], env, logs / "inspect.log")
    dags: dict[str, str] = found["dags"]
    import_errors: dict[str, str] = found["import_errors"]
    for path, error in import_errors.items():
        print(f"FAIL import error in {path}:\n{_tail(error, 20)}")
    print(f"   {len(dags)} DAG(s): {', '.join(dags) or '-'}")
    reviewed = set(found.get("reviewed", []))
    skipped: list[str] = []
    if reviewed and not found["reviews_in_dags_test"]:
        skipped = sorted(reviewed)
        print(
            f"   SKIP {', '.join(skipped)}: a person reviews an answer there (require_approval), and on Airflow "
            f"{found['airflow_version']} `airflow dags test` cannot serve a review (it waits deferred on Airflow's "
            "HITL trigger, which needs a scheduler and a triggerer). Run it on a deployment, or on Airflow 3.3+ "
            "where this runner answers its review.",
            flush=True,
        )
        dags = {dag_id: path for dag_id, path in dags.items() if dag_id not in reviewed}
        reviewed = set()
    reviewer = None
    if reviewed:
        from airflow_provider_candela.testing._reviewer import ApiServer

        started = time.monotonic()
        reviewer = _AutoReviewer(ApiServer.start(env))
        print(
            f"   {', '.join(sorted(reviewed))} wait(s) for a person's review: airflow api-server at "
            f"{reviewer.server.url} ({time.monotonic() - started:.1f} s); each review is approved through its "
            "REST API",
            flush=True,
        )
    results: list[_DagResult] = []
    try:
        for dag_id in dags:
            log = logs / f"{dag_id}.log"
            print(f"   airflow dags test {dag_id} ...", flush=True)
            if reviewer is not None:
                reviewer.dag_id = dag_id if dag_id in reviewed else ""
            started = time.monotonic()
            code, output = runner.run([sys.executable, "-m", "airflow", "dags", "test", dag_id], env, log, timeout)
            results.append(_DagResult(dag_id, folder, code, time.monotonic() - started, log))
            if code != 0 and not runner.verbose:
                print(f"   exit code {code}; last lines of {log}:\n{_tail(output)}")
    finally:
        if reviewer is not None:
            reviewer.close()
            for error in reviewer.errors[:3]:
                print(f"   the reviewer failed: {error}")
    if results:
        runs = _worker(runner, ["report", *(r.dag_id for r in results)], env, logs / "report.log")
        for result in results:
            result.run = runs.get(result.dag_id)
    return results, import_errors, skipped


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_candela.testing.run_dags",
        description="Run every DAG of the given folders with `airflow dags test` against a local Candela "
        "emulator, in a temporary Airflow home, and report the results and what the emulator saw.",
    )
    parser.add_argument(
        "folders", nargs="*", type=Path, metavar="DAG_FOLDER", help="folders of DAG files (default: ./dags)"
    )
    parser.add_argument("--pat", action="store_true", help="connect with the personal access token, not OAuth2")
    parser.add_argument("--catalog", metavar="FILE", help="emulator catalogue (JSON): your apps, models, users")
    parser.add_argument("--event-delay", type=float, help="emulator delay before each agent event, seconds")
    parser.add_argument("--slot-startup-seconds", type=float, help="emulator slot start-up time, seconds")
    parser.add_argument("--timeout", type=float, default=900.0, help="limit per DAG run, seconds (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary Airflow home and logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the output of every Airflow command")
    args = parser.parse_args(argv)
    if not args.folders:
        args.folders = [Path("dags")]
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"DAG folder {folder} does not exist (give the folder that holds your DAG files)")
    args.folders = [folder.resolve() for folder in args.folders]
    return args


def _port_open(host: str, port: int) -> bool:
    """True if something still accepts connections on the emulator's port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    flags: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("catalog", "event_delay", "slot_startup_seconds")
        if getattr(args, key) is not None
    }
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupted)
    # Ctrl-C must interrupt even when this process was started with SIGINT ignored (as a shell's
    # background job is), so that the clean-up below always runs.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    emulator = CandelaEmulator(**flags)
    runner = _Runner(verbose=args.verbose)
    work = Path(tempfile.mkdtemp(prefix="candela-run-dags-"))
    results: list[_DagResult] = []
    import_errors: dict[str, str] = {}
    skipped: list[str] = []
    stats: dict[str, Any] | None = None
    error: str | None = None
    interrupted = False
    try:
        emulator.start()
        print(f"Candela emulator: {emulator.url} (user {emulator.username}, {'PAT' if args.pat else 'OAuth2'})")
        for index, folder in enumerate(args.folders):
            found, errors, not_run = _run_folder(
                folder, work / f"home-{index}", emulator.connection_json(pat=args.pat), runner, args.timeout
            )
            results += found
            import_errors.update(errors)
            skipped += not_run
        stats = emulator.stats()
    except (KeyboardInterrupt, _Interrupted):
        interrupted = True
        print("\nInterrupted: stopping what is running", flush=True)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if emulator.port is not None and not emulator.running:
            error = f"the Candela emulator exited unexpectedly ({error})"
    finally:
        runner.end_current()
        if stats is None and emulator.running:
            try:
                stats = emulator.stats()
            except Exception:  # the emulator may be gone already; the report says so
                stats = None
        emulator.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)

    print("\n==> Results")
    for result in results:
        _print_result(result)
    for dag_id in skipped:
        print(f"SKIP {dag_id}: not run (its review needs a scheduler and a triggerer before Airflow 3.3)")
    left_running = _print_stats(stats) if stats is not None else []
    if runner.stray_groups:
        print(f"Ended {len(runner.stray_groups)} process group(s) that Airflow commands left behind.")
    still_up = emulator.running or (emulator.port is not None and _port_open(emulator.host, emulator.port))
    print("\nEmulator STILL RUNNING" if still_up else "\nEmulator stopped; no process left running.")

    failed = [r.dag_id for r in results if not r.ok]
    problems: list[str] = []
    if error:
        problems.append(error)
    if interrupted:
        problems.append("interrupted")
    if import_errors:
        problems.append(f"{len(import_errors)} DAG file(s) failed to import")
    if failed:
        problems.append(f"{len(failed)} DAG run(s) failed: {', '.join(failed)}")
    if still_up:
        problems.append(f"the emulator on port {emulator.port} did not stop")
    if left_running:
        problems.append(f"Candela session(s) left running for: {', '.join(left_running)}")
    if not results and not skipped and not problems:
        problems.append("no DAG found")
    if args.keep:
        print(f"Airflow home(s) and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
        if problems:
            print("Airflow home(s) and logs deleted; run again with --keep to keep them.")
    if problems:
        print("\nFAILED: " + "; ".join(problems))
        return 130 if interrupted else 1
    print(
        f"\nAll {len(results)} DAG run(s) succeeded."
        + (f" {len(skipped)} skipped: {', '.join(skipped)}." if skipped else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
