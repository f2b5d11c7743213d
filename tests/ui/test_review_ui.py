"""A person reviews Candela's answer on Airflow's Required Actions page, in a real browser.

``airflow dags test`` runs a reviewed DAG (``require_approval=True``) over the UI server's home and database,
against the emulator; headless Debian Chromium logs in, opens Required Actions, finds the review with
Candela's answer rendered (the prompt, the answer's fields) and presses Approve; the run then finishes, and
the downstream task receives the answer.  Screenshots land in tests/ui/output/<test>/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow_ui import AirflowServer, wait_for

from airflow_provider_candela.testing import CandelaEmulator
from airflow_provider_candela.testing._reviewer import Reviewer, start_airflow, stop_process_group

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.ui
DAG_ID = "candela_ui_review"
PROMPT = "Summarise the changed positions"

DAG_FILE = f"""
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, task
from pydantic import BaseModel

from airflow_provider_candela.operators.sessions import CandelaSubmitPipelinePromptOperator


class Summary(BaseModel):
    answer: str
    word_count: int


with DAG({DAG_ID!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    summarise = CandelaSubmitPipelinePromptOperator(
        task_id="summarise",
        candela_conn_id="candela_ui_review",
        app="default/demo-pipeline",
        model="default/demo-model",
        prompt={PROMPT!r},
        output_type=Summary,
        require_approval=True,
    )

    @task
    def send(summary: dict) -> None:
        print("SENT:", summary["answer"])

    send(summarise.output)
"""


def test_required_actions_page_shows_the_answer_and_approve_finishes_the_run(
    page: Page, airflow_server: AirflowServer, candela_emulator: CandelaEmulator, ui_output_dir: Path
) -> None:
    from playwright.sync_api import expect

    candela_emulator.configure(slot_startup_seconds=0)
    dags = airflow_server.home / "dags"
    dags.mkdir(exist_ok=True)
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    env = {**airflow_server.env, "AIRFLOW_CONN_CANDELA_UI_REVIEW": candela_emulator.connection_json()}
    log = ui_output_dir / "dags-test.log"
    run = start_airflow(["dags", "test", DAG_ID], env, log)
    try:
        reviewer = Reviewer(airflow_server.url, airflow_server.username, airflow_server.password)
        review = reviewer.wait_for("summarise", dag_id=DAG_ID, timeout=180, alive=lambda: run.poll() is None)
        assert candela_emulator.stats()["running_sessions"][candela_emulator.username] is None

        page.goto(f"{airflow_server.url}/required_actions")
        page.get_by_text(review["subject"]).first.click()
        expect(page.get_by_text("Processed 4 words: Summarise the changed positions").first).to_be_visible()
        expect(page.get_by_text(PROMPT).first).to_be_visible()
        expect(page.get_by_text("word_count").first).to_be_visible()
        page.screenshot(path=str(ui_output_dir / "review.png"), full_page=True)

        page.get_by_role("button", name="Approve").click()
        assert wait_for(lambda: run.poll() is not None, 180, "airflow dags test to finish") is not None
        output = log.read_text(errors="replace")
        assert run.returncode == 0, output[-4000:]
        assert "SENT: Processed 4 words: Summarise the changed positions" in output
        detail = reviewer.detail(DAG_ID, review["task_instance"]["dag_run_id"], "summarise")
        assert detail["chosen_options"] == ["Approve"]
        assert detail["responded_by_user"]["name"] == airflow_server.username
        page.screenshot(path=str(ui_output_dir / "approved.png"), full_page=True)
    finally:
        stop_process_group(run)
        (dags / f"{DAG_ID}.py").unlink(missing_ok=True)
