"""The part of ``run_dags`` that runs inside the temporary Airflow home, in a process of its own.

    python -m airflow_provider_candela.testing._dag_worker inspect DAG_FOLDER
    python -m airflow_provider_candela.testing._dag_worker report DAG_ID [DAG_ID ...]

``inspect`` parses the folder with a DagBag (DAG ids, their files, import errors, the DAGs whose answers a
person reviews, whether this Airflow's ``dags test`` can serve a review); ``report`` reads the
latest run of each DAG back from the metadata database (state, times, task instances and their
``return_value`` XComs).  Either prints its answer as one JSON line, the last line of its output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def inspect_folder(folder: str) -> dict[str, Any]:
    """Parse the folder with a DagBag: DAG ids, their files, and import errors."""
    try:  # Airflow 3
        from airflow.dag_processing.dagbag import DagBag

        bag: Any = DagBag(dag_folder=folder)
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag as DagBag2

        bag = DagBag2(dag_folder=folder, include_examples=False)
    from airflow_provider_candela._compat import AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION

    return {
        "airflow_version": AIRFLOW_VERSION,
        # Before 3.3 a review waits deferred on the HITL trigger, which `airflow dags test` cannot serve.
        "reviews_in_dags_test": AIRFLOW_V_3_3_PLUS,
        "dags": {dag_id: str(bag.dags[dag_id].fileloc) for dag_id in sorted(bag.dags)},
        "import_errors": {str(path): str(error) for path, error in bag.import_errors.items()},
        # The DAGs with a task that waits for a person (``require_approval``): run_dags answers their reviews.
        "reviewed": sorted(
            dag_id
            for dag_id, dag in bag.dags.items()
            if any(getattr(task, "require_approval", False) is True for task in dag.tasks)
        ),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: Any, end: Any) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def _state(value: Any) -> str:
    """A DagRun/TaskInstance state as its plain string ("success", "failed", "none" when unset)."""
    return str(getattr(value, "value", value)).lower()


def _xcom_value(model: Any, row: Any) -> Any:
    """A stored XCom's value: Airflow 3 keeps a JSON string; Airflow 2's ORM row holds the value already."""
    if not isinstance(row.value, str | bytes):
        return row.value
    try:
        return model.deserialize_value(row)
    except Exception as exc:  # shown, not fatal: the run's state is what counts
        return f"<unreadable XCom: {exc}>"


def read_back(dag_ids: Sequence[str]) -> dict[str, Any]:
    """The latest run of each DAG: state, times, task instances and their ``return_value`` XComs."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    XComRow: Any
    try:  # Airflow 3
        from airflow.models.xcom import XComModel as XComRow
    except ImportError:  # Airflow 2
        from airflow.models.xcom import BaseXCom as XComRow  # type: ignore[no-redef,attr-defined,unused-ignore]

    runs: dict[str, Any] = {}
    with create_session() as session:
        for dag_id in dag_ids:
            run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
            if run is None:
                runs[dag_id] = None
                continue
            values: dict[tuple[str, int], Any] = {}
            rows = (
                session.query(XComRow)
                .filter(XComRow.dag_id == dag_id, XComRow.run_id == run.run_id, XComRow.key == "return_value")
                .all()
            )
            for row in rows:
                values[(row.task_id, row.map_index)] = _xcom_value(XComRow, row)
            tis = sorted(
                session.query(TaskInstance)
                .filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
                .all(),
                # Airflow 2's dag.test() leaves start_date unset: order by when each task ended then.
                key=lambda ti: (str(ti.start_date or ti.end_date or "~"), ti.task_id, ti.map_index),
            )
            runs[dag_id] = {
                "run_id": run.run_id,
                "state": _state(run.state),
                "start_date": _iso(run.start_date),
                "end_date": _iso(run.end_date),
                "duration": _seconds(run.start_date, run.end_date),
                "tasks": [
                    {
                        "task_id": ti.task_id,
                        "map_index": ti.map_index,
                        "state": _state(ti.state),
                        "try_number": ti.try_number,
                        "duration": ti.duration if ti.duration is not None else _seconds(ti.start_date, ti.end_date),
                        "has_return_value": (ti.task_id, ti.map_index) in values,
                        "return_value": values.get((ti.task_id, ti.map_index)),
                    }
                    for ti in tis
                ],
            }
    return runs


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "inspect":
        answer = inspect_folder(argv[1])
    elif len(argv) >= 2 and argv[0] == "report":
        answer = read_back(argv[1:])
    else:
        print("usage: python -m airflow_provider_candela.testing._dag_worker {inspect DAG_FOLDER | report DAG_ID ...}")
        return 2
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
