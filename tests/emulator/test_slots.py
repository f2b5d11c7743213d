"""UserSlotsApi: assign, state progression, metadata, dispose."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow_provider_candela.models import SlotData
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import Api, wait_until


def test_user_has_no_slot_until_assigned(api: Api) -> None:
    response = api.get("/slot/user_has_slot")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() is False
    response = api.put("/slot", params={"slot_type": "gpu-medium"})
    assert response.status_code == 204
    assert response.content == b""
    assert api.get("/slot/user_has_slot").json() is True


def test_slot_moves_through_states_to_host_ready(emulator: CandelaEmulator, api: Api) -> None:
    emulator.configure(slot_startup_seconds=0.6)
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    seen: list[int] = []

    def ready() -> bool:
        response = api.get("/slot/state")
        assert response.status_code == 200
        state = response.json()
        assert isinstance(state, int)
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == 3

    wait_until(ready, timeout=60, interval=0.01)  # a guard against a hang only
    assert seen[0] in (0, 1), seen
    assert seen == sorted(seen), f"states must only move forward: {seen}"
    assert seen[-1] == 3
    assert len(seen) >= 2, f"expected intermediate states before HOST_READY: {seen}"


def test_slot_metadata(api: Api, emulator: CandelaEmulator) -> None:
    before = datetime.now(UTC)
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    wait_until(lambda: api.get("/slot/state").json() == 3)
    response = api.get("/slot/metadata")
    assert response.status_code == 200
    slot = SlotData.model_validate(response.json())
    assert slot.slot_type == "gpu-medium"
    assert slot.domain == "demo"
    assert slot.state == 3
    assert slot.assigned_to == emulator.username
    assert slot.ready is not None
    assert slot.created is not None
    assert before <= slot.created <= datetime.now(UTC), "created when it was assigned"


def test_a_failing_slot_starts_then_ends_errored_and_refuses_sessions(emulator: CandelaEmulator, api: Api) -> None:
    emulator.configure(slot_startup_seconds=2, slot_start_fails=True)  # time for the first check, even under load
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    assert api.get("/slot/state").json() in (0, 1), "a failing slot first starts like any other"
    wait_until(lambda: api.get("/slot/state").json() == 6, timeout=10, interval=0.02)
    assert api.get("/slot/metadata").json()["state"] == 6
    assert api.start().status_code == 400, "no session on an ERRORED slot"
    emulator.configure(slot_start_fails=False)
    assert api.get("/slot/state").json() == 6, "the slot stays ERRORED until it is disposed of"
    assert api.delete("/slot").status_code == 204
    emulator.configure(slot_startup_seconds=0)
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    assert api.get("/slot/state").json() == 3, "the next slot starts normally"


def test_slot_start_fails_is_a_boolean(api: Api, emulator: CandelaEmulator) -> None:
    assert emulator.configure(slot_start_fails=True)["slot_start_fails"] is True
    response = api.request("PATCH", "/_emulator/config", json={"slot_start_fails": 1})
    assert response.status_code == 400
    assert "slot_start_fails must be true or false" in response.json()["detail"]


def test_slot_start_fails_from_the_command_line() -> None:
    with CandelaEmulator(slot_start_fails=True, slot_startup_seconds=0) as emulator:
        api = Api(emulator, emulator.access_token or "")
        assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
        assert api.get("/slot/state").json() == 6
        api.close()


def test_assign_twice_is_a_noop(api: Api) -> None:
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    first = api.get("/slot/metadata").json()["slot_id"]
    assert api.put("/slot", params={"slot_type": "gpu-medium"}).status_code == 204
    assert api.get("/slot/metadata").json()["slot_id"] == first


def test_unknown_slot_type_is_400(api: Api) -> None:
    response = api.put("/slot", params={"slot_type": "tpu-huge"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "tpu-huge" in detail
    assert "gpu-medium" in detail
    assert api.get("/slot/user_has_slot").json() is False


def test_assign_without_slot_type_is_422(api: Api) -> None:
    response = api.put("/slot")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "slot_type"]


def test_no_slot_errors(api: Api) -> None:
    for method, path in (("GET", "/slot/state"), ("GET", "/slot/metadata"), ("DELETE", "/slot")):
        response = api.request(method, path)
        assert response.status_code == 400, (method, path)
        assert "PUT /slot" in response.json()["detail"]


def test_dispose_slot(api: Api) -> None:
    api.ready_slot()
    response = api.delete("/slot")
    assert response.status_code == 204
    assert response.content == b""
    assert api.get("/slot/user_has_slot").json() is False
    assert api.delete("/slot").status_code == 400


def test_dispose_slot_stops_its_session(emulator: CandelaEmulator, ready: Api) -> None:
    ready.started()
    assert emulator.stats()["running_sessions"]["demo"] is not None
    assert ready.delete("/slot").status_code == 204
    assert emulator.stats()["running_sessions"]["demo"] is None
    ready.ready_slot()
    assert ready.start().status_code == 200, "a new slot has no running session"


def test_catalog_slot_types() -> None:
    with CandelaEmulator(catalog={"slot_types": ["local"]}, slot_startup_seconds=0) as emulator:
        api = Api(emulator, emulator.access_token or "")
        assert api.put("/slot", params={"slot_type": "local"}).status_code == 204
        assert api.get("/slot/metadata").json()["slot_type"] == "local"
