"""Load: 20 DAG runs at once, each as its own emulator user with its own connection.

Each run is ``dag.test()`` of start >> pipeline prompt >> stop (teardown) in a process forked from
the test process (Airflow is already imported there, so a run costs its tasks, not an interpreter
start).  ``dag.test()`` cannot run in a thread (the task runner installs a SIGTERM handler, which
only the main thread may do), hence processes.  Each child gets its own copy of the metadata
database and its own dags folder, so the runs contend on Candela (the emulator), not on SQLite's
single-writer lock: what is measured is the provider under concurrency.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import PIPELINE, TALLY, requests_of, session_dag

RUNS = 20


def _child(index: int, dag: Any, workdir: Path) -> None:
    """Body of one forked run: private DB and dags folder, then ``dag.test()``; the outcome goes to a JSON file."""
    outcome: dict[str, Any] = {"index": index, "began": time.time()}
    try:
        from airflow import settings

        database = workdir / f"run-{index}.db"
        shutil.copyfile(workdir / "template.db", database)
        folder = workdir / f"dags-{index}"
        folder.mkdir()
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{database}"
        os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
        settings.configure_vars()  # type: ignore[no-untyped-call]
        settings.configure_orm()  # type: ignore[no-untyped-call]
        from airflow.sdk.execution_time import supervisor

        # The in-process Execution API serves from an event-loop thread of the parent, which the fork
        # did not copy: keep its (costly to build) app, but give it a new loop thread in this process.
        api = supervisor.in_process_api_server()
        with contextlib.suppress(AttributeError):
            del api.transport  # a cached property: the next use builds it (and its thread) again

        result = run_dag(dag)
        outcome.update(
            state=result.state,
            states=result.states,
            session=result.xcom("start"),
            answer=result.xcom("prompt"),
        )
    except BaseException as exc:  # reported to the parent, which fails the test with it
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        outcome["ended"] = time.time()
        (workdir / f"run-{index}.json").write_text(json.dumps(outcome, default=str))
        os._exit(0)


def _overlap(outcomes: list[dict[str, Any]]) -> int:
    """The largest number of runs that were in progress at the same moment."""
    edges = sorted([(o["began"], 1) for o in outcomes] + [(o["ended"], -1) for o in outcomes])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def test_twenty_concurrent_dag_runs_each_with_its_own_user(
    candela: CandelaEmulator,
    airflow_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = [f"load-user-{i:02d}" for i in range(RUNS)]
    dags = []
    for index, user in enumerate(users):
        candela.add_user(user, f"{user}-password")
        conn_id = f"candela_load_{index:02d}"
        connection = json.loads(candela.connection_json())
        connection.update(login=user, password=f"{user}-password")
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        dags.append(session_dag(f"reliability_load_{index:02d}", app=PIPELINE, prompt=f"Load {index}", conn_id=conn_id))

    # Warm the parent once (lazy imports of the task runner and execution API), so each fork starts warm.
    warm = run_dag(_warm_up_dag())
    assert warm.state == "success"
    with (
        contextlib.closing(sqlite3.connect(airflow_db / "airflow.db")) as source,
        contextlib.closing(sqlite3.connect(tmp_path / "template.db")) as copy,
    ):
        source.backup(copy)  # a consistent snapshot, whatever sits in the WAL

    fork = multiprocessing.get_context("fork")
    began = time.monotonic()
    children = [fork.Process(target=_child, args=(i, dag, tmp_path), daemon=True) for i, dag in enumerate(dags)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    elapsed = time.monotonic() - began
    TALLY.load_runs = RUNS

    outcomes = [json.loads((tmp_path / f"run-{i}.json").read_text()) for i in range(RUNS)]
    errors = [o for o in outcomes if "error" in o or o.get("state") != "success"]
    assert not errors, errors
    for index, outcome in enumerate(outcomes):
        assert outcome["states"] == {"start": "success", "prompt": "success", "stop": "success"}
        assert outcome["session"]["created_by"] == users[index]  # each run was its own user
        assert outcome["answer"]["metadata"]["request_id"]

    stats = candela.stats()
    assert stats["sessions_started"] == RUNS
    assert {user: stats["running_sessions"][user] for user in users} == dict.fromkeys(users)  # nothing left running
    assert requests_of(stats, "POST /session/pipeline_submit") == {"200": RUNS}
    assert requests_of(stats, "POST /session") == {"200": RUNS}  # no start replayed or duplicated
    assert len({o["session"]["obj_id"]["identifier"] for o in outcomes}) == RUNS
    assert _overlap(outcomes) >= RUNS // 2, "the runs did not overlap: not a concurrency test"
    TALLY.load_green = sum(1 for o in outcomes if o["state"] == "success")
    print(f"{RUNS} concurrent DAG runs in {elapsed:.1f} s, at most {_overlap(outcomes)} at once")


def _warm_up_dag() -> Any:
    from airflow.providers.common.compat.sdk import DAG, task

    from ._support import START

    with DAG("reliability_load_warm_up", schedule=None, start_date=START, catchup=False) as dag:

        @task
        def nothing() -> None:
            return None

        nothing()
    return dag
