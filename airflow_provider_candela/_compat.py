"""Which Airflow this is: the provider's one place for checks of the Airflow version.

Each flag names the features that need it.  The version is Airflow's own (``airflow.__version__``, so a
pre-release such as 3.4.0b2 counts as 3.4), read once; nothing else is imported, so the plugin and the operator
modules stay cheap to import.
"""

from __future__ import annotations

from typing import Final

from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

__all__ = ["AIRFLOW_VERSION", "AIRFLOW_V_3_1_PLUS", "AIRFLOW_V_3_3_PLUS", "AIRFLOW_V_3_4_PLUS"]

_BASE: Final = Version(Version(AIRFLOW_VERSION).base_version)

#: Human-in-the-loop reviews (the standard provider's HITLTrigger) and the plugins' FastAPI apps and UI views.
AIRFLOW_V_3_1_PLUS: Final = Version("3.1") <= _BASE
#: A task waits for its review in ``awaiting_input`` (``TaskAwaitingInput``); the task state store.
AIRFLOW_V_3_3_PLUS: Final = Version("3.3") <= _BASE
#: Task-group loops (a task instance per iteration, told apart by ``region_id`` and ``region_index``) and
#: human-in-the-loop answers bound to the request they answer (``request_created_at``).
AIRFLOW_V_3_4_PLUS: Final = Version("3.4") <= _BASE
