"""Deferral rules shared by the deferrable start and the sensor: the backstop timeout, the event check.

Standard library only: imported at every DAG parse by the operators and the sensor.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

from airflow_provider_candela._validation import time_limit
from airflow_provider_candela.exceptions import CandelaError

__all__ = ["backstop", "end_time", "trigger_event"]


def end_time(timeout: float | None, end_time: float | None = None) -> float | None:
    """A trigger's absolute deadline (seconds since the epoch), kept when the trigger moves to another triggerer.

    ``end_time`` (from a serialized trigger) wins; else ``timeout`` seconds from now; ``None``, no deadline,
    for no ``timeout`` or one without end (``float("inf")`` or beyond a century: nothing to overflow).
    """
    if end_time is not None:
        return float(end_time)
    limit = None if timeout is None else time_limit(float(timeout))
    return None if limit is None else time.time() + limit


def backstop(seconds: float) -> timedelta | None:
    """The deferral's timeout for a trigger waiting ``seconds``: a little later than the trigger's deadline.

    The trigger's own timeout event (which says what it waited for) must win; the deferral's timeout only
    catches a trigger that never fires.  None (no backstop) for a wait without end.
    """
    deadline = time_limit(seconds)
    return None if deadline is None else timedelta(seconds=deadline + max(60.0, deadline * 0.1))


def trigger_event(event: Any, statuses: Collection[str], *, task_id: str) -> tuple[str, str, Mapping[str, Any]]:
    """``(status, message, event)`` of the event a deferred task resumed with, checked.

    :raises CandelaError: the event is not a dict with one of ``statuses``.
    """
    if not isinstance(event, Mapping) or event.get("status") not in statuses:
        raise CandelaError(
            f"Task '{task_id}' resumed with an unexpected trigger event {event!r}; "
            f"expected a dict with status {', '.join(sorted(statuses))}."
        )
    return str(event["status"]), str(event.get("message") or ""), event
