"""Error messages: status, method, path and the server's detail; 422 field lines; bodies that are not the API's."""

from __future__ import annotations

import pytest

from airflow_provider_candela.exceptions import CandelaApiError, CandelaAuthError, CandelaResponseError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import MODEL, PIPELINE


def test_422_lists_the_fields(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(
        match="POST /session",
        status=422,
        body={
            "detail": [
                {"loc": ["body", "app", "identifier"], "msg": "Field required", "type": "missing"},
                {"loc": ["body", "model_cfg", "version"], "msg": "String should match pattern", "type": "x", "ctx": {}},
            ]
        },
    )
    with pytest.raises(CandelaApiError) as info:
        ready.start_session(PIPELINE, MODEL)
    assert str(info.value) == (
        "Candela rejected POST /session (422): body.app.identifier: Field required; "
        "body.model_cfg.version: String should match pattern. "
        "Candela did not accept the arguments of POST /session; fix the fields listed"
    )
    err = info.value
    assert (err.status, err.method, err.path) == (422, "POST", "/session")
    assert err.detail == "body.app.identifier: Field required; body.model_cfg.version: String should match pattern"


def test_403_says_what_to_check(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /sessions/list", status=403, body={"detail": "Forbidden"})
    with pytest.raises(CandelaAuthError) as info:
        hook.list_sessions()
    assert str(info.value) == (
        "Candela rejected GET /sessions/list (403): Forbidden. Candela does not allow user 'demo' (connection "
        "'candela_default') to call GET /sessions/list: check the user's Candela entitlements and the extra app_name"
    )


def test_error_body_that_is_not_json(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /sessions/list", status=418, body="<html>I am a teapot</html>")
    with pytest.raises(CandelaApiError, match=r"Candela rejected GET /sessions/list \(418\): <html>I am a teapot"):
        hook.list_sessions()


def test_lusid_problem_details_are_rendered(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(
        match="PUT /slot",
        status=400,
        body={"name": "SlotAlreadyAssigned", "code": 149, "title": "Slot already assigned", "errorDetails": []},
    )
    with pytest.raises(CandelaApiError, match=r"\(400\): Slot already assigned"):
        hook.assign_slot()


@pytest.mark.parametrize(
    ("route", "call"),
    [
        ("GET /slot/metadata", lambda h: h.get_slot_metadata()),
        ("GET /sessions/list", lambda h: h.list_sessions()),
        ("GET /slot/user_has_slot", lambda h: h.user_has_slot()),
    ],
)
def test_2xx_body_that_is_not_json(hook: CandelaHook, emulator: CandelaEmulator, route: str, call: object) -> None:
    hook.assign_slot()
    emulator.add_fault(match=route, not_json=True)
    with pytest.raises(CandelaResponseError) as info:
        call(hook)  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith(f"Candela answered {route} with 200 but the body is not JSON (application/json)")
    assert "Check that the host of connection 'candela_default' is the Candela API URL" in message
    assert info.value.status == 200


def test_2xx_body_without_a_required_field(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /session", missing_field="obj_id")
    with pytest.raises(CandelaResponseError) as info:
        ready.start_session(PIPELINE, MODEL)
    message = str(info.value)
    assert message.startswith(
        "Candela answered POST /session with 200 but not with an ObjectMetadata object: missing field 'obj_id'"
    )
    assert "validation error" not in message.lower()  # no raw pydantic text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_field_in_a_list(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    ready.start_session(PIPELINE, MODEL)
    emulator.add_fault(match="GET /sessions/list", missing_field="created_by")
    with pytest.raises(CandelaResponseError, match=r"not with a list of ObjectMetadata: missing field '0.created_by'"):
        ready.list_sessions()


def test_wrong_json_type(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /slot/user_has_slot", status=200, body={"answer": True})
    with pytest.raises(CandelaResponseError, match="not with true/false: expected true/false, got dict"):
        hook.user_has_slot()


def test_unknown_fields_in_responses_are_ignored(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /session", extra_field=True)
    assert ready.start_session(PIPELINE, MODEL).created_by == emulator.username


def test_errors_are_one_family(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    emulator.add_fault(match="GET /sessions/list", status=400)
    with pytest.raises(AirflowException):
        hook.list_sessions()


def test_messages_never_contain_secrets(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    token = hook._auth._access_token
    assert token
    # A server that echoes the credentials back in its error body.
    emulator.add_fault(
        match="GET /sessions/list",
        status=400,
        body={"detail": f"bad token {token} for password {emulator.password} / {emulator.client_secret}"},
    )
    with pytest.raises(CandelaApiError) as info:
        hook.list_sessions()
    message = str(info.value)
    assert "bad token *** for password *** / ***" in message
    for secret in (token, emulator.password, emulator.client_secret):
        assert secret not in message and secret not in info.value.detail
