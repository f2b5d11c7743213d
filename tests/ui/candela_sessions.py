"""Sessions on the emulator for the Candela page tests, started the way a DAG starts them (through the hook)."""

from __future__ import annotations

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import ObjectMetadata
from airflow_provider_candela.testing import CandelaEmulator

#: the connection (an environment variable of the test process, not of the api-server) that starts them
LOCAL_CONN_ID = "candela_page_local"


def local_hook(emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> CandelaHook:
    """A hook of the test process to the emulator's user (the one the api-server's connections use)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{LOCAL_CONN_ID.upper()}", emulator.connection_json())
    return CandelaHook(LOCAL_CONN_ID)


def slot_with_sessions(emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, *apps: str) -> list[ObjectMetadata]:
    """A ready slot and one session per app, in order, with the model demo-model; only the last one still runs."""
    with local_hook(emulator, monkeypatch) as hook:
        hook.ensure_slot(timeout=20, poll_interval=0.05)
        started = []
        for app in apps:
            if started:
                hook.stop_session()
            started.append(hook.start_session(app, "default/demo-model"))
    return started
