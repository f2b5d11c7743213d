"""Child process of the secrets check: run every example DAG and every operator, with DEBUG logging.

Started by test_secrets.py as ``python _secrets_run.py <out.json>`` with its own AIRFLOW_HOME, the
connections in ``AIRFLOW_CONN_*`` and ``AIRFLOW__LOGGING__LOGGING_LEVEL=DEBUG``.  It runs the three
example DAGs, the every-operator DAG and one DAG per failure path (injecting the fault through the
emulator's controls), calls ``test_connection`` on every connection, and writes what ran (task states)
and the connection-test messages to ``<out.json>``.  Everything it prints goes to the log the parent scans.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

DAGS = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
EMULATOR = os.environ["CANDELA_EMULATOR_URL"]

#: The fault injected for each failure DAG of _secrets_dags.FAILURES (None: the connection itself is broken).
FAULTS: dict[str, dict[str, Any] | None] = {
    "api_401": {"match": "POST /session", "status": 401, "count": -1},
    "start_503": {"match": "POST /session", "status": 503, "count": -1},
    "not_json": {"match": "POST /session", "not_json": True},
    "missing_field": {"match": "POST /session", "missing_field": "obj_id"},
    "stream_drop": {"match": "POST /session/agent_submit", "cut_after_events": 1, "drop": True},
    "prompt_422": {
        "match": "POST /session/pipeline_submit",
        "status": 422,
        "body": {"detail": [{"loc": ["body", "prompt"], "msg": "too long", "type": "value_error"}]},
    },
    "token_500": {"match": "POST /oauth2/token", "status": 500, "count": -1},
    "wrong_password": None,
    "wrong_pat": None,
    "refused": None,
}


def control(method: str, path: str, body: Any = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(EMULATOR + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def load(filename: str) -> Any:
    spec = importlib.util.spec_from_file_location(filename.removesuffix(".py"), DAGS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    # A short backoff: the failure paths retry, and this is a log check, not a timing one.
    CandelaHook.retry_wait_base = 0.01
    CandelaHook.retry_wait_max = 0.05

    out: dict[str, Any] = {"runs": {}, "connection_tests": {}}

    def run(dag: Any, **kwargs: Any) -> None:
        dag_run = dag.test(**kwargs)
        out["runs"][dag.dag_id] = {
            "state": str(getattr(dag_run.state, "value", dag_run.state)),
            "tasks": {
                ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(
                    getattr(ti.state, "value", ti.state)
                )
                for ti in dag_run.get_task_instances()
            },
        }

    run(load("candela_scheduled_pipeline_prompt.py").dag)
    run(load("candela_agent_prompt.py").dag)
    dags = load("reliability_secrets_dags.py")
    run(dags.every_operator)
    for name, fault in FAULTS.items():
        control("DELETE", "/_emulator/faults")
        if fault is not None:
            control("POST", "/_emulator/faults", fault)
        run(getattr(dags, f"fail_{name}"))
    control("DELETE", "/_emulator/faults")
    run(load("candela_session_cleanup.py").dag, run_conf={"older_than_days": 0, "dry_run": False})

    for conn_id in ("candela_default", "candela_pat", "candela_wrong_password", "candela_wrong_pat", "candela_down"):
        out["connection_tests"][conn_id] = CandelaHook(conn_id).test_connection()

    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
