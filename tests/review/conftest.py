"""Reviews answered the way a person would: through the REST API of a real ``airflow api-server``.

The api-server runs over the suite's Airflow home, so it shares the metadata database with the
``dag.test()`` runs of the tests; the test never writes to Airflow's tables itself.  A scripted
:class:`ScriptedReviewer` thread answers each review when it opens, and records what it saw then (the
review's subject and body, and which session the emulator was running for the user).

The ``api_server`` fixture is the suite's (tests/conftest.py).  Airflow 3.3 only (``awaiting_input``): the
2.11 parse-time error is tested in ``tests/compat``.
"""

from __future__ import annotations

import pytest

try:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS
except ImportError:  # pragma: no cover - an old common-compat
    AIRFLOW_V_3_3_PLUS = False

if not AIRFLOW_V_3_3_PLUS:
    pytest.skip("the review tests run on Airflow 3.3 (awaiting_input)", allow_module_level=True)
