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
from airflow_ui import VIEWER_USER, AirflowServer
from candela_sessions import local_hook, slot_with_sessions

from airflow_provider_candela.models import ObjectMetadata
from airflow_provider_candela.testing import CandelaEmulator

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


@pytest.fixture
def emulator_conn(airflow_server: AirflowServer, candela_emulator: CandelaEmulator) -> CandelaEmulator:
    """A connection ``CONN_ID`` of the api-server to the (reset) emulator."""
    if CONN_ID not in airflow_server.cli("connections", "list", "-o", "plain"):
        airflow_server.cli("connections", "add", CONN_ID, "--conn-json", candela_emulator.connection_json())
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
        began = time.monotonic()
        status, page = _send(airflow_server, "GET", "/candela/api/connections", None, token)
        took = time.monotonic() - began
    finally:
        airflow_server.cli("connections", "delete", conn_id)
        slow.shutdown()
        slow.server_close()
    assert status == 200
    rows = {c["conn_id"]: c for c in page["connections"]}
    # each answer comes within the read timeout, but not all of them within the connection's timeout
    assert rows[conn_id]["error"].startswith(f"Candela at {slow.url} did not answer within 1.5 s, the timeout of")
    assert "error" not in rows[CONN_ID], "the other connections are shown as usual"
    assert took < 1.5 + 5, f"the page waited {took:.1f} s"


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
