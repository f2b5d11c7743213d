"""A whole lifecycle through one hook: one token grant, one TCP connection."""

from __future__ import annotations

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import AGENT, MODEL, PIPELINE, requests_of


def test_lifecycle_uses_one_token_and_one_connection(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(slot_startup_seconds=0.2)
    slot = hook.ensure_slot(poll_interval=0.02)
    assert slot.state == 3
    hook.stop_session()
    pipeline = hook.start_session(PIPELINE, MODEL)
    answer = hook.submit_pipeline_prompt(pipeline.obj_id, "summarise this")
    assert answer.request_id
    hook.stop_session()
    agent = hook.start_session(AGENT, MODEL)
    events = list(hook.submit_prompt_to_agent(agent.obj_id, "make a result table"))
    assert events[0].event_type == "user" and events[-1].event_type == "result"
    hook.stop_session()
    assert hook.delete_session(pipeline.obj_id) == [pipeline]
    assert hook.delete_session(agent.obj_id) == [agent]

    stats = emulator.stats()
    assert stats["token_grants"] == {"password": 1, "refresh": 0}
    assert stats["tcp_connections"] == 1
    assert requests_of(stats, "POST /oauth2/token") == {"200": 1}
    assert requests_of(stats, "POST /session") == {"200": 2}
    assert requests_of(stats, "GET /session/stop") == {"204": 3}
    assert stats["sessions_stored"] == 0 and stats["running_sessions"][emulator.username] is None
    assert stats["requests_total"] == sum(sum(by_status.values()) for by_status in stats["requests"].values())


def test_closing_the_hook_closes_its_connection(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    hook.close()
    hook.user_has_slot()  # usable again, on a new connection, with the cached token
    stats = emulator.stats()
    assert stats["tcp_connections"] == 2
    assert stats["token_grants"]["password"] == 1
