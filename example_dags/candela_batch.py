"""Daily batch DAG: one typed pipeline answer per trade break of the day, in one Candela session.

- ``breaks`` stands in for the upstream task that lists the day's trade breaks.
- ``classify`` is ``@task.candela_pipeline_batch``: its function turns the breaks into the batch's
  inputs (one prompt each, keyed by the break's id); the task starts one session of the pipeline app,
  sends every input, validates each answer's ``result`` into ``BreakVerdict`` and stops the session
  (also when the task fails or is killed).  Each input ends ``succeeded``, ``failed``,
  ``invalid_output`` or ``ambiguous``; a retry of the task sends only the inputs that did not succeed.
- ``report`` reads the records (one per input, in input order) and counts the outcomes.

Runs unchanged against the local emulator or a real Candela deployment: only the ``candela_default``
connection and the app and model params differ.  Give the task ``candela_conn_ids=[...]`` (several
Candela users) to answer K inputs at a time, and ``result_path=`` above 1,000 inputs.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task
from pydantic import BaseModel


class BreakVerdict(BaseModel):
    """What each answer's ``result`` must hold (the fields the emulator's demo pipeline answers with)."""

    answer: str
    word_count: int


with DAG(
    dag_id="candela_batch",
    description="Every day, a typed pipeline answer for each trade break, in one Candela session.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one Candela session per user: never two runs at once
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "pipeline": Param("default/demo-pipeline", type="string", description="Pipeline app: scope/identifier"),
        "model": Param("default/demo-model", type="string", description="Model: scope/identifier[:version]"),
    },
    tags=["candela", "example", "batch"],
) as dag:

    @task
    def breaks(ds: str | None = None) -> list[dict[str, Any]]:
        """Stand-in for the day's trade breaks from an upstream system."""
        return [
            {"id": f"BRK-{n:03d}", "fund": fund, "amount": amount, "date": ds}
            for n, (fund, amount) in enumerate(
                [("Global Equity", 1250.0), ("Euro Credit", -310.5), ("Asia Growth", 88.0), ("US Value", 4020.25)],
                start=1,
            )
        ]

    # [START howto_decorator_candela_pipeline_batch]
    @task.candela_pipeline_batch(app="{{ params.pipeline }}", model="{{ params.model }}", output_type=BreakVerdict)
    def classify(day_breaks: list[dict[str, Any]]) -> list[dict[str, str]]:
        """The function returns the inputs; the task returns one record per input."""
        return [
            {"key": b["id"], "prompt": f"Classify the trade break {b['id']} of {b['fund']} for {b['amount']}."}
            for b in day_breaks
        ]

    @task
    def report(records: list[dict[str, Any]]) -> dict[str, int]:
        """Stand-in for the downstream use: the outcomes counted, each typed answer read back."""
        for r in records:
            if r["status"] == "succeeded":
                verdict = BreakVerdict.model_validate(r["answer"])
                print(f"{r['key']}: {verdict.answer}")
        counts = dict(Counter(r["status"] for r in records))
        print(f"{len(records)} breaks: {counts}")
        return counts

    report(classify(breaks()))
    # [END howto_decorator_candela_pipeline_batch]
