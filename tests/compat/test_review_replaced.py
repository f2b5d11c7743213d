"""Airflow 3.4 binds an answer to the review it answers (``request_created_at``): a stale answer is refused.

A reviewer opens a review and rejects it; the task's retry asks again.  An answer to the first review, sent by
someone who still had it open, must not approve the second one: Airflow 3.4 answers 409 and
:class:`~airflow_provider_candela.testing.Reviewer` raises ``ReviewReplacedError``; the answer to the review now
waiting is taken.  Real ``dag.test()`` run and ``airflow api-server`` sharing the suite's database; Candela is the
emulator over HTTP.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela._compat import AIRFLOW_V_3_4_PLUS
from airflow_provider_candela.operators.sessions import CandelaSubmitPipelinePromptOperator
from airflow_provider_candela.testing import ApiServer, CandelaEmulator, ReviewReplacedError, run_dag, wait_until

pytestmark = [
    pytest.mark.skipif(not AIRFLOW_V_3_4_PLUS, reason="request_created_at is Airflow 3.4's"),
    pytest.mark.usefixtures("airflow_db"),
]

DAG_ID = "review_replaced"


def test_an_answer_to_a_replaced_review_is_refused_and_the_waiting_one_is_answered(
    api_server: ApiServer, candela: CandelaEmulator
) -> None:
    with DAG(DAG_ID, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False) as dag:
        CandelaSubmitPipelinePromptOperator(
            task_id="summarise",
            app="default/demo-pipeline",
            model="default/demo-model",
            prompt="Summarise the changed positions",
            require_approval=True,
            retries=1,
            retry_delay=dt.timedelta(0),
        )
    reviewer = api_server.reviewer()
    outcome: dict[str, Any] = {}

    def review() -> None:
        try:
            first = reviewer.wait_for("summarise", dag_id=DAG_ID, timeout=120)
            reviewer.respond(first, "Reject")  # the task fails; its retry asks again

            def replaced() -> dict[str, Any] | None:
                found = [r for r in reviewer.pending(DAG_ID) if r["created_at"] != first["created_at"]]
                return found[0] if found else None

            second = wait_until(replaced, timeout=120, interval=0.2)
            try:
                reviewer.respond(first, "Approve")  # still on the first review's page
            except ReviewReplacedError as err:
                outcome["refused"] = str(err)
            outcome["answer"] = reviewer.respond(second, "Approve")
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    result = run_dag(dag)
    thread.join(timeout=60)
    assert "error" not in outcome, outcome
    assert "409" in outcome["refused"] and "replaced" in outcome["refused"]
    assert outcome["answer"]["chosen_options"] == ["Approve"]
    assert result.states == {"summarise": "success"}
    assert result.xcom("summarise", key="review")["decision"] == "approved"
    assert candela.request_count("POST /session/pipeline_submit") == 2, "the retry prompted Candela again"
