"""Fixtures of the operator, sensor and trigger tests (the DAG-run helper lives in tests/operators/dagrun.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _dagrun() -> ModuleType:
    name = "candela_test_dagrun"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "operators" / "dagrun.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def dagrun(airflow_db: Path) -> ModuleType:
    """The DAG-run helpers (``run_dag``, ``xcom``, ``states``, ``wait_for``), with a migrated Airflow DB."""
    return _dagrun()


@pytest.fixture
def candela(candela_emulator: Any, candela_connection: str) -> Iterator[Any]:
    """The reset emulator with ``candela_default`` pointing at it and instant slot start-up."""
    candela_emulator.configure(slot_startup_seconds=0)
    yield candela_emulator
