"""OAuth2 token endpoint, personal access token and bearer checks on every API route."""

from __future__ import annotations

import base64

import pytest
import requests

from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import SCOPE, Api, login, password_grant, wait_until

API_ROUTES = [
    ("DELETE", "/sessions/?scope=default&identifier=x"),
    ("GET", "/sessions/?scope=default&identifier=x"),
    ("GET", "/sessions/metadata?scope=default&identifier=x"),
    ("GET", "/sessions/list"),
    ("GET", "/sessions/exists?scope=default&identifier=x"),
    ("POST", "/session"),
    ("POST", "/session/dev"),
    ("GET", "/session/stop"),
    ("POST", "/session/pipeline_submit"),
    ("POST", "/session/agent_submit"),
    ("PUT", "/slot?slot_type=gpu-medium"),
    ("DELETE", "/slot"),
    ("GET", "/slot/state"),
    ("GET", "/slot/metadata"),
    ("GET", "/slot/user_has_slot"),
]


def refresh_grant(emulator: CandelaEmulator, refresh_token: str, client_secret: str | None = None) -> requests.Response:
    """The refresh grant as the SDK sends it: HTTP Basic client credentials, form body."""
    basic = base64.b64encode(f"{emulator.client_id}:{client_secret or emulator.client_secret}".encode()).decode()
    return requests.post(
        emulator.token_url,
        data=f"grant_type=refresh_token&scope={SCOPE}&refresh_token={refresh_token}",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )


def test_password_grant_returns_tokens_that_work(emulator: CandelaEmulator) -> None:
    response = password_grant(emulator)
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"access_token", "refresh_token", "expires_in", "token_type"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["access_token"] != body["refresh_token"]
    assert len(body["access_token"]) >= 32
    again = password_grant(emulator).json()
    assert again["access_token"] != body["access_token"], "tokens must be random"
    api = Api(emulator, body["access_token"])
    assert api.get("/slot/user_has_slot").json() is False


def test_password_grant_wrong_password_is_invalid_grant(emulator: CandelaEmulator) -> None:
    response = password_grant(emulator, password="wrong")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_description"]


def test_password_grant_unknown_user_is_invalid_grant(emulator: CandelaEmulator) -> None:
    response = password_grant(emulator, username="nobody")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_password_grant_wrong_client_is_invalid_client(emulator: CandelaEmulator) -> None:
    response = password_grant(emulator, client_secret="wrong")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_token_endpoint_rejects_json_body_and_unknown_grants(emulator: CandelaEmulator) -> None:
    response = requests.post(emulator.token_url, json={"grant_type": "password"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    response = requests.post(
        emulator.token_url,
        data={"grant_type": "client_credentials", "client_id": emulator.client_id},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_refresh_grant_with_basic_auth_issues_a_new_access_token(emulator: CandelaEmulator) -> None:
    tokens = password_grant(emulator).json()
    response = refresh_grant(emulator, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    refreshed = response.json()
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["refresh_token"]
    assert Api(emulator, refreshed["access_token"]).get("/slot/user_has_slot").status_code == 200
    grants = emulator.stats()["token_grants"]
    assert grants == {"password": 1, "refresh": 1}


def test_refresh_grant_unknown_token_says_invalid_or_expired(emulator: CandelaEmulator) -> None:
    response = refresh_grant(emulator, "not-a-refresh-token")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "refresh token is invalid or expired" in response.json()["error_description"]


def test_refresh_grant_wrong_client_secret(emulator: CandelaEmulator) -> None:
    tokens = password_grant(emulator).json()
    response = refresh_grant(emulator, tokens["refresh_token"], client_secret="wrong")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_refresh_tokens_do_not_survive_reset(emulator: CandelaEmulator) -> None:
    tokens = password_grant(emulator).json()
    emulator.reset()
    response = refresh_grant(emulator, tokens["refresh_token"])
    assert response.status_code == 400
    assert "refresh token is invalid or expired" in response.json()["error_description"]


def test_personal_access_token_authenticates_as_primary_user(emulator: CandelaEmulator) -> None:
    assert emulator.access_token
    api = Api(emulator, emulator.access_token)
    api.ready_slot()
    metadata = api.started()
    assert metadata["created_by"] == emulator.username


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_every_api_route_requires_a_bearer_token(emulator: CandelaEmulator, method: str, path: str) -> None:
    response = requests.request(method, emulator.url + path, json={}, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert isinstance(response.json()["detail"], str)
    response = requests.request(
        method, emulator.url + path, json={}, headers={"Authorization": "Bearer unknown-token"}, timeout=10
    )
    assert response.status_code == 401
    assert "not valid" in response.json()["detail"]


def test_basic_auth_is_not_a_bearer_token(emulator: CandelaEmulator) -> None:
    response = requests.get(
        emulator.url + "/sessions/list", headers={"Authorization": "Basic ZGVtbzpkZW1v"}, timeout=10
    )
    assert response.status_code == 401


def test_access_token_expires_after_token_ttl(emulator: CandelaEmulator) -> None:
    emulator.configure(token_ttl=1)
    tokens = password_grant(emulator).json()
    assert tokens["expires_in"] == 1
    api = Api(emulator, tokens["access_token"])
    assert api.get("/sessions/list").status_code == 200
    wait_until(lambda: api.get("/sessions/list").status_code == 401, timeout=5)
    assert "expired" in api.get("/sessions/list").json()["detail"]
    refreshed = refresh_grant(emulator, tokens["refresh_token"]).json()
    assert Api(emulator, refreshed["access_token"]).get("/sessions/list").status_code == 200


def test_expire_tokens_control_invalidates_access_tokens_only(emulator: CandelaEmulator) -> None:
    tokens = password_grant(emulator).json()
    api = Api(emulator, tokens["access_token"])
    assert api.get("/sessions/list").status_code == 200
    emulator.expire_tokens()
    assert api.get("/sessions/list").status_code == 401
    assert emulator.access_token
    assert Api(emulator, emulator.access_token).get("/sessions/list").status_code == 200, "the PAT stays valid"
    assert refresh_grant(emulator, tokens["refresh_token"]).status_code == 200


def test_pat_can_be_disabled() -> None:
    with CandelaEmulator(access_token="") as emulator:
        response = requests.get(
            emulator.url + "/sessions/list", headers={"Authorization": "Bearer demo-pat"}, timeout=10
        )
        assert response.status_code == 401
        assert login(emulator).get("/sessions/list").status_code == 200


def test_custom_credentials_from_flags() -> None:
    with CandelaEmulator(
        username="alice", password="s3cret&x", client_id="cid", client_secret="csecret", access_token="pat-1"
    ) as emulator:
        body = "&".join(
            [
                "grant_type=password",
                "username=alice",
                "password=s3cret%26x",
                f"scope={SCOPE}",
                "client_id=cid",
                "client_secret=csecret",
            ]
        )
        response = requests.post(
            emulator.token_url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert password_grant(emulator, username="demo", password="demo-password").status_code == 400
        api = Api(emulator, "pat-1")
        api.ready_slot()
        assert api.started()["created_by"] == "alice"
