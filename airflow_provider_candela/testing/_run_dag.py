"""``run_dag()``: run a DAG object once with ``dag.test()`` and read back its task states and XComs.

Airflow 3's ``dag.test()`` syncs the DAG from its bundle (the dags folder) before it runs it, so a DAG
built in a test, whose file is not in the dags folder, gets a small stub file there for the length of
the run; the stub hands the DAG object to Airflow's parser.  The tasks run in this process (the Task
SDK supervisor on Airflow 3), with real templating, XCom, trigger rules, retries and deferral
(triggers run inline).

Only the standard library is imported at module level: Airflow is imported by the DAG already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DAGS: dict[str, Any] = {}  # dag_id -> the DAG object a stub file hands to Airflow's parser

_STUB = """\
# Written by airflow_provider_candela.testing.run_dag for one run, then removed: hands the DAG object
# built in memory to Airflow's parser (without that object, e.g. in another process, it defines no DAG).
from airflow_provider_candela.testing._run_dag import dag_for

dag = dag_for({dag_id!r})
"""


def dag_for(dag_id: str) -> Any:
    """The DAG object :func:`run_dag` is running under ``dag_id``, or ``None`` (read by the stub files)."""
    return _DAGS.get(dag_id)


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state))


@dataclass(frozen=True)
class DagRunResult:
    """The outcome of :func:`run_dag`.

    :param dag_run: the ``DagRun`` that ``dag.test()`` returned (task instances, dates ...).
    :param state: the run's state: ``"success"`` or ``"failed"``.
    :param states: ``{task_id: state}`` of every task instance, e.g. ``{"start": "success",
        "prompt": "upstream_failed"}``.
    """

    dag_run: Any = field(repr=False)
    state: str
    states: dict[str, str]

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        """What task ``task_id`` pushed under ``key`` in this run (its return value by default)."""
        return self.dag_run.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def run_dag(dag: Any, **test_kwargs: Any) -> DagRunResult:
    """Run ``dag`` once with ``dag.test(**test_kwargs)``, on Airflow 3 or 2, and return its outcome.

    For tests of DAGs and operators::

        from airflow_provider_candela.testing import run_dag

        def test_my_dag(candela_connection):
            result = run_dag(my_dag)
            assert result.states == {"start": "success", "prompt": "success", "stop": "success"}
            assert result.xcom("prompt")["answer"]

    The metadata database of the current Airflow configuration must exist (``airflow db migrate``);
    point ``AIRFLOW_HOME`` at a throw-away folder in tests.  A DAG whose file lies outside
    ``[core] dags_folder`` is handed to Airflow through a stub file in that folder, removed after the
    run.

    :param dag: the DAG object (``airflow.sdk.DAG`` or ``airflow.models.DAG``).
    :param test_kwargs: passed to ``dag.test()`` (``logical_date``, ``run_conf`` ...).
    """
    from airflow.configuration import conf

    folder = Path(conf.get("core", "dags_folder")).resolve()
    stub: Path | None = None
    if not Path(dag.fileloc).resolve().is_relative_to(folder):
        folder.mkdir(parents=True, exist_ok=True)
        stub = folder / f"candela_run_dag__{dag.dag_id}.py"
        stub.write_text(_STUB.format(dag_id=dag.dag_id))
        _DAGS[dag.dag_id] = dag
    try:
        dag_run = dag.test(**test_kwargs)
    finally:
        if stub is not None:
            _DAGS.pop(dag.dag_id, None)
            stub.unlink(missing_ok=True)
    return DagRunResult(
        dag_run=dag_run,
        state=_state_name(dag_run.state),
        states={ti.task_id: _state_name(ti.state) for ti in dag_run.get_task_instances()},
    )


__all__ = ["DagRunResult", "run_dag"]
