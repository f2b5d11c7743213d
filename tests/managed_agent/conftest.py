"""Fixtures of the managed-agent tests: Candela connections to the emulator and hooks on them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_candela.testing import CandelaEmulator

AGENT = "default/demo-agent"
MODEL = "default/demo-model"

MakeHook = Callable[..., Any]


def connection(emulator: CandelaEmulator, **changes: Any) -> str:
    """The emulator's Candela connection as JSON; ``changes`` replace fields, ``extra`` entries are merged."""
    conn: dict[str, Any] = json.loads(emulator.connection_json())
    extra = changes.pop("extra", {})
    conn.update(changes)
    conn["extra"] = {**conn["extra"], **extra}
    return json.dumps(conn)


def running(emulator: CandelaEmulator) -> dict[str, Any]:
    """The sessions running on the emulator, by user."""
    return {user: run for user, run in emulator.stats()["running_sessions"].items() if run}


@pytest.fixture
def emulator(candela: CandelaEmulator) -> CandelaEmulator:
    return candela


@pytest.fixture
def make_hook(emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeHook]:
    """``make_hook(conn_id="x", extra={...}, password=..., model=...)``: a hook on a new connection to the emulator.

    The connection's extra ``model`` is the emulator's model unless ``extra`` says otherwise; keyword
    arguments of the hook go in ``hook_kwargs``.  Backoff waits are short.
    """
    pytest.importorskip("airflow.providers.common.ai.managed_agents.base", reason="common-ai is not installed")
    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook

    hooks: list[Any] = []

    def build(conn_id: str = "candela_agents", hook_kwargs: dict[str, Any] | None = None, **changes: Any) -> Any:
        changes["extra"] = {"model": MODEL, "max_retries": 1, **changes.get("extra", {})}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection(emulator, **changes))
        hook = CandelaManagedAgentHook(conn_id, **(hook_kwargs or {}))
        hook.retry_wait_base = 0.01
        hook.retry_wait_max = 0.05
        hooks.append(hook)
        return hook

    yield build
    for hook in hooks:
        hook.close()


@pytest.fixture
def hook(make_hook: MakeHook) -> Any:
    return make_hook()
