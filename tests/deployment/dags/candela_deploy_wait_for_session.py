"""Deployment test DAG: deferrable sensors wait for a session that appears only after they deferred.

``wait_for_session`` and ``wait_for_session_db_conn`` (``CandelaSessionExistsSensor(deferrable=True)``)
check once, find nothing and defer: the wait then runs in the triggerer (``CandelaSessionExistsTrigger``),
not on a worker.  The first uses ``candela_default`` (an ``AIRFLOW_CONN_*`` environment variable, as
every process of the test has it); the second uses ``candela_deploy_db``, a connection the test stores
in the metadata DB through the REST API, so the triggerer (and the worker) must fetch it through
Airflow 3's API server, as with a connection made in the UI.  The deployment test starts the awaited
session (a new version of an existing session, as another Candela user) only once it has seen both
tasks ``deferred``, and for one run it restarts the triggerer in between.  ``check_session`` then
receives both sensors' XCom and checks that each is the awaited session's metadata.

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
    found = {
        conn_id: CandelaSessionExistsSensor(
            task_id=task_id,
            candela_conn_id=conn_id,
            scope="{{ params.scope }}",
            identifier="{{ params.identifier }}",
            version="{{ params.version }}",
            deferrable=True,
            poke_interval=2,
            timeout=600,
        ).output
        for task_id, conn_id in (
            ("wait_for_session", "candela_default"),
            ("wait_for_session_db_conn", "candela_deploy_db"),
        )
    }

    @task
    def check_session(found: dict[str, dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fail unless each sensor's XCom is the metadata of exactly the awaited session version."""
        wanted = {key: (params or {})[key] for key in ("scope", "identifier", "version")}
        for conn_id, metadata in found.items():
            got = metadata.get("obj_id") if isinstance(metadata, dict) else None
            if got != wanted:
                raise ValueError(
                    f"The sensor using {conn_id} returned {metadata!r}; expected the metadata of {wanted!r}."
                )
            print(f"{conn_id}: session {got} exists (created by {metadata.get('created_by')}).")
        return wanted

    check_session(found)
