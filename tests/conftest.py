"""Suite-wide setup: an isolated Airflow home (SQLite, no example DAGs) for every test process.

The environment is set at import time, before any test module imports Airflow, so Airflow reads
this home and never the user's ``~/airflow``.  The Candela emulator fixtures come from the
package's pytest plugin (``airflow_provider_candela.testing``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
