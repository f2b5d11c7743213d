"""Every endpoint method against the emulator, checked against the emulator's own state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaInputError,
    CandelaResponseError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import Event, ObjectId, ObjectMetadata, Session, SlotData, SlotState
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, MODEL, PIPELINE, requests_of

MakeHook = Callable[..., CandelaHook]


def running(emulator: CandelaEmulator) -> object:
    return emulator.stats()["running_sessions"][emulator.username]


def test_slot_calls(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    assert hook.user_has_slot() is False
    hook.assign_slot()
    assert hook.user_has_slot() is True
    assert emulator.stats()["slots"][emulator.username]["slot_type"] == "gpu-medium"
    hook.assign_slot()  # a no-op when the user has one
    assert hook.get_slot_state() is SlotState.HOST_READY
    slot = hook.get_slot_metadata()
    assert isinstance(slot, SlotData)
    assert slot.slot_type == "gpu-medium" and slot.assigned_to == emulator.username and slot.state == 3
    hook.dispose_slot()
    assert hook.user_has_slot() is False
    assert emulator.stats()["slots"][emulator.username] is None


def test_assign_slot_uses_the_connection_slot_type(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"slot_type": "gpu-nonexistent"})
    with pytest.raises(CandelaApiError) as info:
        hook.assign_slot()
    assert str(info.value).startswith("Candela rejected PUT /slot (400): Unknown slot type 'gpu-nonexistent'")
    assert info.value.status == 400 and info.value.method == "PUT" and info.value.path == "/slot"
    hook.assign_slot("gpu-medium")  # the argument wins
    assert emulator.stats()["slots"][emulator.username]["slot_type"] == "gpu-medium"


def test_slot_calls_without_a_slot_fail_clearly(hook: CandelaHook) -> None:
    with pytest.raises(CandelaApiError, match=r"Candela rejected GET /slot/state \(400\): User 'demo' has no slot"):
        hook.get_slot_state()
    with pytest.raises(CandelaApiError, match=r"Candela rejected DELETE /slot \(400\)"):
        hook.dispose_slot()


def test_ensure_slot_assigns_and_waits_for_host_ready(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(slot_startup_seconds=0.3)
    slot = hook.ensure_slot(poll_interval=0.02)
    assert slot.state == SlotState.HOST_READY
    stats = emulator.stats()
    assert requests_of(stats, "PUT /slot") == {"204": 1}
    assert requests_of(stats, "GET /slot/state")["200"] >= 2  # it had to wait
    # A ready slot: no second PUT, one state check.
    hook.ensure_slot()
    stats = emulator.stats()
    assert requests_of(stats, "PUT /slot") == {"204": 1}


def test_ensure_slot_times_out(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(slot_startup_seconds=30)  # ready long after the timeout: the error comes from the timeout
    with pytest.raises(CandelaTimeoutError) as info:
        hook.ensure_slot(timeout=0.3, poll_interval=0.05)
    assert "was not ready after 0.3 s (last state" in str(info.value)


@pytest.mark.parametrize("state", [SlotState.ERRORED, SlotState.HOST_GONE])
def test_ensure_slot_fails_on_a_broken_slot(hook: CandelaHook, emulator: CandelaEmulator, state: SlotState) -> None:
    hook.assign_slot()
    emulator.add_fault(match="GET /slot/state", status=200, body=int(state))
    with pytest.raises(CandelaSlotError) as info:
        hook.ensure_slot(poll_interval=0.01)
    assert f"went to {state.name} ({int(state)})" in str(info.value)
    assert "dispose of it" in str(info.value)


def test_unknown_slot_state_is_a_response_error(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.assign_slot()
    emulator.add_fault(match="GET /slot/state", status=200, body=42)
    with pytest.raises(CandelaResponseError, match="unknown slot state 42"):
        hook.get_slot_state()


def test_session_lifecycle_calls(ready: CandelaHook, emulator: CandelaEmulator) -> None:
    hook = ready
    meta = hook.start_session(PIPELINE, MODEL)
    assert isinstance(meta, ObjectMetadata)
    assert meta.created_by == emulator.username and meta.obj_id.scope == "default"
    assert running(emulator) == meta.obj_id.model_dump(mode="json")
    assert hook.session_exists(meta.obj_id) is True
    assert hook.get_session_metadata(meta.obj_id) == meta
    session = hook.get_session(meta.obj_id)
    assert isinstance(session, Session)
    assert session.app is not None and session.app.identifier == "demo-pipeline"
    assert session.model_cfg.identifier == "demo-model" and session.dev_session is False
    assert meta in hook.list_sessions()
    answer = hook.submit_pipeline_prompt(meta.obj_id, "count these words")
    assert answer.result["word_count"] == 3 and answer.request_id
    hook.stop_session()
    assert running(emulator) is None
    hook.stop_session()  # fine when nothing runs
    deleted = hook.delete_session(meta.obj_id)
    assert deleted == [meta]
    assert hook.session_exists(meta.obj_id) is False
    assert hook.list_sessions() == []


def test_start_session_with_every_argument(ready: CandelaHook) -> None:
    parent = ready.start_session(ObjectId(scope="default", identifier="demo-agent"), MODEL, scope="team-a")
    assert parent.obj_id.scope == "team-a"
    ready.stop_session()
    child = ready.start_session(
        AGENT + ":1.0.0",
        {"scope": "default", "identifier": "demo-model", "version": "1.0.0"},
        parent_session=parent.obj_id,
        circuit_override="default/my-circuit",
        directive_override="default/my-directive",
    )
    assert child.obj_id.identifier == parent.obj_id.identifier and child.obj_id.version != parent.obj_id.version
    session = ready.get_session(child.obj_id)
    assert session.parent_session == parent.obj_id
    assert session.circuit_override == ObjectId(scope="default", identifier="my-circuit")
    assert session.directive_override == ObjectId(scope="default", identifier="my-directive")
    assert len(ready.list_sessions(all_versions=True)) == 2
    assert len(ready.list_sessions()) == 1
    versions = ready.delete_session(ObjectId(scope="team-a", identifier=parent.obj_id.identifier))
    assert {m.obj_id.version for m in versions} == {parent.obj_id.version, child.obj_id.version}


def test_start_dev_session_and_stream_an_agent_answer(ready: CandelaHook) -> None:
    meta = ready.start_dev_session(
        MODEL,
        {"first": "greet", "nodes": {"greet": {"node_id": "greet", "type": "response", "child_id": None}}},
        {"identity": "a helpful assistant", "restriction": ["be brief"]},
        tool_module="class Tool: pass",
        scope="dev",
    )
    session = ready.get_session(meta.obj_id)
    assert session.dev_session is True and session.app is None
    events = list(ready.submit_prompt_to_agent(meta.obj_id, "show me a result table"))
    assert all(isinstance(e, Event) for e in events)
    assert events[0].event_type == "user" and events[0].content == "show me a result table"
    assert events[-1].event_type == "result"
    assert {e.event_type for e in events[1:-1]} == {"chat"}


def test_agent_stream_is_a_closable_context_manager(ready: CandelaHook) -> None:
    meta = ready.start_session(AGENT, MODEL)
    with ready.submit_prompt_to_agent(meta.obj_id, "hello there") as stream:  # type: ignore[attr-defined]
        first = next(stream)
    assert first.event_type == "user"
    with pytest.raises(StopIteration):
        next(stream)  # closed
    # The hook keeps working after an abandoned stream.
    assert ready.session_exists(meta.obj_id) is True


def test_prompt_to_the_wrong_kind_of_session(ready: CandelaHook) -> None:
    meta = ready.start_session(AGENT, MODEL)
    with pytest.raises(CandelaApiError) as info:
        ready.submit_pipeline_prompt(meta.obj_id, "hi")
    assert str(info.value).startswith("Candela rejected POST /session/pipeline_submit (400): Session 'default/")
    assert "may or may not" not in str(info.value)  # a 400 is a clear refusal


def test_start_without_a_ready_slot(hook: CandelaHook) -> None:
    with pytest.raises(CandelaApiError, match=r"Candela rejected POST /session \(400\): Cannot start a session"):
        hook.start_session(PIPELINE, MODEL)


def test_unknown_session(hook: CandelaHook) -> None:
    missing = ObjectId(scope="default", identifier="no-such-session")
    assert hook.session_exists(missing) is False
    for call in (hook.get_session, hook.get_session_metadata, hook.delete_session):
        with pytest.raises(CandelaApiError) as info:
            call(missing)
        assert info.value.status == 404
        assert "Session 'default/no-such-session' not found" in str(info.value)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda h: h.start_session("not an id", MODEL), "Invalid argument `app`: 'not an id' is not of the form"),
        (lambda h: h.start_session(PIPELINE, "default/"), "Invalid argument `model`: 'default/' is not of the form"),
        (lambda h: h.get_session("default/a b"), "Invalid argument `session`: 'default/a b' is not of the form"),
        (lambda h: h.start_dev_session(MODEL, {"nodes": {}}, {}), "Invalid argument `circuit`: missing field 'first'"),
        (lambda h: h.submit_pipeline_prompt("", "hi"), "Invalid argument `session`: '' is not of the form"),
        (lambda h: h.submit_prompt_to_agent("default/s", "  "), "Invalid argument `prompt`: it is empty"),
    ],
)
def test_bad_arguments_fail_before_any_request(
    hook: CandelaHook, emulator: CandelaEmulator, call: Callable[[CandelaHook], object], fragment: str
) -> None:
    with pytest.raises(CandelaInputError, match=fragment):
        call(hook)
    assert emulator.stats()["requests_total"] == 0


def test_test_connection_succeeds(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    ok, message = hook.test_connection()
    assert ok is True
    assert message == f"Connected to Candela at {emulator.url} with user 'demo'; the user has no slot yet."
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 1}


def test_test_connection_fails_without_raising(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="GET /slot/user_has_slot", status=403, body={"detail": "Forbidden"})
    ok, message = make_hook().test_connection()
    assert ok is False
    assert message.startswith("Candela rejected GET /slot/user_has_slot (403): Forbidden. Candela does not allow user")
    assert emulator.password not in message
