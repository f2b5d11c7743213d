"""Fixtures of the reliability suite and the counts it prints at the end of the run.

Each area records what it tried in :data:`reliability._support.TALLY`; ``pytest_terminal_summary``
prints one line, e.g. ``faults tried: 29, survived/clear-failure: 29; secrets scanned: 816
artefacts, leaks: 0; bad inputs: 87, clear errors: 86; load: 20 concurrent DAG runs, 20 green``.
A fault or bad input counts as "survived" / "clear" only once its test's assertions all passed.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._support import TALLY, RetryObserver


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short backoff waits for every hook, including those the tasks create (``Retry-After`` is still honoured)."""
    monkeypatch.setattr(CandelaHook, "retry_wait_base", 0.01)
    monkeypatch.setattr(CandelaHook, "retry_wait_max", 0.05)


@pytest.fixture
def candela(candela: CandelaEmulator, fast_retries: None) -> CandelaEmulator:
    """tests/conftest.py's ``candela`` (reset emulator, ``candela_default``, instant slots), with fast retries."""
    return candela


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> RetryObserver:
    """A :class:`RetryObserver` fed by every ``Retryable`` the hooks (and their token managers) raise.

    A spy on the retry signal: what is retried, and how, is unchanged.
    """
    from airflow_provider_candela.hooks._retry import Retryable

    observer = RetryObserver()
    original = Retryable.__init__

    def spy(self: Retryable, error: Any, retry_after: float | None = None) -> None:
        original(self, error, retry_after)
        observer.record(str(error))

    monkeypatch.setattr(Retryable, "__init__", spy)
    return observer


def pytest_terminal_summary(terminalreporter: Any) -> None:
    line = TALLY.summary()
    if line:
        terminalreporter.write_sep("-", "reliability")
        terminalreporter.write_line(line)
