"""SessionsApi: start, dev start, stop, identity and versions, list, get, metadata, exists, delete."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from airflow_provider_candela.models import ObjectMetadata, Session
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, MODEL, PIPELINE, Api, login

CIRCUIT = {"first": "n1", "nodes": {"n1": {"type": "response", "node_id": "n1", "template": "hi"}}}
DIRECTIVE = {"point": " * ", "identity": "a helpful bot"}


def ids(items: list[dict[str, object]]) -> list[tuple[object, object]]:
    return sorted((m["obj_id"]["identifier"], m["obj_id"]["version"]) for m in items)  # type: ignore[index]


def test_start_session_returns_metadata(emulator: CandelaEmulator, ready: Api) -> None:
    before = datetime.now(UTC)
    response = ready.start()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    metadata = ObjectMetadata.model_validate(response.json())
    assert metadata.obj_id.scope == "default"
    assert re.fullmatch(r"session-[0-9a-f]{12}", metadata.obj_id.identifier)
    assert metadata.obj_id.version == "1.0.0"
    assert metadata.created_by == emulator.username
    assert metadata.domain == "demo"
    assert metadata.created_at.tzinfo is not None
    assert before <= metadata.created_at <= datetime.now(UTC), "created when it was started"
    assert emulator.stats()["running_sessions"]["demo"] == metadata.obj_id.model_dump()


def test_identifiers_are_unique(ready: Api) -> None:
    first = ready.started()["obj_id"]["identifier"]
    assert ready.get("/session/stop").status_code == 204
    second = ready.started()["obj_id"]["identifier"]
    assert first != second


def test_start_with_scope(ready: Api) -> None:
    assert ready.started(scope="team-a")["obj_id"]["scope"] == "team-a"


def test_start_without_slot_says_assign_a_slot(api: Api) -> None:
    response = api.start()
    assert response.status_code == 400
    assert "PUT /slot" in response.json()["detail"]


def test_start_on_a_slot_that_is_not_ready(emulator: CandelaEmulator, api: Api) -> None:
    emulator.configure(slot_startup_seconds=30)
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    response = api.start()
    assert response.status_code == 400
    assert "HOST_READY" in response.json()["detail"]


def test_one_running_session_per_slot(ready: Api) -> None:
    running = ready.started()["obj_id"]
    response = ready.start(PIPELINE)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "already running" in detail
    assert f"default/{running['identifier']}:1.0.0" in detail
    assert "stop it first" in detail
    unknown = {"scope": "default", "identifier": "no-such-app"}
    assert ready.start(unknown).status_code == 400, "an unknown app is refused before the conflict"
    assert ready.get("/session/stop").status_code == 204
    assert ready.start(PIPELINE).status_code == 200


def test_stop_session_with_nothing_running_is_204(api: Api) -> None:
    for _ in range(2):
        response = api.get("/session/stop")
        assert response.status_code == 204
        assert response.content == b""


def test_unknown_app_names_it_and_lists_apps(ready: Api) -> None:
    response = ready.start({"scope": "default", "identifier": "no-such-app"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "default/no-such-app" in detail
    assert "default/demo-agent" in detail and "default/demo-pipeline" in detail


def test_unknown_model_names_it(ready: Api) -> None:
    response = ready.post("/session", json={"app": AGENT, "model_cfg": {"scope": "default", "identifier": "gpt-x"}})
    assert response.status_code == 400
    assert "default/gpt-x" in response.json()["detail"]
    assert "default/demo-model" in response.json()["detail"]


def test_versions_of_app_and_model(ready: Api) -> None:
    response = ready.start({**AGENT, "version": "9.9.9"})
    assert response.status_code == 400
    assert "9.9.9" in response.json()["detail"] and "1.0.0" in response.json()["detail"]
    metadata = ready.started({**AGENT, "version": None})
    session = Session.model_validate(
        ready.get("/sessions/", params={"scope": "default", "identifier": metadata["obj_id"]["identifier"]}).json()
    )
    assert session.app is not None and session.app.version == "1.0.0", "null version = latest"
    assert session.model_cfg.version == "1.0.0"


def test_start_session_validation_is_fastapi_422(ready: Api) -> None:
    response = ready.post("/session", json={"model_cfg": MODEL})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "app"]
    assert {"loc", "msg", "type"} <= set(detail[0])


def test_get_session(ready: Api) -> None:
    metadata = ready.started()
    response = ready.get("/sessions/", params={"scope": "default", "identifier": metadata["obj_id"]["identifier"]})
    assert response.status_code == 200
    body = response.json()
    assert "app" in body
    session = Session.model_validate(body)
    assert session.app is not None and session.app.identifier == "demo-agent"
    assert session.model_cfg.identifier == "demo-model"
    assert session.host_id
    assert session.dev_session is False
    assert session.parent_session is None


def test_dev_session(ready: Api) -> None:
    response = ready.post("/session/dev", json={"model_id": MODEL, "circuit": CIRCUIT, "directive": DIRECTIVE})
    assert response.status_code == 200, response.text
    metadata = ObjectMetadata.model_validate(response.json())
    body = ready.get("/sessions/", params={"scope": "default", "identifier": metadata.obj_id.identifier}).json()
    assert body["app"] is None
    assert body["dev_session"] is True


def test_dev_session_errors(ready: Api) -> None:
    response = ready.post("/session/dev", json={"model_id": MODEL, "circuit": {"first": "n1"}, "directive": {}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "circuit"]
    response = ready.post(
        "/session/dev",
        json={"model_id": MODEL, "circuit": {"first": "zz", "nodes": CIRCUIT["nodes"]}, "directive": {}},
    )
    assert response.status_code == 400
    assert "zz" in response.json()["detail"]


def test_parent_session_bumps_version_and_keeps_identifier(ready: Api) -> None:
    parent = ready.started()["obj_id"]
    ready.get("/session/stop")
    child = ready.started(parent_session=parent)["obj_id"]
    assert child["identifier"] == parent["identifier"]
    assert child["version"] != parent["version"]
    assert child["version"] > parent["version"]
    ready.get("/session/stop")
    grandchild = ready.started(parent_session={**parent, "version": None})["obj_id"]
    assert len({parent["version"], child["version"], grandchild["version"]}) == 3
    session = ready.get("/sessions/", params={"scope": "default", "identifier": parent["identifier"]}).json()
    assert session["parent_session"]["identifier"] == parent["identifier"]


def test_unknown_parent_session_is_400(ready: Api) -> None:
    response = ready.start(parent_session={"scope": "default", "identifier": "session-000000000000"})
    assert response.status_code == 400
    assert "session-000000000000" in response.json()["detail"]


def test_list_latest_versus_all_versions(ready: Api) -> None:
    assert ready.get("/sessions/list").json() == []
    parent = ready.started()["obj_id"]
    ready.get("/session/stop")
    child = ready.started(parent_session=parent)["obj_id"]
    ready.get("/session/stop")
    other = ready.started()["obj_id"]
    latest = ready.get("/sessions/list").json()
    assert ids(latest) == sorted([(child["identifier"], child["version"]), (other["identifier"], "1.0.0")])
    for value in ("False", "false", "FALSE"):
        assert ids(ready.get("/sessions/list", params={"all_versions": value}).json()) == ids(latest)
    for value in ("True", "true", "TRUE"):
        every = ready.get("/sessions/list", params={"all_versions": value}).json()
        assert len(every) == 3
    for item in every:
        ObjectMetadata.model_validate(item)
    assert ready.get("/sessions/list", params={"all_versions": "maybe"}).status_code == 422


def test_exists(ready: Api) -> None:
    sid = ready.started()["obj_id"]["identifier"]

    def exists(**params: str) -> object:
        response = ready.get("/sessions/exists", params={"scope": "default", **params})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        return response.json()

    assert exists(identifier=sid) is True
    assert exists(identifier=sid, version="1.0.0") is True
    assert exists(identifier=sid, version="2.0.0") is False
    assert exists(identifier="session-nope") is False
    assert ready.get("/sessions/exists", params={"scope": "other", "identifier": sid}).json() is False


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/sessions/"), ("GET", "/sessions/metadata"), ("GET", "/sessions/exists"), ("DELETE", "/sessions/")],
)
def test_scope_and_identifier_are_required(ready: Api, method: str, path: str) -> None:
    response = ready.request(method, path, params={"identifier": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "scope"]
    response = ready.request(method, path, params={"scope": "default"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "identifier"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/sessions/"), ("GET", "/sessions/metadata"), ("DELETE", "/sessions/")]
)
def test_unknown_session_is_404(ready: Api, method: str, path: str) -> None:
    response = ready.request(method, path, params={"scope": "default", "identifier": "session-nope"})
    assert response.status_code == 404
    assert "session-nope" in response.json()["detail"]


def test_metadata_latest_and_by_version(ready: Api) -> None:
    parent = ready.started()["obj_id"]
    ready.get("/session/stop")
    ready.started(parent_session=parent)
    params = {"scope": "default", "identifier": parent["identifier"]}
    latest = ready.get("/sessions/metadata", params=params).json()
    assert latest["obj_id"]["version"] != "1.0.0"
    first = ready.get("/sessions/metadata", params={**params, "version": "1.0.0"}).json()
    assert first["obj_id"] == parent
    assert ready.get("/sessions/metadata", params={**params, "version": "7.0.0"}).status_code == 404


def test_delete_without_version_deletes_all_versions(emulator: CandelaEmulator, ready: Api) -> None:
    parent = ready.started()["obj_id"]
    ready.get("/session/stop")
    child = ready.started(parent_session=parent)["obj_id"]
    params = {"scope": "default", "identifier": parent["identifier"]}
    response = ready.delete("/sessions/", params=params)
    assert response.status_code == 200
    deleted = response.json()
    assert ids(deleted) == sorted([(parent["identifier"], parent["version"]), (child["identifier"], child["version"])])
    assert ready.get("/sessions/exists", params=params).json() is False
    assert emulator.stats()["running_sessions"]["demo"] is None, "deleting the running session stops it"
    assert emulator.stats()["sessions_stored"] == 0


def test_delete_one_version(ready: Api) -> None:
    parent = ready.started()["obj_id"]
    ready.get("/session/stop")
    child = ready.started(parent_session=parent)["obj_id"]
    params = {"scope": "default", "identifier": parent["identifier"]}
    deleted = ready.delete("/sessions/", params={**params, "version": "1.0.0"}).json()
    assert [item["obj_id"] for item in deleted] == [parent]
    assert ready.get("/sessions/exists", params=params).json() is True
    assert ready.get("/sessions/metadata", params=params).json()["obj_id"] == child
    assert ready.start().status_code == 409, "the child version still runs"


def test_sessions_of_each_user(emulator: CandelaEmulator, ready: Api) -> None:
    emulator.add_user("bob", "bob-password")
    bob = login(emulator, "bob", "bob-password")
    mine = ready.started()
    assert bob.start().status_code == 400, "bob has no slot yet"
    bob.ready_slot()
    theirs = bob.started()
    assert theirs["created_by"] == "bob"
    assert mine["created_by"] == "demo"
    running = emulator.stats()["running_sessions"]
    assert running["demo"]["identifier"] == mine["obj_id"]["identifier"]
    assert running["bob"]["identifier"] == theirs["obj_id"]["identifier"]
    assert bob.get("/session/stop").status_code == 204
    assert emulator.stats()["running_sessions"]["demo"] is not None, "stop only stops the caller's session"
