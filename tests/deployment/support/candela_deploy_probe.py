"""A trigger of "another provider" for the deployment test: it waits on ``asyncio.to_thread``, as most do.

The triggerer runs every trigger on one event loop; ``asyncio.to_thread`` runs on that loop's default
executor, a few threads every trigger of every provider shares (so does the trigger runner's own reading
of its supervisor's messages).  :class:`ToThreadProbeTrigger` fires once its ``to_thread`` call has been
answered, with the name of the thread that answered it.  It lives here, on the ``PYTHONPATH`` of every
process of the deployment test, so that the worker can defer to it and the triggerer can import it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ToThreadProbeTrigger(BaseTrigger):
    """Fire ``{"thread": <name of the thread that ran the call>}`` once an ``asyncio.to_thread`` call returns."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        thread = await asyncio.to_thread(lambda: threading.current_thread().name)
        yield TriggerEvent({"thread": thread})
