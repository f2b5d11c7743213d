"""Suite-wide setup: an isolated Airflow home (SQLite, no example DAGs) for every test process.

The environment is set at import time, before any test module imports Airflow, so Airflow reads
this home and never the user's ``~/airflow``.  The Candela emulator fixtures come from the
package's pytest plugin (``airflow_provider_candela.testing``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="candela-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ.pop("AIRFLOW_CONN_CANDELA_DEFAULT", None)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """Create the SQLite metadata database once per test session (needed by ``dag.test()``)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    yield _HOME


_DAGRUN = "candela_test_dagrun"  # tests/operators/dagrun.py, loaded once under this name


def _load_dagrun() -> ModuleType:
    if _DAGRUN not in sys.modules:
        spec = importlib.util.spec_from_file_location(_DAGRUN, Path(__file__).parent / "operators" / "dagrun.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_DAGRUN] = module
        spec.loader.exec_module(module)
    return sys.modules[_DAGRUN]


@pytest.fixture
def dagrun(airflow_db: Path) -> ModuleType:
    """The ``dag.test()`` helpers (``run_dag``, ``xcom``, ``states``, ``wait_for``), with a migrated Airflow DB."""
    return _load_dagrun()


@pytest.fixture
def candela(candela_emulator: Any, candela_connection: str) -> Iterator[Any]:
    """The reset emulator with ``candela_default`` pointing at it and instant slot start-up."""
    candela_emulator.configure(slot_startup_seconds=0)
    yield candela_emulator
