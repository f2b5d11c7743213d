"""``[core] hostname_callable`` of the deployment test: each process reports the name it was given.

The two Celery workers of the deployment test run on one machine, so ``socket.getfqdn()`` would give
them the same name.  Each worker is started with ``CANDELA_DEPLOY_HOSTNAME`` set (as two machines
would have two names), so a task instance's ``hostname`` tells which worker runs it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The process's ``CANDELA_DEPLOY_HOSTNAME``, else the machine's FQDN (Airflow's default)."""
    return os.environ.get("CANDELA_DEPLOY_HOSTNAME") or socket.getfqdn()
