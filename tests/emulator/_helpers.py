"""Helpers for the emulator's tests: real HTTP with ``requests`` against the emulator subprocess."""

from __future__ import annotations

from typing import Any, TypeVar

import requests

from airflow_provider_candela.testing import CandelaEmulator, wait_until

T = TypeVar("T")

SCOPE = "openid client groups offline_access"
AGENT = {"scope": "default", "identifier": "demo-agent"}
PIPELINE = {"scope": "default", "identifier": "demo-pipeline"}
MODEL = {"scope": "default", "identifier": "demo-model"}


def password_grant(
    emulator: CandelaEmulator, username: str | None = None, password: str | None = None, **overrides: str
) -> requests.Response:
    """The password grant exactly as the FINBOURNE SDK sends it (form body built by hand)."""
    form = {
        "grant_type": "password",
        "username": username or emulator.username,
        "password": password or emulator.password,
        "scope": SCOPE,
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        **overrides,
    }
    body = "&".join(f"{key}={value}" for key, value in form.items())
    return requests.post(
        emulator.token_url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        timeout=10,
    )


class Api:
    """A keep-alive ``requests.Session`` with a bearer token for one user of the emulator."""

    def __init__(self, emulator: CandelaEmulator, token: str) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.emulator.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    # conveniences
    def ready_slot(self) -> None:
        assert self.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
        wait_until(lambda: self.get("/slot/state").json() == 3)

    def start(self, app: dict[str, Any] | None = None, **body: Any) -> requests.Response:
        return self.post("/session", json={"app": app or AGENT, "model_cfg": MODEL, **body})

    def started(self, app: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        response = self.start(app, **body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        self.session.close()


def login(emulator: CandelaEmulator, username: str | None = None, password: str | None = None) -> Api:
    response = password_grant(emulator, username, password)
    assert response.status_code == 200, response.text
    return Api(emulator, response.json()["access_token"])
