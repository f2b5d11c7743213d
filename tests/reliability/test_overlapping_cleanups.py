"""Two cleanups with the same filters at the same time: both succeed, and each XCom lists what it deleted.

The overlap is made deterministic, without threads or sleeps: run A is a real task; a spy on
``CandelaHook.delete_session`` (the call itself unchanged) runs cleanup B to its end just before A's
second delete.  So A has listed every session and deleted one; B lists the rest and deletes them; A's
remaining deletes then reach Candela for versions already gone (404).
"""

from __future__ import annotations

from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.sessions import CandelaCleanupSessionsOperator
from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import MODEL, PIPELINE, START, TALLY, requests_of

SESSIONS = 4


def _cleanup(task_id: str, username: str) -> CandelaCleanupSessionsOperator:
    return CandelaCleanupSessionsOperator(task_id=task_id, older_than=0, created_by=username)


def _ids(xcom: list[dict[str, Any]]) -> list[str]:
    return [f"{m['obj_id']['scope']}/{m['obj_id']['identifier']}:{m['obj_id']['version']}" for m in xcom]


@pytest.mark.usefixtures("airflow_db")
def test_overlapping_cleanups_both_succeed_and_their_xcoms_split_the_sessions(
    candela: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TALLY.fault("two cleanups with the same filters at once"):
        with CandelaHook() as hook:
            hook.ensure_slot(timeout=10)
            for _ in range(SESSIONS):
                hook.stop_session()
                hook.start_session(PIPELINE, MODEL)
            hook.stop_session()
            everything = sorted(_ids([m.model_dump(mode="json") for m in hook.list_sessions(all_versions=True)]))
        assert len(everything) == SESSIONS

        with DAG("overlap_cleanup_b", schedule=None, start_date=START, catchup=False):
            cleanup_b = _cleanup("cleanup_b", candela.username)
        other: dict[str, Any] = {}
        calls = 0
        delete = CandelaHook.delete_session

        def delete_after_b(self: CandelaHook, session: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # A listed everything and deleted one: B runs now, from start to end
                other["xcom"] = cleanup_b.execute(context={})
            return delete(self, session)

        monkeypatch.setattr(CandelaHook, "delete_session", delete_after_b)
        with DAG("overlap_cleanup_a", schedule=None, start_date=START, catchup=False) as dag:
            _cleanup("cleanup_a", candela.username)
        dr = run_dag(dag)

        assert dr.states == {"cleanup_a": "success"}, "a version the other run deleted (404) failed the task"
        a_ids, b_ids = _ids(dr.xcom("cleanup_a")), _ids(other["xcom"])
        assert len(a_ids) == 1 and len(b_ids) == SESSIONS - 1, (a_ids, b_ids)
        assert sorted(a_ids + b_ids) == everything, "together the XComs list every session, none twice"
        deletes = requests_of(candela.stats(), "DELETE /sessions/")
        assert deletes == {"200": SESSIONS, "404": SESSIONS - 1}, deletes
        assert candela.stats()["sessions_stored"] == 0
