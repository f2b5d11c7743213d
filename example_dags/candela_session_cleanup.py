"""Weekly cleanup: delete the stored Candela sessions older than N days, then report what went.

Waits on nothing.  ``delete_old_sessions`` lists every stored session version and deletes those
created more than ``older_than_days`` days ago (optionally only in one ``scope``); with
``dry_run`` it only lists them.  ``report`` receives the deleted sessions' metadata through XCom.

Runs unchanged against the local emulator or a real Candela deployment: only the
``candela_default`` connection differs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_candela.operators.sessions import CandelaCleanupSessionsOperator

with DAG(
    dag_id="candela_session_cleanup",
    description="Delete stored Candela sessions older than a number of days.",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Params render as their own types (a bool stays a bool) in the templated fields below.
    render_template_as_native_obj=True,
    params={
        "older_than_days": Param(7, type="number", minimum=0, description="Delete sessions older than this"),
        "dry_run": Param(False, type="boolean", description="Only list what would be deleted"),
        "scope": Param(None, type=["null", "string"], description="Only this scope (empty: every scope)"),
    },
    tags=["candela", "example", "maintenance"],
) as dag:
    # [START howto_operator_cleanup_sessions]
    delete = CandelaCleanupSessionsOperator(
        task_id="delete_old_sessions",
        older_than="{{ params.older_than_days * 86400 }}",
        scope="{{ params.scope }}",
        dry_run="{{ params.dry_run }}",
    )
    # [END howto_operator_cleanup_sessions]

    @task
    def report(deleted: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Summarise the cleanup: how many sessions, which ones, by whom."""
        verb = "Would delete" if (params or {}).get("dry_run") else "Deleted"
        print(f"{verb} {len(deleted)} session version(s).")
        for meta in deleted:
            obj = meta["obj_id"]
            session = f"{obj['scope']}/{obj['identifier']}:{obj['version']}"
            print(f"  {session} created by {meta['created_by']} at {meta['created_at']}")
        return {"count": len(deleted), "dry_run": bool((params or {}).get("dry_run"))}

    report(delete.output)
