"""Run an in-memory DAG for real with ``dag.test()``, on Airflow 3 and 2.

Airflow 3's ``dag.test()`` reads the DAG from its bundle (the dags folder) before it runs it, so
this helper writes a two-line stub file into ``$AIRFLOW__CORE__DAGS_FOLDER`` that hands the
in-memory DAG object to the parser.  The tasks then run in-process (the Task SDK supervisor on
Airflow 3), with real templating, XCom, trigger rules, retries and deferral (triggers run inline).

Imported under one module name (:data:`MODULE_NAME`) by every test directory, see :func:`load`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from airflow_provider_candela.testing import wait_until

MODULE_NAME = "candela_test_dagrun"

#: dag_id -> the DAG object the stub file in the dags folder returns.
REGISTRY: dict[str, Any] = {}

_STUB = """\
# Test stub: the airflow dag is built in memory by a test (see tests/operators/dagrun.py).
import sys

dag = sys.modules[{module!r}].REGISTRY[{dag_id!r}]
"""


def load() -> ModuleType:
    """This module, imported once under :data:`MODULE_NAME` (the stub files look it up by that name)."""
    module = sys.modules.get(MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, Path(__file__))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        spec.loader.exec_module(module)
    return module


def run_dag(dag: Any, **kwargs: Any) -> Any:
    """Run ``dag`` once with ``dag.test(**kwargs)``; return the DagRun."""
    registry: dict[str, Any] = load().REGISTRY
    registry[dag.dag_id] = dag
    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dag.dag_id}.py").write_text(_STUB.format(module=MODULE_NAME, dag_id=dag.dag_id))
    return dag.test(**kwargs)


def xcom(dag_run: Any, task_id: str) -> Any:
    """The return value a task pushed in ``dag_run``."""
    return dag_run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def states(dag_run: Any) -> dict[str, str]:
    """``{task_id: state}`` of every task instance of the run."""
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}


wait_for = wait_until  # the emulator package's poller, under the name these tests use


def request_count(stats: dict[str, Any], route: str, status: str | None = None) -> int:
    """How many ``route`` requests (e.g. ``"GET /sessions/exists"``) the emulator answered."""
    by_status: dict[str, int] = stats["requests"].get(route, {})
    return by_status.get(status, 0) if status else sum(by_status.values())
