"""A page of another origin on the same host tries every action of the Candela page with the admin's browser.

Headless Debian Chromium, logged into a real ``airflow api-server`` as admin; the attacker's page is served by
a tiny HTTP server on another loopback port (another origin, the same *site*: Airflow's ``SameSite=Lax``
cookie goes along).  It submits HTML forms (url-encoded, multipart, text/plain shaped as JSON) and sends
``no-cors`` fetches, plus a CORS fetch with the page's header.  Nothing reaches Candela: the session still
runs and the slot still exists.  Then the page's own Stop button stops the session, and Chromium's headers
of that request are the ones the backend requires.
"""

from __future__ import annotations

import http.server
import threading
from typing import TYPE_CHECKING, Any

import pytest
from airflow_ui import AirflowServer, wait_for
from candela_sessions import slot_with_sessions

from airflow_provider_candela.testing import CandelaEmulator

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

pytestmark = pytest.mark.ui
CONN_ID = "candela_page_forgery"

ATTACK = """<!doctype html>
<html><body>
<h1>Win a prize</h1>
<script>
const API = "{api}";
const forms = [
  ["stop", "application/x-www-form-urlencoded", "x", "1"],
  ["dispose", "multipart/form-data", "x", "1"],
  ["assign", "text/plain", '{{"slot_type": "gpu-medium", "x": "', '"}}'],
];
let pending = forms.length;
const finished = [];
function settle(what) {{ finished.push(what); if (--pending === 0) window.attackDone = finished; }}
for (const [action, enctype, name, value] of forms) {{
  const frame = document.createElement("iframe"); frame.name = "f-" + action;
  frame.addEventListener("load", () => settle("form " + action), {{ once: true }});
  document.body.appendChild(frame);
  const form = document.createElement("form");
  form.method = "POST"; form.action = API + action; form.enctype = enctype; form.target = frame.name;
  const input = document.createElement("input"); input.name = name; input.value = value; form.appendChild(input);
  document.body.appendChild(form); form.submit();
}}
const fetches = [
  ["stop", "POST", "no-cors", {{}}, undefined],
  ["dispose", "POST", "no-cors", {{ "Content-Type": "text/plain" }}, "{{}}"],
  ["assign", "POST", "no-cors", {{ "Content-Type": "text/plain" }}, '{{"slot_type": "gpu-medium"}}'],
  ["sessions", "DELETE", "no-cors", {{}}, '{{"sessions": [{{"scope": "default", "identifier": "x"}}]}}'],
  ["stop", "POST", "cors", {{ "Content-Type": "application/json", "X-Candela-Page": "1" }}, "{{}}"],
];
pending += fetches.length + 1;
for (const [action, method, mode, headers, body] of fetches) {{
  const what = "fetch " + action + " " + mode + " ";
  fetch(API + action, {{ method, mode, credentials: "include", headers, body }})
    .then((r) => settle(what + r.type), (e) => settle(what + e.name));
}}
// a read that needs a login and calls no Candela: its answer (404, not 401) shows the cookie goes along
fetch("{logged_in}", {{ mode: "no-cors", credentials: "include" }}).then(() => settle("read"), () => settle("read"));
</script>
</body></html>
"""


class _AttackerSite(http.server.ThreadingHTTPServer):
    """Another origin of the same host: serves the attacker's page at ``/``."""

    daemon_threads = True

    def __init__(self, html: str) -> None:
        self.html = html.encode()
        super().__init__(("127.0.0.1", 0), _AttackerHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"


class _AttackerHandler(http.server.BaseHTTPRequestHandler):
    server: _AttackerSite

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.html)))
        self.end_headers()
        self.wfile.write(self.server.html)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_page_of_another_origin_cannot_act_and_the_pages_own_buttons_can(
    page: Page, airflow_server: AirflowServer, candela_emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    if CONN_ID not in airflow_server.cli("connections", "list", "-o", "plain"):
        airflow_server.cli("connections", "add", CONN_ID, "--conn-json", candela_emulator.connection_json())
    (running,) = slot_with_sessions(candela_emulator, monkeypatch, "default/demo-pipeline")
    before = candela_emulator.stats()["requests_total"]

    api = f"{airflow_server.url}/candela/api/connections/{CONN_ID}/"
    logged_in = f"{airflow_server.url}/candela/api/connections/no-such-connection/sessions"
    site = _AttackerSite(ATTACK.format(api=api, logged_in=logged_in))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    forged: list[Request] = []
    page.on("request", lambda request: forged.append(request) if "/candela/api/" in request.url else None)
    try:
        page.goto(site.url)
        finished = page.wait_for_function("window.attackDone", timeout=60_000).json_value()
    finally:
        site.shutdown()
        site.server_close()
    assert len(finished) == 9, finished
    assert "fetch stop cors TypeError" in finished, "the CORS fetch with the page's header never got past its preflight"
    (read,) = [r for r in forged if r.url == logged_in]
    read_answer = read.response()
    assert read_answer is not None and read_answer.status == 404, "the admin's cookie went along (no 401)"
    sent = [r for r in forged if r.method in ("POST", "DELETE")]
    # 3 forms and 3 no-cors POSTs (a no-cors fetch cannot DELETE); the CORS POST is stopped at its preflight
    answered = [(r, r.response()) for r in sent if r.response() is not None]
    assert [r.url for r in sent if r.response() is None] == [f"{api}stop"]
    assert len(answered) == 6, [(r.method, r.url) for r in sent]
    for request, response in answered:
        assert response.status == 403, (request.url, response.status)

    stats = candela_emulator.stats()
    assert stats["requests_total"] == before, "a forged request reached Candela"
    assert stats["running_sessions"][candela_emulator.username] == running.obj_id.model_dump()
    assert stats["slots"][candela_emulator.username] is not None

    # The page's own Stop button, in the Airflow UI's iframe, still acts.
    page.goto(f"{airflow_server.url}/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Candela").click()
    frame = page.frame_locator("iframe").first
    row = frame.locator(f"tr[data-conn='{CONN_ID}']")
    expect(row).to_contain_text("HOST_READY")
    with page.expect_request(f"{api}stop") as own:
        row.get_by_role("button", name="Stop session").click()
        frame.locator("dialog#confirm").get_by_role("button", name="Confirm").click()
    expect(frame.locator("#message")).to_contain_text("Stopped the session")
    wait_for(lambda: candela_emulator.stats()["running_sessions"][candela_emulator.username] is None, 10, "the stop")
    headers = own.value.all_headers()
    assert headers["sec-fetch-site"] == "same-origin" and headers["origin"] == airflow_server.url
    assert headers["x-candela-page"] == "1" and headers["content-type"] == "application/json"
