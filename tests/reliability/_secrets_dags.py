"""DAGs of the secrets check (copied into the dags folder of a child Airflow process; see test_secrets.py).

``reliability_secrets_every_operator`` uses every operator and the sensor (poke and deferrable), over
both connections (OAuth2 password grant and personal access token).  ``reliability_secrets_fail_<name>``
are start >> prompt >> stop DAGs that the child runs with a fault injected, so that the failure paths
log their errors too.  Every task records the exception it fails with (``on_failure_callback``) into the
JSON-lines file named by ``$CANDELA_SECRETS_EXCEPTIONS``: exception messages are scanned as well.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.sessions import (
    CandelaCleanupSessionsOperator,
    CandelaDeleteSessionOperator,
    CandelaStartDevSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
MODEL = "default/demo-model"

#: name -> (connection id, app) of the failure DAGs; the child injects the matching fault before each run.
FAILURES: dict[str, tuple[str, str]] = {
    "api_401": ("candela_default", "default/demo-pipeline"),
    "start_503": ("candela_default", "default/demo-pipeline"),
    "not_json": ("candela_default", "default/demo-pipeline"),
    "missing_field": ("candela_default", "default/demo-pipeline"),
    "stream_drop": ("candela_default", "default/demo-agent"),
    "prompt_422": ("candela_pat", "default/demo-pipeline"),
    "token_500": ("candela_default", "default/demo-pipeline"),
    "wrong_password": ("candela_wrong_password", "default/demo-pipeline"),
    "wrong_pat": ("candela_wrong_pat", "default/demo-pipeline"),
    "refused": ("candela_down", "default/demo-pipeline"),
}


def record_failure(context: Any) -> None:
    """``on_failure_callback``: keep the task's exception (message and repr) for the scan."""
    exception = context.get("exception")
    ti = context.get("ti") or context.get("task_instance")
    line = {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "type": type(exception).__name__,
        "message": str(exception),
        "repr": repr(exception),
    }
    with open(os.environ["CANDELA_SECRETS_EXCEPTIONS"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


DEFAULTS = {"on_failure_callback": record_failure}

with DAG(
    "reliability_secrets_every_operator", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS
) as every_operator:
    dev = CandelaStartDevSessionOperator(
        task_id="start_dev",
        model=MODEL,
        circuit={"first": "answer", "nodes": {"answer": {"type": "response", "node_id": "answer", "template": "ok"}}},
        directive={"identity": "an analyst", "purpose": "summarise"},
        tool_module="class Tools:\n    pass\n",
    )
    dev_prompt = CandelaSubmitAgentPromptOperator(
        task_id="dev_prompt",
        session=dev.output,
        prompt="A table of {{ params.what }}",
        return_events=True,
        params={"what": "prices"},
    )
    pipeline = CandelaStartSessionOperator(
        task_id="start_pipeline", app="default/demo-pipeline", model=MODEL, candela_conn_id="candela_pat"
    )
    poke = CandelaSessionExistsSensor(
        task_id="exists_poke", session=pipeline.output, poke_interval=0.1, timeout=30, candela_conn_id="candela_pat"
    )
    deferred = CandelaSessionExistsSensor(
        task_id="exists_deferred",
        identifier="does-not-exist-yet",
        poke_interval=0.1,
        timeout=1,
        deferrable=True,
        soft_fail=True,
    )
    ask = CandelaSubmitPipelinePromptOperator(
        task_id="ask", session=pipeline.output, prompt="Sum up {{ ds }}", candela_conn_id="candela_pat"
    )
    stop = CandelaStopSessionOperator(task_id="stop", session=pipeline.output, dispose_slot=True)
    delete = CandelaDeleteSessionOperator(task_id="delete", session=[dev.output, pipeline.output])
    cleanup = CandelaCleanupSessionsOperator(task_id="cleanup_dry_run", older_than=0, dry_run=True)
    dev >> dev_prompt >> pipeline >> poke >> ask
    pipeline >> deferred  # a leaf: its soft-failed timeout (skipped) must not skip the rest
    ask >> stop.as_teardown(setups=[dev, pipeline]) >> delete >> cleanup

for _name, (_conn_id, _app) in FAILURES.items():
    with DAG(
        f"reliability_secrets_fail_{_name}", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS
    ) as _dag:
        _start = CandelaStartSessionOperator(task_id="start", app=_app, model=MODEL, candela_conn_id=_conn_id)
        _prompt_cls: Any = (
            CandelaSubmitAgentPromptOperator if _app.endswith("agent") else CandelaSubmitPipelinePromptOperator
        )
        _prompt = _prompt_cls(task_id="prompt", session=_start.output, prompt="Go", candela_conn_id=_conn_id)
        _stop = CandelaStopSessionOperator(task_id="stop", session=_start.output, candela_conn_id=_conn_id)
        _start >> _prompt >> _stop.as_teardown(setups=_start)
    globals()[f"fail_{_name}"] = _dag
