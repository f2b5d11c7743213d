#!/usr/bin/env python3
"""The example DAGs on a real Airflow 3.3 deployment: separate processes, Celery, PostgreSQL, Redis.

Run by ``make deployment-test`` (``tests/deployment/run.sh`` installs what it needs first), with the
``.venv-deploy`` interpreter.  It starts the deployment (``deployment.py``), runs every scenario
(``scenarios.py``) and stops the deployment:

* a failed scenario is recorded with its traceback and the ones after it still run, except one that
  needs its result (``skipped``), and none once the deployment itself is broken (it did not start, or
  a service died: ``not run``);
* the summary lists the DAG runs, the deferrals and restarts seen, and a table of the scenarios
  (result, seconds); the exit code is 1 when any failed.

Every process the test started is stopped by pid (process group, then any descendant left), also on
failure or on SIGINT/SIGTERM; at the end no process carrying this run's marker and no port it used
may be left.  Options: ``--keep`` keeps the run directory (logs, Airflow home) after a success.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployment import Deployment, DeploymentTestError
from processes import START, ServiceDied, log, tail
from scenarios import ALL_DAGS, Scenario, scenarios

PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "FAILED", "skipped", "not run"


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP reached the test: stop everything and exit."""


@dataclass
class Outcome:
    name: str
    result: str = NOT_RUN
    seconds: float = 0.0
    detail: str = ""  # the traceback of a failure, or why it did not run


def stop_everything(d: Deployment) -> None:
    if problems := d.stop():
        raise DeploymentTestError("; ".join(problems))


START_UP = [
    Scenario("start PostgreSQL, Redis, Candela emulator", Deployment.start_servers),
    Scenario("start Airflow, 2 Celery workers; DAGs parsed", lambda d: d.start_airflow(ALL_DAGS)),
]
TEARDOWN = Scenario("stop everything; nothing left behind", stop_everything)


def run_one(d: Deployment, scenario: Scenario, outcome: Outcome) -> Exception | None:
    """Run ``scenario`` into ``outcome``; a failure is recorded with its traceback and returned.

    An :class:`Interrupted` is raised on, after it is recorded.
    """
    log(f"=== {scenario.name}")
    started = time.monotonic()
    outcome.result = FAILED
    try:
        scenario.run(d)
        outcome.result = PASSED
        return None
    except Exception as err:
        outcome.detail = traceback.format_exc()
        log(f"FAILED: {scenario.name}: {type(err).__name__}: {err}")
        return err
    except Interrupted as err:
        outcome.detail = f"interrupted by {err}"
        raise
    finally:
        outcome.seconds = time.monotonic() - started


def run_all(d: Deployment, plan: list[Scenario], outcomes: list[Outcome]) -> None:
    """Run the start-up, then every scenario whatever failed before it, unless the deployment is broken."""
    results: dict[str, str] = {}
    for scenario, outcome in zip(plan, outcomes, strict=True):
        if scenario.needs is not None and results.get(scenario.needs) != PASSED:
            outcome.result, outcome.detail = SKIPPED, f"needs '{scenario.needs}', which did not pass"
            error = None
        else:
            error = run_one(d, scenario, outcome)
        results[scenario.name] = outcome.result
        if error is not None and (scenario in START_UP or isinstance(error, ServiceDied)):
            log("the deployment is broken: the scenarios after this one do not run")
            return


def summary(d: Deployment, outcomes: list[Outcome]) -> None:
    print("\n" + "=" * 100)
    print("Deployment test summary (Airflow 3.3, CeleryExecutor, PostgreSQL, Redis, separate processes)")
    print("-" * 100)
    print(f"{'DAG':36} {'run':48} {'state':8} {'expected':8} {'secs':>5}")
    for r in d.records:
        secs = f"{r.seconds:5.0f}" if r.seconds is not None else "    ?"
        print(f"{r.dag_id:36} {r.run_id[:48]:48} {r.state:8} {r.expected:8} {secs}")
        if r.note:
            print(f"{'':36}   {r.note}")
    print("Deferrals seen:")
    for line in d.deferrals or ["(none)"]:
        print(f"  - {line}")
    print("Restarts survived:")
    for line in d.restarts or ["(none)"]:
        print(f"  - {line}")
    print("-" * 100)
    print(f"{'scenario':60} {'result':8} {'secs':>5}")
    for outcome in outcomes:
        secs = f"{outcome.seconds:5.0f}" if outcome.result in (PASSED, FAILED) else "    -"
        print(f"{outcome.name:60} {outcome.result:8} {secs}")
    print(f"{'total':60} {'':8} {time.monotonic() - START:5.0f}")
    for outcome in outcomes:
        if outcome.result != PASSED and outcome.detail:
            print(f"\n--- {outcome.result}: {outcome.name}\n{outcome.detail.rstrip()}")
    print("=" * 100)
    counts = {result: sum(o.result == result for o in outcomes) for result in (PASSED, FAILED, SKIPPED, NOT_RUN)}
    print(
        f"deployment-test: {len(outcomes)} scenarios: {counts[PASSED]} passed, {counts[FAILED]} failed, "
        f"{counts[SKIPPED]} skipped, {counts[NOT_RUN]} not run ({len(d.checks)} checks passed)",
        flush=True,
    )


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
    d = Deployment(workdir)
    plan = [*START_UP, *scenarios()]
    outcomes = [Outcome(scenario.name) for scenario in plan]
    try:
        run_all(d, plan, outcomes)
    except Interrupted as err:
        log(f"FAILED: interrupted by {err}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the teardown finish
        outcomes.append(Outcome(TEARDOWN.name))
        run_one(d, TEARDOWN, outcomes[-1])
    passed = all(outcome.result == PASSED for outcome in outcomes)
    if not passed:
        for service in d.procs.stopped:
            print(f"\n--- last lines of {service.log_path}")
            print(tail(service.log_path, 15))
    summary(d, outcomes)
    if passed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"run directory kept: {workdir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
