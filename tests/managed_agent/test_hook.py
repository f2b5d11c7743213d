"""CandelaManagedAgentHook against the emulator: what a common-ai caller gets back, and how failures are sorted."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytest.importorskip("airflow.providers.common.ai.managed_agents.base", reason="the common-ai extra is not installed")

from airflow.providers.common.ai.exceptions import ManagedAgentInvocationError, ManagedAgentRejected
from airflow.providers.common.ai.managed_agents.base import (
    BaseManagedAgentHook,
    ManagedAgentCapabilities,
    ManagedAgentRef,
    ManagedAgentRequest,
)

from airflow_provider_candela.exceptions import CandelaApiError, CandelaInputError, CandelaTimeoutError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook
from airflow_provider_candela.testing import CandelaEmulator, wait_until

from .conftest import AGENT, MODEL, MakeHook, running


def ask(prompt: str, **fields: Any) -> ManagedAgentRequest:
    return ManagedAgentRequest(prompt=prompt, **fields)


# ------------------------------------------------------------------------------------------------
# identity and capabilities


def test_identity_and_capabilities_need_no_connection_and_no_request(emulator: CandelaEmulator) -> None:
    hook = CandelaManagedAgentHook("no_such_connection")

    assert isinstance(hook, CandelaHook) and isinstance(hook, BaseManagedAgentHook)
    assert hook.resolve_agent("analytics/fund-analyst:1.2.0") == ManagedAgentRef(
        platform="finbourne.candela", name="analytics/fund-analyst", version="1.2.0"
    )
    assert hook.agent(AGENT).ref == ManagedAgentRef(platform="finbourne.candela", name=AGENT, version=None)
    assert hook.get_agent_capabilities(AGENT) == ManagedAgentCapabilities(
        sessions=True, structured_output=True, usage=False, trace=True
    )
    with pytest.raises(CandelaInputError, match="agent"):
        hook.resolve_agent("not an app id")
    assert emulator.stats()["requests_total"] == 0


# ------------------------------------------------------------------------------------------------
# one invocation, one session


def test_invocation_starts_prompts_and_stops_a_session(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    response = hook.agent(AGENT).invoke(ask("Show a result table of the top funds"))

    assert response.text.startswith("You asked: Show a result table of the top funds.")
    assert "This answer comes from the Candela emulator" in response.text
    assert response.raw[0] == {"event_type": "user", "content": "Show a result table of the top funds"}
    assert {e["event_type"] for e in response.raw} == {"user", "chat", "result"}
    assert response.structured is not None and len(response.structured) == 1
    assert response.structured[0]["content_type"] == "table"
    assert response.structured[0]["content"]["data"].startswith("index,word,length\n0,Show,4\n")
    assert response.session_id is None  # the session was stopped: nothing to continue
    assert response.trace_ref is not None and response.trace_ref.startswith("default/session-")
    assert response.usage is None
    stats = emulator.stats()
    assert stats["sessions_started"] == 1
    assert running(emulator) == {}
    assert emulator.request_count("GET /session/stop") == 1


def test_an_answer_without_results_has_no_structured_value(hook: CandelaManagedAgentHook) -> None:
    response = hook.agent(AGENT).invoke(ask("Hello there"))

    assert response.text.startswith("You asked: Hello there.")
    assert response.structured is None


def test_a_message_list_of_one_user_message_is_a_prompt(hook: CandelaManagedAgentHook) -> None:
    text = [{"type": "text", "text": "Hi from messages"}]
    request = ManagedAgentRequest(messages=[{"role": "user", "content": text}])

    assert hook.agent(AGENT).invoke(request).text.startswith("You asked: Hi from messages.")

    two = ManagedAgentRequest(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ManagedAgentInvocationError, match="one prompt"):
        hook.agent(AGENT).invoke(two)


def test_the_model_comes_from_the_hook_then_the_connection(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    from_extra = make_hook("candela_from_extra")
    from_extra.agent(AGENT).invoke(ask("one"))

    wrong_extra = make_hook("candela_hook_model", extra={"model": "default/no-model"}, hook_kwargs={"model": MODEL})
    wrong_extra.agent(AGENT).invoke(ask("two"))
    assert emulator.stats()["sessions_started"] == 2

    neither = make_hook("candela_no_model", extra={"model": None})
    with pytest.raises(ManagedAgentInvocationError, match=r"No model.*pass model='scope/.*or set the extra 'model'"):
        neither.agent(AGENT).invoke(ask("three"))
    assert emulator.stats()["sessions_started"] == 2

    with pytest.raises(CandelaInputError, match="model"):
        CandelaManagedAgentHook("candela_agents", model="no model")


# ------------------------------------------------------------------------------------------------
# sessions


def test_a_session_id_continues_that_running_session_and_leaves_it_running(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    with CandelaHook("candela_agents") as plain:
        plain.ensure_slot(poll_interval=0.01)
        session = plain.start_session(AGENT, MODEL)
    session_id = str(session.obj_id)

    first = hook.agent(AGENT).invoke(ask("first question", session_id=session_id))
    second = hook.agent(AGENT).invoke(ask("second question", session_id=session.obj_id.identifier))

    assert first.text.startswith("You asked: first question.") and second.text.startswith("You asked: second")
    assert first.session_id == session_id and first.trace_ref == session_id
    assert emulator.stats()["sessions_started"] == 1
    assert emulator.request_count("GET /session/stop") == 0
    assert list(running(emulator).values()) == [session.obj_id.model_dump(mode="json")]


def test_a_session_id_that_does_not_run_is_a_terminal_error(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    hook.ensure_slot(poll_interval=0.01)
    with pytest.raises(ManagedAgentInvocationError, match=r"does not exist.*session_id default/session-gone"):
        hook.agent(AGENT).invoke(ask("hello", session_id="default/session-gone"))
    assert emulator.stats()["sessions_started"] == 0


# ------------------------------------------------------------------------------------------------
# failures, sorted as the contract asks


def test_wrong_credentials_are_terminal(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook("candela_wrong", password="not-the-password")

    with pytest.raises(ManagedAgentInvocationError, match="password grant") as caught:
        hook.agent(AGENT).invoke(ask("hello"))

    assert isinstance(caught.value.__cause__, CandelaApiError)
    assert emulator.stats()["sessions_started"] == 0


@pytest.mark.parametrize(
    ("agent", "extra", "message"),
    [
        ("default/no-such-agent", {}, "Unknown app 'default/no-such-agent'"),
        (AGENT, {"model": "default/no-such-model"}, "Unknown model 'default/no-such-model'"),
        (f"{AGENT}:9.9.9", {}, "has no version '9.9.9'"),
        (AGENT, {"slot_type": "gpu-imaginary"}, "Unknown slot type 'gpu-imaginary'"),
    ],
    ids=["app", "model", "version", "slot-type"],
)
def test_unknown_app_model_version_or_slot_type_is_terminal_and_stops_nothing(
    make_hook: MakeHook, emulator: CandelaEmulator, agent: str, extra: dict[str, str], message: str
) -> None:
    hook = make_hook("candela_unknown", extra=extra)

    with pytest.raises(ManagedAgentInvocationError, match=message):
        hook.agent(agent).invoke(ask("hello"))

    assert emulator.stats()["sessions_started"] == 0
    assert emulator.request_count("GET /session/stop") == 0


@pytest.mark.parametrize("prompt", ["", "   ", "bad \udc80 text"], ids=["empty", "blank", "lone-surrogate"])
def test_a_prompt_candela_cannot_take_is_rejected_before_any_request(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator, prompt: str
) -> None:
    with pytest.raises(ManagedAgentRejected, match="prompt"):
        hook.agent(AGENT).invoke(ask(prompt))
    assert emulator.stats()["requests_total"] == 0


def test_a_prompt_candela_refuses_is_rejected_and_the_session_stopped(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    detail = {"detail": [{"loc": ["body", "prompt"], "msg": "prompt too long for this model", "type": "value_error"}]}
    emulator.add_fault(match="POST /session/agent_submit", status=422, body=detail)

    with pytest.raises(ManagedAgentRejected, match="prompt too long for this model"):
        hook.agent(AGENT).invoke(ask("a long question"))

    assert emulator.stats()["sessions_started"] == 1
    assert running(emulator) == {}


def test_transient_failures_propagate_unchanged_and_the_session_is_stopped(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    emulator.add_fault(match="POST /session/agent_submit", status=503, count=-1)

    with pytest.raises(CandelaApiError) as caught:
        hook.agent(AGENT).invoke(ask("hello"))

    assert caught.value.status == 503
    assert not isinstance(caught.value, ManagedAgentInvocationError | ManagedAgentRejected)
    emulator.clear_faults()
    assert running(emulator) == {}


def test_vendor_options_cannot_retarget_the_call_and_bad_options_are_refused_before_any_request(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    for options in ({"app": "default/other"}, {"candela_conn_id": "other"}, {"agent": "x"}, {"connection": "x"}):
        with pytest.raises(ManagedAgentInvocationError, match="cannot be changed per request"):
            hook.agent(AGENT).invoke(ask("hello", vendor_options=options))
    with pytest.raises(ManagedAgentInvocationError, match=r"timeout.*positive number of seconds"):
        hook.agent(AGENT).invoke(ask("hello", timeout=0))
    assert emulator.stats()["requests_total"] == 0

    response = hook.agent(AGENT).invoke(ask("hello", vendor_options={"model": MODEL, "scope": "agents"}))
    assert response.trace_ref is not None and response.trace_ref.startswith("agents/session-")


# ------------------------------------------------------------------------------------------------
# timeout and concurrency


def test_the_timeout_cuts_the_request_and_the_session_is_still_stopped(
    hook: CandelaManagedAgentHook, emulator: CandelaEmulator
) -> None:
    emulator.configure(event_delay=1.0)  # an answer of about 12 s: read to its end, the call would succeed

    with pytest.raises(CandelaTimeoutError, match=r"did not answer within 1 s"):
        hook.agent(AGENT).invoke(ask("one two three four five six seven eight nine ten", timeout=1))

    wait_until(lambda: running(emulator) == {})
    assert emulator.stats()["sessions_started"] == 1

    emulator.configure(event_delay=0.0)
    assert hook.agent(AGENT).invoke(ask("again", timeout=30)).text.startswith("You asked: again.")
    assert running(emulator) == {}


def test_parallel_invocations_through_one_connection_take_turns_and_all_succeed(
    make_hook: MakeHook, emulator: CandelaEmulator
) -> None:
    emulator.configure(event_delay=0.02)
    hooks = [make_hook(), make_hook()]  # two hooks, one connection: the turns are per connection id
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def call(number: int) -> None:
        try:
            answers[number] = hooks[number % 2].agent(AGENT).invoke(ask(f"question {number}")).text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert {n: text.split(".")[0] for n, text in answers.items()} == {n: f"You asked: question {n}" for n in range(4)}
    stats = emulator.stats()
    assert stats["sessions_started"] == 4
    assert emulator.request_count("POST /session", 409) == 0, "no start found another invocation's session"
    assert running(emulator) == {}


def test_a_timeout_counts_the_wait_for_the_connection(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    emulator.configure(event_delay=0.3)
    hook = make_hook()
    slow = threading.Thread(target=hook.agent(AGENT).invoke, args=(ask("one two three four five six"),))
    slow.start()
    wait_until(lambda: emulator.request_count("POST /session/agent_submit") == 1, timeout=10)

    with pytest.raises(CandelaTimeoutError, match="take turns"):
        make_hook().agent(AGENT).invoke(ask("impatient", timeout=0.2))

    slow.join(30)
    assert emulator.stats()["sessions_started"] == 1
    assert running(emulator) == {}
