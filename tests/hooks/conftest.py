"""Fixtures of the hook tests: the emulator (real HTTP on a free loopback port) and hooks bound to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import conn_json, fast


@pytest.fixture
def emulator(candela_emulator: CandelaEmulator) -> CandelaEmulator:
    """The shared emulator, reset, with instant slots (tests that time slots configure their own)."""
    candela_emulator.configure(slot_startup_seconds=0)
    return candela_emulator


@pytest.fixture
def hook(emulator: CandelaEmulator, candela_connection: str) -> Iterator[CandelaHook]:
    """A hook on ``candela_default`` (password grant) with short backoff waits."""
    with fast(CandelaHook(candela_connection)) as candela:
        yield candela


@pytest.fixture
def ready(hook: CandelaHook) -> CandelaHook:
    """``hook`` whose user has a ready slot."""
    hook.ensure_slot(poll_interval=0.01)
    return hook


@pytest.fixture
def make_hook(emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., CandelaHook]]:
    """Build a hook on a connection given as JSON fields: ``make_hook(host=..., extra={...}, conn_id="x")``.

    Without ``host`` the emulator's connection (password grant, or ``pat=True``) is used, updated with
    the given fields (``None`` removes one); ``extra`` entries are merged into the emulator's extra
    (``None`` removes one) unless ``extra`` is a string (stored as is).
    """
    hooks: list[CandelaHook] = []
    counter = iter(range(1_000_000))

    def build(
        *, pat: bool = False, conn_id: str | None = None, hook_kwargs: dict[str, Any] | None = None, **fields: Any
    ) -> CandelaHook:
        conn_id = conn_id or f"candela_test_{next(counter)}"
        base: dict[str, Any] = {"host": emulator.url, "extra": emulator.connection_extra(pat)}
        if not pat:
            base.update(login=emulator.username, password=emulator.password)
        extra = fields.pop("extra", None)
        if isinstance(extra, dict):
            merged = {**base["extra"], **extra}
            base["extra"] = {k: v for k, v in merged.items() if v is not None}
        elif extra is not None:
            base["extra"] = extra
        base.update(fields)
        base = {k: v for k, v in base.items() if v is not None}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn_json(**base))
        candela = fast(CandelaHook(conn_id, **(hook_kwargs or {})))
        hooks.append(candela)
        return candela

    yield build
    for candela in hooks:
        candela.close()
