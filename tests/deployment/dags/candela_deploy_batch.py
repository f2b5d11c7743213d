"""Deployment test DAG: a batch whose worker gets killed mid-batch; its retry finishes only the rest.

The deployment test slows the emulator's pipeline answers down (a delay fault), triggers this DAG, waits
until ``classify`` has answered a few inputs on one Celery worker and kills that worker (``kill -9`` of
its whole process tree).  ``classify`` then fails on its missed heartbeats and is retried on the other
worker, which finds what the first try answered in Airflow's task state store and sends only the rest
(the input in flight at the kill is ``ambiguous``: never sent again).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator

INPUTS = 12

with DAG(
    dag_id="candela_deploy_batch",
    description="Deployment test: a batch whose worker gets killed mid-batch.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["candela", "deployment-test"],
) as dag:
    CandelaPipelineBatchOperator(
        task_id="classify",
        app="default/demo-pipeline",
        model="default/demo-model",
        prompts=[{"key": f"BRK-{n:03d}", "prompt": f"Classify trade break number {n}"} for n in range(INPUTS)],
        fail_on_partial_error=False,  # the input in flight at the kill is ambiguous: the run still succeeds
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
