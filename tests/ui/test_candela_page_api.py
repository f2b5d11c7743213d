"""The backend of the Candela page over real HTTP: a real ``airflow api-server`` and the Candela emulator.

Every route: 401 without login, 403 for the simple auth manager's viewer (no access to connections), what an
admin sees and does, actions refused on GET, and no secret of the connection in any answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from airflow_ui import VIEWER_USER, AirflowServer

from airflow_provider_candela.testing import CandelaEmulator

pytestmark = pytest.mark.ui
CONN_ID = "candela_page_api"


def _send(server: AirflowServer, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
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
    ("POST", f"/candela/api/connections/{CONN_ID}/stop", None),
    ("POST", f"/candela/api/connections/{CONN_ID}/dispose", None),
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
    from airflow_provider_candela.hooks.candela import CandelaHook

    token = _token(airflow_server, "admin")
    base = f"/candela/api/connections/{CONN_ID}"
    assert _send(airflow_server, "POST", f"{base}/assign", {"slot_type": "gpu-medium"}, token)[1]["ok"] is True
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_PAGE_LOCAL", emulator_conn.connection_json())
    with CandelaHook("candela_page_local") as hook:
        hook.ensure_slot(timeout=20, poll_interval=0.05)
        old = hook.start_session("default/demo-pipeline", "default/demo-model")
        hook.stop_session()
        running = hook.start_session("default/demo-pipeline", "default/demo-model")

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

    answer = _send(airflow_server, "POST", f"{base}/stop", None, token)[1]
    assert answer["ok"] is True and "Stopped" in answer["message"]
    assert emulator_conn.stats()["running_sessions"][emulator_conn.username] is None

    gone = {"sessions": [{"scope": old.obj_id.scope, "identifier": old.obj_id.identifier}]}
    answer = _send(airflow_server, "DELETE", f"{base}/sessions", gone, token)[1]
    assert answer["ok"] is True and old.obj_id.identifier in answer["message"]
    assert _send(airflow_server, "GET", f"{base}/sessions", None, token)[1]["total"] == 1

    answer = _send(airflow_server, "POST", f"{base}/dispose", None, token)[1]
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
        assert row["error"] and "Traceback" not in row["error"]
        assert "wrong-password-123" not in json.dumps(page)
        assert candela_emulator.client_secret not in json.dumps(page)
    finally:
        airflow_server.cli("connections", "delete", "candela_page_bad")
