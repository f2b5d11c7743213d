"""Drive the official Candela SDK (finbourne-candela-sdk 0.1.173) against a Candela server.

Runs inside ``.venv-sdk`` (never the project's venv: the SDK pins urllib3<2), started by
``test_sdk_contract.py``.  Configuration comes the way SDK users give it, through the SDK's own
environment loader: FBN_TOKEN_URL, FBN_CANDELA_URL, FBN_USERNAME, FBN_PASSWORD, FBN_CLIENT_ID,
FBN_CLIENT_SECRET (password grant, done by the SDK's RefreshingToken).

Calls all ten SessionsApi methods and the five UserSlotsApi methods in the order a real client
uses them, and prints one JSON document on stdout: ``{"calls": [{"call", "ok", "type", "value",
"error"}, ...]}``.  A failing call is recorded, never raised, so one run reports every call.

Known SDK defects, recorded rather than worked around:
- ``UserSlotsApi.get_slot_state`` raises ``AttributeError`` (``SlotState.from_dict`` does not exist)
  on every 200 response;
- ``Directive.to_dict`` raises ``AttributeError`` when identity, purpose, style or restriction is set, so
  ``start_dev_session`` can only send a directive without them;
- ``SessionsApi.submit_prompt_to_agent`` reads the whole body and ``json.loads`` it, so it can only
  return the event of a one-line stream; a multi-line NDJSON body fails validation.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from finbourne_candela import (
    CircuitDTO,
    DevSessionStartRequest,
    Directive,
    ObjectId,
    SessionsApi,
    SessionStartRequest,
    SubmitPrompt,
    SyncApiClientFactory,
    UserSlotsApi,
)

SLOT_TYPE = "gpu-medium"
SCOPE = "default"
PIPELINE_APP = ObjectId(scope=SCOPE, identifier="demo-pipeline")
MODEL = ObjectId(scope=SCOPE, identifier="demo-model")
ONE_LINE_PROMPT = "Say hello"  # no "table"/"result" and no chat fragments configured: one `user` event
MULTI_LINE_PROMPT = "Give me a result table"  # `user` + `result`: two lines

calls: list[dict[str, Any]] = []


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def _json_default(value: Any) -> Any:
    """datetimes as ISO-8601 (the SDK parsed them), enums as their value."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return repr(value)


def call(name: str, fn: Callable[[], Any]) -> Any:
    """Run one SDK call and record its result type and JSON form, or its error."""
    record: dict[str, Any] = {"call": name}
    try:
        result = fn()
    except Exception as exc:  # recorded for the test to judge, never hidden
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:800], error_type=type(exc).__name__)
        result = None
    else:
        record.update(ok=True, type=type(result).__name__, value=_jsonable(result))
    calls.append(record)
    return result


def wait_for_ready_slot(slots: UserSlotsApi, deadline_s: float = 30.0) -> None:
    """Poll the slot's metadata (``get_slot_state`` is broken in this SDK) until HOST_READY (3)."""
    deadline = time.monotonic() + deadline_s
    while True:
        state = slots.get_slot_metadata().state
        if state is not None and int(state) == 3:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"slot not ready after {deadline_s} s (state {state})")
        time.sleep(0.05)


def main() -> int:
    factory = SyncApiClientFactory()
    sessions = factory.build(SessionsApi)
    slots = factory.build(UserSlotsApi)

    # Slots.
    call("user_has_slot", slots.user_has_slot)
    call("assign_slot", lambda: slots.assign_slot(slot_type=SLOT_TYPE))
    call("user_has_slot_after_assign", slots.user_has_slot)
    call("get_slot_metadata", slots.get_slot_metadata)
    call("get_slot_state", slots.get_slot_state)  # known SDK bug: AttributeError
    call("wait_for_ready_slot", lambda: wait_for_ready_slot(slots))

    # A pipeline session.
    call("stop_session_when_idle", sessions.stop_session)
    started = call(
        "start_session",
        lambda: sessions.start_session(SessionStartRequest(app=PIPELINE_APP, model_cfg=MODEL, scope=SCOPE)),
    )
    session_id = started.obj_id.identifier if started is not None else "missing"
    version = started.obj_id.version if started is not None else None
    call(
        "submit_pipeline_prompt",
        lambda: sessions.submit_pipeline_prompt(SubmitPrompt(prompt="Summarise the day", session_id=session_id)),
    )
    call("get_session", lambda: sessions.get_session(scope=SCOPE, identifier=session_id))
    call("get_session_metadata", lambda: sessions.get_session_metadata(scope=SCOPE, identifier=session_id))
    call(
        "get_session_metadata_versioned",
        lambda: sessions.get_session_metadata(scope=SCOPE, identifier=session_id, version=version),
    )
    call("list_sessions", sessions.list_sessions)
    call("list_sessions_all_versions", lambda: sessions.list_sessions(all_versions=True))
    call("session_exists", lambda: sessions.session_exists(scope=SCOPE, identifier=session_id))
    call("stop_session", sessions.stop_session)

    # A dev (agent) session built from a circuit.
    circuit = CircuitDTO(
        first="respond",
        nodes={
            "respond": {
                "type": "response",
                "node_id": "respond",
                "child_id": "respond",
                "as_block": False,
                "template": "{answer}",
                "context": "Answer the user.",
                "inserts": None,
            }
        },
    )
    # Known SDK bug: Directive.to_dict calls .to_dict() on identity/purpose/style/restriction whenever they are
    # set (str or list), so only a directive without them can be sent.
    call("directive_with_identity_to_dict", lambda: Directive(identity="A helpful assistant").to_dict())
    directive = Directive(hide=True, context_vals={"tone": "brief"})
    dev = call(
        "start_dev_session",
        lambda: sessions.start_dev_session(
            DevSessionStartRequest(model_id=MODEL, circuit=circuit, directive=directive, scope=SCOPE)
        ),
    )
    dev_id = dev.obj_id.identifier if dev is not None else "missing"
    call(
        "submit_prompt_to_agent",
        lambda: sessions.submit_prompt_to_agent(SubmitPrompt(prompt=ONE_LINE_PROMPT, session_id=dev_id)),
    )
    call(
        "submit_prompt_to_agent_multi_line",  # known SDK limitation: fails on a multi-line stream
        lambda: sessions.submit_prompt_to_agent(SubmitPrompt(prompt=MULTI_LINE_PROMPT, session_id=dev_id)),
    )
    call("get_dev_session", lambda: sessions.get_session(scope=SCOPE, identifier=dev_id))
    call("stop_dev_session", sessions.stop_session)

    # Clean up.
    call("delete_session", lambda: sessions.delete_session(scope=SCOPE, identifier=session_id))
    call("session_exists_after_delete", lambda: sessions.session_exists(scope=SCOPE, identifier=session_id))
    call("delete_dev_session", lambda: sessions.delete_session(scope=SCOPE, identifier=dev_id))
    call("dispose_slot", slots.dispose_slot)
    call("user_has_slot_after_dispose", slots.user_has_slot)

    json.dump({"calls": calls}, sys.stdout, indent=1, default=_json_default)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
