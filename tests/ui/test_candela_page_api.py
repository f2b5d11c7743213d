"""The backend of the Candela page over real HTTP: a real ``airflow api-server`` and the Candela emulator.

Every route: 401 without login, 403 for the simple auth manager's viewer (no access to connections), what an
admin sees and does (filters, paging, newest first, deleting selected versions, assigning the connection's slot
type), actions refused on GET, no secret of the connection in any answer (Candela's errors scrubbed), a bad
password shown as the hook's message, and a slow Candela cut off within the connection's timeout.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from airflow_ui import VIEWER_USER, AirflowServer, wait_for
from candela_sessions import local_hook, slot_with_sessions

from airflow_provider_candela.models import ObjectMetadata
from airflow_provider_candela.testing import CandelaEmulator, SilentCandela

pytestmark = pytest.mark.ui
CONN_ID = "candela_page_api"


def _send(server: AirflowServer, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json", "Content-Type": "application/json", "X-Candela-Page": "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _token(server: AirflowServer, user: str) -> str:
    status, answer = _send(server, "POST", "/auth/token", {"username": user, "password": server.passwords[user]})
    assert status in (200, 201), answer
    return str(answer["access_token"])


@pytest.fixture(scope="module")
def _conn_added(airflow_server: AirflowServer, candela_emulator_server: CandelaEmulator) -> None:
    """``CONN_ID`` added once (an ``airflow`` command takes seconds; no test deletes it)."""
    if CONN_ID not in airflow_server.cli("connections", "list", "-o", "plain"):
        airflow_server.cli("connections", "add", CONN_ID, "--conn-json", candela_emulator_server.connection_json())


@pytest.fixture
def emulator_conn(_conn_added: None, candela_emulator: CandelaEmulator) -> CandelaEmulator:
    """A connection ``CONN_ID`` of the api-server to the (reset) emulator."""
    return candela_emulator


def _secrets(emulator: CandelaEmulator) -> list[str]:
    return [emulator.password, emulator.client_secret, *emulator.tokens()["access_tokens"]]


ROUTES = [
    ("GET", "/candela/", None),
    ("GET", "/candela/api/connections", None),
    ("GET", f"/candela/api/connections/{CONN_ID}/sessions", None),
    ("POST", f"/candela/api/connections/{CONN_ID}/stop", {}),
    ("POST", f"/candela/api/connections/{CONN_ID}/dispose", {}),
    ("POST", f"/candela/api/connections/{CONN_ID}/assign", {"slot_type": "gpu-medium"}),
    ("DELETE", f"/candela/api/connections/{CONN_ID}/sessions", {"sessions": [{"scope": "default", "identifier": "x"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_a_login_and_access_to_connections(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, method: str, path: str, body: Any
) -> None:
    assert _send(airflow_server, method, path, body)[0] == 401
    assert _send(airflow_server, method, path, body, _token(airflow_server, VIEWER_USER))[0] == 403
    assert emulator_conn.stats()["requests_total"] == 0, "a refused request reached Candela"


@pytest.mark.parametrize("action", ["stop", "dispose", "assign"])
def test_actions_are_refused_on_get(airflow_server: AirflowServer, emulator_conn: CandelaEmulator, action: str) -> None:
    status, _ = _send(
        airflow_server, "GET", f"/candela/api/connections/{CONN_ID}/{action}", None, _token(airflow_server, "admin")
    )
    assert status == 405
    assert emulator_conn.stats()["requests_total"] == 0


def test_admin_sees_the_slot_and_session_stops_it_and_deletes_stored_sessions(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _token(airflow_server, "admin")
    base = f"/candela/api/connections/{CONN_ID}"
    assert _send(airflow_server, "POST", f"{base}/assign", {"slot_type": "gpu-medium"}, token)[1]["ok"] is True
    old, running = slot_with_sessions(emulator_conn, monkeypatch, "default/demo-pipeline", "default/demo-pipeline")

    status, page = _send(airflow_server, "GET", "/candela/api/connections", None, token)
    assert status == 200
    (row,) = [c for c in page["connections"] if c["conn_id"] == CONN_ID]
    assert row["identity"] == emulator_conn.username
    assert row["slot"]["state"].startswith("HOST_READY") and row["slot"]["slot_type"] == "gpu-medium"
    assert row["session"]["identifier"] == running.obj_id.identifier
    assert row["stored_sessions"] == 2

    status, listed = _send(airflow_server, "GET", f"{base}/sessions?limit=1", None, token)
    assert status == 200 and listed["total"] == 2
    assert [s["identifier"] for s in listed["sessions"]] == [running.obj_id.identifier], "newest first, paged"
    prefix = old.obj_id.identifier[:12]
    assert _send(airflow_server, "GET", f"{base}/sessions?identifier_prefix={prefix}", None, token)[1]["total"] >= 1
    assert _send(airflow_server, "GET", f"{base}/sessions?older_than_hours=1", None, token)[1]["total"] == 0

    answer = _send(airflow_server, "POST", f"{base}/stop", {}, token)[1]
    assert answer["ok"] is True and "Stopped" in answer["message"]
    assert emulator_conn.stats()["running_sessions"][emulator_conn.username] is None

    gone = {"sessions": [{"scope": old.obj_id.scope, "identifier": old.obj_id.identifier}]}
    answer = _send(airflow_server, "DELETE", f"{base}/sessions", gone, token)[1]
    assert answer["ok"] is True and old.obj_id.identifier in answer["message"]
    assert _send(airflow_server, "GET", f"{base}/sessions", None, token)[1]["total"] == 1

    answer = _send(airflow_server, "POST", f"{base}/dispose", {}, token)[1]
    assert answer["ok"] is True
    assert emulator_conn.stats()["slots"][emulator_conn.username] is None

    everything = json.dumps([page, listed, answer])
    for secret in _secrets(emulator_conn):
        assert secret not in everything


def test_a_connection_whose_credentials_fail_shows_the_error_not_a_secret(
    airflow_server: AirflowServer, candela_emulator: CandelaEmulator
) -> None:
    bad = json.loads(candela_emulator.connection_json())
    bad["password"] = "wrong-password-123"
    airflow_server.cli("connections", "add", "candela_page_bad", "--conn-json", json.dumps(bad))
    try:
        status, page = _send(airflow_server, "GET", "/candela/api/connections", None, _token(airflow_server, "admin"))
        assert status == 200
        (row,) = [c for c in page["connections"] if c["conn_id"] == "candela_page_bad"]
        assert "refused the password grant" in row["error"] and "Check login, password" in row["error"]
        assert "Traceback" not in row["error"] and row.get("slot") is None
        assert "wrong-password-123" not in json.dumps(page)
        assert candela_emulator.client_secret not in json.dumps(page)
    finally:
        airflow_server.cli("connections", "delete", "candela_page_bad")


def test_stored_sessions_are_filtered_paged_newest_first_and_selected_versions_deleted(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ObjectMetadata] = []
    with local_hook(emulator_conn, monkeypatch) as hook:
        hook.ensure_slot(timeout=20, poll_interval=0.05)
        for scope, parent in (("default", None), ("default", 0), ("team-a", None)):
            parent_id = started[parent].obj_id if parent is not None else None
            started.append(
                hook.start_session("default/demo-agent", "default/demo-model", scope=scope, parent_session=parent_id)
            )
            hook.stop_session()
    first, second_version, team = started
    assert (second_version.obj_id.identifier, second_version.obj_id.version) == (first.obj_id.identifier, "1.1.0")

    token = _token(airflow_server, "admin")
    base = f"/candela/api/connections/{CONN_ID}/sessions"

    def listed(query: str = "") -> list[str]:
        status, answer = _send(airflow_server, "GET", f"{base}?{query}", None, token)
        assert status == 200, answer
        return [f"{s['scope']}/{s['identifier']}:{s['version']}" for s in answer["sessions"]]

    newest_first = [str(m.obj_id) for m in reversed(started)]
    assert listed() == newest_first
    assert listed("limit=1&offset=1") == newest_first[1:2]
    assert listed("offset=3") == []
    assert listed("scope=team-a") == [str(team.obj_id)]
    assert listed(f"identifier_prefix={first.obj_id.identifier}") == newest_first[1:]
    assert listed("older_than_hours=1") == []
    assert listed("older_than_hours=0") == newest_first
    assert _send(airflow_server, "GET", f"{base}?limit=0", None, token)[0] == 422

    picked = [first.obj_id.model_dump(), team.obj_id.model_dump()]
    answer = _send(airflow_server, "DELETE", base, {"sessions": picked}, token)[1]
    assert answer == {"ok": True, "message": f"Deleted 2 session version(s): {first.obj_id}, {team.obj_id}"}
    assert listed() == [str(second_version.obj_id)], "only the selected versions are gone"
    assert emulator_conn.stats()["sessions_stored"] == 1
    assert _send(airflow_server, "DELETE", base, {"sessions": []}, token)[0] == 422


def test_assign_takes_the_slot_type_of_the_connection_and_says_what_candela_answered(
    airflow_server: AirflowServer, candela_emulator: CandelaEmulator
) -> None:
    conn_id = "candela_page_small"
    airflow_server.cli(
        "connections", "add", conn_id, "--conn-json", candela_emulator.connection_json(slot_type="gpu-small")
    )
    token = _token(airflow_server, "admin")
    try:
        (row,) = [
            c
            for c in _send(airflow_server, "GET", "/candela/api/connections", None, token)[1]["connections"]
            if c["conn_id"] == conn_id
        ]
        assert row["slot_type_default"] == "gpu-small" and row["slot"] is None

        answer = _send(airflow_server, "POST", f"/candela/api/connections/{conn_id}/assign", {}, token)[1]
        assert answer["ok"] is False
        assert "Unknown slot type 'gpu-small'" in answer["message"] and "gpu-medium" in answer["message"]
        assert candela_emulator.stats()["slots"][candela_emulator.username] is None

        answer = _send(
            airflow_server, "POST", f"/candela/api/connections/{conn_id}/assign", {"slot_type": "gpu-medium"}, token
        )[1]
        assert answer == {
            "ok": True,
            "message": f"Asked Candela for a slot of type 'gpu-medium' for {conn_id!r}; it starts in a few moments.",
        }
        assert candela_emulator.stats()["slots"][candela_emulator.username] is not None
    finally:
        airflow_server.cli("connections", "delete", conn_id)


class _SlowCandela(http.server.ThreadingHTTPServer):
    """A Candela on loopback that answers every request correctly, each after ``delay`` seconds."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowCandela

    def do_GET(self) -> None:
        time.sleep(self.server.delay)  # the slowness under test, not a wait of the test
        body = b"[]" if self.path.startswith("/sessions/list") else b"false"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_slow_candela_shows_a_timeout_message_within_the_connections_timeout(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator
) -> None:
    conn_id = "candela_page_slow"
    slow = _SlowCandela(delay=0.9)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    conn = json.loads(emulator_conn.connection_json(pat=True, timeout="0.5,1"))
    airflow_server.cli("connections", "add", conn_id, "--conn-json", json.dumps({**conn, "host": slow.url}))
    token = _token(airflow_server, "admin")
    try:
        status, page = _send(airflow_server, "GET", "/candela/api/connections", None, token)
    finally:
        airflow_server.cli("connections", "delete", conn_id)
        slow.shutdown()
        slow.server_close()
    assert status == 200
    rows = {c["conn_id"]: c for c in page["connections"]}
    # each answer comes within the read timeout, but not all of them within the connection's timeout
    assert rows[conn_id]["error"].startswith(f"Candela at {slow.url} did not answer within 1.5 s, the timeout of")
    assert "error" not in rows[CONN_ID], "the other connections are shown as usual"


def test_candelas_error_is_scrubbed_like_the_hooks(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator
) -> None:
    leak = f"internal error near client_secret={emulator_conn.client_secret} password={emulator_conn.password}"
    emulator_conn.add_fault(match="GET /sessions/list", status=500, body={"detail": leak}, count=-1)
    status, page = _send(airflow_server, "GET", "/candela/api/connections", None, _token(airflow_server, "admin"))
    assert status == 200
    (row,) = [c for c in page["connections"] if c["conn_id"] == CONN_ID]
    assert "500" in row["error"] and "client_secret=***" in row["error"] and "password=***" in row["error"]
    for secret in _secrets(emulator_conn):
        assert secret not in json.dumps(page)


def _raw(server: AirflowServer, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str]:
    """A request exactly as given (no header added): status and body text."""
    request = urllib.request.Request(server.url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


#: What another origin's page can make the browser send with the admin's cookie, and headers only a script of
#: another origin could claim (a foreign Origin, Sec-Fetch-Site other than same-origin); each is refused.
JSON_FROM_PAGE = {"Content-Type": "application/json", "X-Candela-Page": "1"}
FORGERIES = {
    "form-urlencoded": ({"Content-Type": "application/x-www-form-urlencoded"}, b"slot_type=gpu-medium"),
    "form-multipart": ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b--\r\n"),
    "text-plain-json": ({"Content-Type": "text/plain"}, b'{"slot_type": "gpu-medium"}'),
    "no-body": ({}, None),
    "json-without-page-header": ({"Content-Type": "application/json"}, b"{}"),
    "page-header-text-plain": ({"X-Candela-Page": "1", "Content-Type": "text/plain"}, b"{}"),
    "page-header-json-no-body": (JSON_FROM_PAGE, None),
    "page-header-json-not-json": (JSON_FROM_PAGE, b"slot_type=gpu-medium"),
    "foreign-origin": ({**JSON_FROM_PAGE, "Origin": "http://127.0.0.1:1"}, b"{}"),
    "null-origin": ({**JSON_FROM_PAGE, "Origin": "null"}, b"{}"),
    "cross-site": ({**JSON_FROM_PAGE, "Sec-Fetch-Site": "cross-site"}, b"{}"),
    "same-site": ({**JSON_FROM_PAGE, "Sec-Fetch-Site": "same-site"}, b"{}"),
}
ACTIONS = [
    ("POST", f"/candela/api/connections/{CONN_ID}/stop"),
    ("POST", f"/candela/api/connections/{CONN_ID}/dispose"),
    ("POST", f"/candela/api/connections/{CONN_ID}/assign"),
    ("DELETE", f"/candela/api/connections/{CONN_ID}/sessions"),
]


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_actions_are_refused_and_nothing_reaches_candela(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, forgery: str
) -> None:
    (running,) = slot_with_sessions(emulator_conn, monkeypatch, "default/demo-pipeline")
    before = emulator_conn.stats()["requests_total"]
    extra, body = FORGERIES[forgery]
    cookie = {"Cookie": f"_token={_token(airflow_server, 'admin')}"}  # what the browser adds to a forged request
    for method, path in ACTIONS:
        status, text = _raw(airflow_server, method, path, {**cookie, **extra}, body)
        # a body that is not JSON, on a route that takes one, is refused by FastAPI's parsing before the check (422)
        assert status in (400, 403, 415, 422), (method, path, status, text)
        assert status == 422 or "The Candela page refused this request" in text, text
    stats = emulator_conn.stats()
    assert stats["requests_total"] == before, "a refused request reached Candela"
    assert stats["running_sessions"][emulator_conn.username] is not None, "the session still runs"
    assert stats["slots"][emulator_conn.username] is not None, "the slot still exists"
    assert stats["running_sessions"][emulator_conn.username] == running.obj_id.model_dump()


def test_the_pages_own_request_from_a_browser_is_accepted(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Chromium sends from the page (own Origin, Sec-Fetch-Site: same-origin, the cookie) acts."""
    slot_with_sessions(emulator_conn, monkeypatch, "default/demo-pipeline")
    headers = {
        **JSON_FROM_PAGE,
        "Origin": airflow_server.url,
        "Sec-Fetch-Site": "same-origin",
        "Cookie": f"_token={_token(airflow_server, 'admin')}",
    }
    status, text = _raw(airflow_server, "POST", f"/candela/api/connections/{CONN_ID}/stop", headers, b"{}")
    assert status == 200 and json.loads(text)["ok"] is True, text
    assert emulator_conn.stats()["running_sessions"][emulator_conn.username] is None


LONG = "x" * 5000
#: query -> the total listed (the one stored session is a few seconds old, in scope default) or "4xx"
FILTERS = {
    "older_than_hours=0": 1,
    "older_than_hours=1e-300": 1,
    "older_than_hours=1": 0,
    "older_than_hours=99999999999": 0,
    "older_than_hours=1e308": 0,
    "older_than_hours=1e400": "4xx",
    "older_than_hours=inf": "4xx",
    "older_than_hours=Infinity": "4xx",
    "older_than_hours=-inf": "4xx",
    "older_than_hours=nan": "4xx",
    "older_than_hours=NaN": "4xx",
    "older_than_hours=-1": "4xx",
    "older_than_hours=abc": "4xx",
    "older_than_hours=": "4xx",
    "offset=1": 1,
    "offset=1000000000": 1,
    "offset=99999999999999999999999": "4xx",
    "offset=1e30": "4xx",
    "offset=-1": "4xx",
    "offset=1.5": "4xx",
    "offset=inf": "4xx",
    "offset=abc": "4xx",
    "limit=500": 1,
    "limit=0": "4xx",
    "limit=-1": "4xx",
    "limit=501": "4xx",
    "limit=1e308": "4xx",
    "limit=nan": "4xx",
    "scope=default": 1,
    "scope=%00": 0,
    "scope=%FF": 0,
    "scope=d%C3%A9faut%F0%9F%92%A1": 0,
    f"scope={LONG}": "4xx",
    "identifier_prefix=%00": 0,
    "identifier_prefix=%25": 0,
    "identifier_prefix=%E2%80%AE": 0,
    f"identifier_prefix={LONG}": "4xx",
    "scope=&identifier_prefix=&offset=0": 1,
}


@pytest.mark.parametrize("query", list(FILTERS), ids=[q[:40] for q in FILTERS])
def test_every_filter_value_gets_an_answer_or_a_4xx(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    slot_with_sessions(emulator_conn, monkeypatch, "default/demo-pipeline")
    status, answer = _send(
        airflow_server,
        "GET",
        f"/candela/api/connections/{CONN_ID}/sessions?{query}",
        None,
        _token(airflow_server, "admin"),
    )
    expected = FILTERS[query]
    if expected == "4xx":
        assert 400 <= status < 500, (status, answer)
    else:
        assert status == 200, answer
        assert "error" not in answer, answer
        assert answer["total"] == expected and len(answer["sessions"]) == (0 if "offset=1" in query else expected)


def test_no_docs_pages_nothing_from_the_internet_and_a_login_everywhere_but_the_openapi_document(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator
) -> None:
    """Airflow's own Swagger UI is on here ([api] enable_swagger_ui defaults to True): the page serves none anyway."""
    token = _token(airflow_server, "admin")
    for path in ("/candela/docs", "/candela/redoc", "/candela/docs/oauth2-redirect"):
        assert _send(airflow_server, "GET", path, None, token)[0] == 404, path
    status, schema = _send(airflow_server, "GET", "/candela/openapi.json")
    assert status == 200 and "/api/connections" in schema["paths"]

    request = urllib.request.Request(f"{airflow_server.url}/candela/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        html = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert "<script>" in html and "<style>" in html
    for loads in ("<script src", "<link", "@import", "url(", "<img", "<iframe"):
        assert loads not in html, f"the page loads something ({loads})"
    assert "default-src 'none'" in policy and "frame-ancestors 'self'" in policy
    assert "http" not in policy and "unsafe-inline" not in policy


def test_a_stalled_candela_does_not_stall_airflow(
    airflow_server: AirflowServer, emulator_conn: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_candela.plugins._app import PER_CONNECTION

    slot_with_sessions(emulator_conn, monkeypatch, "default/demo-pipeline")
    stalled = SilentCandela()
    conn_id = "candela_page_stalled"
    conn = json.loads(emulator_conn.connection_json(pat=True, timeout="10,300"))
    airflow_server.cli("connections", "add", conn_id, "--conn-json", json.dumps({**conn, "host": stalled.url}))
    token = _token(airflow_server, "admin")
    loads = 40
    answers: list[tuple[int, Any]] = []

    def load() -> None:
        answers.append(_send(airflow_server, "GET", "/candela/api/connections", None, token))

    threads = [threading.Thread(target=load) for _ in range(loads)]
    try:
        for thread in threads:
            thread.start()
        # The page holds PER_CONNECTION calls on the stalled Candela; every other page load is answered at once.
        wait_for(lambda: len(answers) == loads - PER_CONNECTION, 120, "the page loads beyond the page's bound")
        assert stalled.stats().accepted == PER_CONNECTION
        for status, page in answers:
            error = {c["conn_id"]: c for c in page["connections"]}[conn_id]["error"]
            assert status == 200 and error.startswith("The Candela page is busy: "), error
            assert f"({PER_CONNECTION} for connection {conn_id!r}; the page runs at most" in error

        # Meanwhile Airflow's own routes and the page's other connections answer, and correctly.
        status, version = _send(airflow_server, "GET", "/api/v2/version", None, token)
        assert status == 200 and version["version"].startswith("3.")
        status, health = _send(airflow_server, "GET", "/api/v2/monitor/health", None, token)
        assert status == 200 and health["metadatabase"]["status"] == "healthy"
        status, dags = _send(airflow_server, "GET", "/api/v2/dags", None, token)
        assert status == 200 and "total_entries" in dags
        status, listed = _send(airflow_server, "GET", f"/candela/api/connections/{CONN_ID}/sessions", None, token)
        assert status == 200 and listed["total"] == 1 and "error" not in listed
        assert len(answers) == loads - PER_CONNECTION, "all that answered before the stalled page loads did"
    finally:
        stalled.close()  # the held calls fail now (connection closed), ending their page loads
        for thread in threads:
            thread.join(timeout=120)
        airflow_server.cli("connections", "delete", conn_id)
    assert len(answers) == loads and all(status == 200 for status, _ in answers)
