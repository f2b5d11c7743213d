"""Deployment test DAG: a deferrable sensor waits for a session that appears only after it deferred.

``wait_for_session`` (``CandelaSessionExistsSensor(deferrable=True)``) checks once, finds nothing and
defers: the wait then runs in the triggerer (``CandelaSessionExistsTrigger``), not on a worker.  The
deployment test starts the awaited session (a new version of an existing session, as another Candela
user) only once it has seen the task in the ``deferred`` state, and for one run it restarts the
triggerer in between.  ``check_session`` then receives the session's metadata through XCom and
checks that it is the awaited one.

Params (all required, given by the test when it triggers the run): ``scope``, ``identifier`` and
``version`` of the awaited session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor

with DAG(
    dag_id="candela_deploy_wait_for_session",
    description="Deployment test: wait (deferred, in the triggerer) for a Candela session to appear.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "scope": Param("default", type="string", minLength=1, description="Scope of the awaited session"),
        "identifier": Param("", type="string", description="Identifier of the awaited session"),
        "version": Param("", type="string", description="Version of the awaited session"),
    },
    tags=["candela", "deployment-test"],
) as dag:
    wait = CandelaSessionExistsSensor(
        task_id="wait_for_session",
        scope="{{ params.scope }}",
        identifier="{{ params.identifier }}",
        version="{{ params.version }}",
        deferrable=True,
        poke_interval=2,
        timeout=600,
    )

    @task
    def check_session(found: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fail unless the sensor's XCom is the metadata of exactly the awaited session version."""
        wanted = {key: (params or {})[key] for key in ("scope", "identifier", "version")}
        got = found.get("obj_id") if isinstance(found, dict) else None
        if got != wanted:
            raise ValueError(f"The sensor returned {found!r}; expected the metadata of {wanted!r}.")
        print(f"Session {got} exists (created by {found.get('created_by')} at {found.get('created_at')}).")
        return got

    check_session(wait.output)
