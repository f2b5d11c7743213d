"""Deployment test DAG: another provider's trigger, whose wait is an ``asyncio.to_thread`` call.

``probe`` defers at once to ``ToThreadProbeTrigger`` (``tests/deployment/support``), which fires as soon as
its ``asyncio.to_thread`` call is answered on the triggerer loop's default executor; the task then returns
the name of the thread that answered (XCom).  The deployment test runs it while 200 Candela triggers wait
on a Candela that never answers (``candela_deploy_silent_candela``): it must still succeed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, BaseOperator
from candela_deploy_probe import ToThreadProbeTrigger


class ToThreadProbeOperator(BaseOperator):
    """Defer to :class:`ToThreadProbeTrigger`; return the name of the thread that answered its call."""

    def execute(self, context: Any) -> None:
        self.defer(trigger=ToThreadProbeTrigger(), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        thread: str = event["thread"]
        return thread


with DAG(
    dag_id="candela_deploy_to_thread_probe",
    description="Deployment test: another trigger's asyncio.to_thread, beside Candela triggers.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["deployment-test"],
) as dag:
    ToThreadProbeOperator(task_id="probe")
