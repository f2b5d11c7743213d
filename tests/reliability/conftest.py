"""Fixtures of the reliability suite and the counts it prints at the end of the run.

Each area records what it tried in :data:`reliability._support.TALLY`; ``pytest_terminal_summary``
prints one line, e.g. ``faults tried: 35, survived/clear-failure: 35; secrets scanned: 812
artefacts, leaks: 0; bad inputs: 62, clear errors: 62; load: 20 concurrent DAG runs, 20 green``.
A fault or bad input counts as "survived" / "clear" only once its test's assertions all passed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._support import TALLY, RetryObserver

_DAGRUN = "candela_test_dagrun"  # the module name tests/operators/dagrun.py is always loaded under


def _load_dagrun() -> ModuleType:
    if _DAGRUN not in sys.modules:
        spec = importlib.util.spec_from_file_location(_DAGRUN, Path(__file__).parents[1] / "operators" / "dagrun.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_DAGRUN] = module
        spec.loader.exec_module(module)
    return sys.modules[_DAGRUN]


@pytest.fixture
def dagrun(airflow_db: Path) -> ModuleType:
    """The ``dag.test()`` helpers of tests/operators/dagrun.py, with a migrated Airflow DB."""
    return _load_dagrun()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short backoff waits for every hook, including those the tasks create (``Retry-After`` is still honoured)."""
    monkeypatch.setattr(CandelaHook, "retry_wait_base", 0.01)
    monkeypatch.setattr(CandelaHook, "retry_wait_max", 0.05)


@pytest.fixture
def candela(candela_emulator: CandelaEmulator, candela_connection: str, fast_retries: None) -> Iterator[Any]:
    """The reset emulator, ``candela_default`` pointing at it, instant slots and fast retries."""
    candela_emulator.configure(slot_startup_seconds=0)
    yield candela_emulator


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
