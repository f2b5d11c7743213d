"""Whether this Airflow has the 3.1 plugin system (FastAPI apps and external views in the UI)."""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

AIRFLOW_V_3_1_PLUS = Version(Version(version("apache-airflow")).base_version) >= Version("3.1.0")
