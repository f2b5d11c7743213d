"""Fixtures of the emulator's tests (the emulator itself comes from ``airflow_provider_candela.testing``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import Api, login


@pytest.fixture
def emulator(candela_emulator: CandelaEmulator) -> CandelaEmulator:
    """The shared emulator, reset, with instant slots (tests that time slots configure their own)."""
    candela_emulator.configure(slot_startup_seconds=0)
    return candela_emulator


@pytest.fixture
def api(emulator: CandelaEmulator) -> Iterator[Api]:
    """An authenticated client (password grant) of the primary user."""
    client = login(emulator)
    yield client
    client.close()


@pytest.fixture
def ready(api: Api) -> Api:
    """``api`` with a ready slot."""
    api.ready_slot()
    return api
