"""``/_emulator`` statistics and controls, the CLI, start-up time and the testing helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from airflow_provider_candela.testing import CandelaEmulator, CandelaEmulatorError

from ._helpers import Api, password_grant

EXISTS = {"scope": "default", "identifier": "x"}


def test_stats_count_requests_per_route_and_status(emulator: CandelaEmulator, api: Api) -> None:
    for _ in range(3):
        api.get("/sessions/exists", params=EXISTS)
    api.get("/sessions/exists")
    api.get("/session/stop")
    requests.get(emulator.url + "/sessions/list", timeout=10)
    stats = emulator.stats()
    assert stats["requests"]["GET /sessions/exists"] == {"200": 3, "422": 1}
    assert stats["requests"]["GET /session/stop"] == {"204": 1}
    assert stats["requests"]["GET /sessions/list"] == {"401": 1}
    assert stats["requests"]["POST /oauth2/token"] == {"200": 1}
    assert stats["requests_total"] == 7
    assert stats["token_grants"] == {"password": 1, "refresh": 0}
    assert not any(key.split()[1].startswith("/_emulator") for key in stats["requests"])


def test_stats_sessions_and_slots(emulator: CandelaEmulator, ready: Api) -> None:
    metadata = ready.started()
    ready.get("/session/stop")
    ready.started(parent_session=metadata["obj_id"])
    stats = emulator.stats()
    assert stats["sessions_started"] == 2
    assert stats["sessions_stored"] == 2
    assert stats["running_sessions"]["demo"]["identifier"] == metadata["obj_id"]["identifier"]
    assert stats["slots"]["demo"] == {"slot_type": "gpu-medium", "state": 3}


def test_reset_clears_everything_but_users_and_config(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_user("dave", "dave-password")
    emulator.configure(event_delay=0.01)
    ready.started()
    emulator.add_fault(match="GET /x", status=500)
    emulator.reset()
    stats = emulator.stats()
    assert stats["requests"] == {}
    assert stats["requests_total"] == 0
    assert stats["tcp_connections"] == 0
    assert stats["sessions_stored"] == 0
    assert stats["slots"]["demo"] is None
    assert stats["running_sessions"]["demo"] is None
    assert stats["running_sessions"]["dave"] is None, "users added at run time are kept"
    assert emulator.faults() == []
    assert ready.get("/sessions/list").status_code == 401, "tokens are forgotten"
    assert password_grant(emulator, "dave", "dave-password").status_code == 200
    assert emulator.configure()["event_delay"] == 0.01


def test_one_tcp_connection_for_a_keep_alive_session(emulator: CandelaEmulator) -> None:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {emulator.access_token}"
        for _ in range(10):
            assert session.get(emulator.url + "/sessions/exists", params=EXISTS).status_code == 200
    stats = emulator.stats()
    assert stats["requests"]["GET /sessions/exists"] == {"200": 10}
    assert stats["tcp_connections"] == 1


def test_one_tcp_connection_per_request_without_keep_alive(emulator: CandelaEmulator) -> None:
    headers = {"Authorization": f"Bearer {emulator.access_token}"}
    for _ in range(5):
        requests.get(emulator.url + "/sessions/exists", params=EXISTS, headers=headers, timeout=10)
    assert emulator.stats()["tcp_connections"] == 5


def test_config_control(emulator: CandelaEmulator) -> None:
    config = emulator.configure(event_delay=0.2, token_ttl=10, slot_startup_seconds=0.1, agent_chat_events=5)
    assert config["event_delay"] == 0.2
    assert config["token_ttl"] == 10
    assert config["agent_chat_events"] == 5
    assert emulator.configure(agent_chat_events=None)["agent_chat_events"] is None
    with pytest.raises(CandelaEmulatorError, match="400"):
        emulator.configure(token_ttl=-1)
    with pytest.raises(CandelaEmulatorError, match="400"):
        emulator.configure(password="x")


def test_add_user_control(emulator: CandelaEmulator) -> None:
    assert password_grant(emulator, "erin", "erin-password").status_code == 400
    emulator.add_user("erin", "erin-password")
    assert password_grant(emulator, "erin", "erin-password").status_code == 200
    with pytest.raises(CandelaEmulatorError, match="400"):
        emulator._control("POST", "/_emulator/users", {"username": "x"})


def test_connection_json(emulator: CandelaEmulator) -> None:
    conn = json.loads(emulator.connection_json())
    assert conn["conn_type"] == "candela"
    assert conn["host"] == emulator.url
    assert conn["login"] == "demo"
    assert conn["password"] == "demo-password"
    assert conn["extra"] == {
        "token_url": emulator.url + "/oauth2/token",
        "client_id": "demo-client",
        "client_secret": "demo-client-secret",
    }
    pat = json.loads(emulator.connection_json(pat=True, slot_type="local"))
    assert pat["extra"] == {"access_token": "demo-pat", "slot_type": "local"}
    assert "password" not in pat


def test_candela_connection_fixture_sets_the_env(candela_connection: str, candela_emulator: CandelaEmulator) -> None:
    assert candela_connection == "candela_default"
    assert json.loads(os.environ["AIRFLOW_CONN_CANDELA_DEFAULT"])["host"] == candela_emulator.url


def test_start_returns_once_the_emulator_answers() -> None:
    emulator = CandelaEmulator().start()
    try:
        assert emulator.running
        # the first request after start() is answered (no connection refused, no retry)
        assert requests.get(emulator.url + "/sessions/list", timeout=10).status_code == 401
    finally:
        emulator.stop()
    assert not emulator.running


def test_restart_on_the_same_port_refuses_connections_while_down() -> None:
    with CandelaEmulator() as emulator:
        port = emulator.port
        headers = {"Authorization": f"Bearer {emulator.access_token}"}
        emulator.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/sessions/list", headers=headers, timeout=5)
        emulator.start()
        assert emulator.port == port
        assert requests.get(emulator.url + "/sessions/list", headers=headers, timeout=10).status_code == 200
        emulator.restart()
        assert emulator.port == port


def test_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_candela.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    for flag in ("--port", "--token-ttl", "--slot-startup-seconds", "--event-delay", "--catalog", "--fault"):
        assert flag in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("candela-emulator")
    assert script.exists()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "candela-emulator" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "{not json"], "--fault"),
        (["--fault", '{"status": 999}'], "status"),
        (["--catalog", "/nonexistent/catalog.json"], "cannot read catalog"),
    ],
)
def test_cli_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_candela.emulator", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_catalog_entry_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"apps": [{"identifier": "x", "kind": "robot"}]}))
    with pytest.raises(CandelaEmulatorError, match="kind must be"):
        CandelaEmulator(catalog=str(path), startup_timeout=10).start()


def test_emulator_imports_no_airflow() -> None:
    code = (
        "import sys; import airflow_provider_candela.emulator.app, airflow_provider_candela.emulator.server; "
        "import airflow_provider_candela.testing; "
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_testing_module_imports_nothing_heavy() -> None:
    code = (
        "import sys; import airflow_provider_candela.testing; "
        "print(sorted(m for m in ('fastapi', 'requests', 'uvicorn', 'pydantic', 'airflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_credentials_that_start_with_a_dash_reach_the_emulator() -> None:
    # Random secrets (secrets.token_urlsafe) start with '-' about one time in 64.
    with CandelaEmulator(password="-pw-1", client_secret="--cs", access_token="-pat") as emu:
        assert password_grant(emu).status_code == 200
        assert requests.get(f"{emu.url}/slot/user_has_slot", headers={"Authorization": "Bearer -pat"}, timeout=5).ok
