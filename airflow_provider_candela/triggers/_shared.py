"""What the Candela triggers share: hook calls off the event loop, one hook per connection, the poll loop.

The triggers reuse the synchronous :class:`~airflow_provider_candela.hooks.candela.CandelaHook` and
run each of its calls in a worker thread through
``asgiref.sync.sync_to_async(..., thread_sensitive=False)``, so the triggerer's event loop never
blocks.  ``sync_to_async`` (rather than a bare ``asyncio.to_thread``) matters on Airflow 3: the
hook's connection lookup talks to the triggerer's supervisor, and asgiref records the main event
loop in the worker thread so that the lookup is bridged back to it (the way
``airflow.providers.common.compat.connection.get_async_connection`` reads connections).

All the triggers of one triggerer process that use the same connection share one hook (one token,
one pool of keep-alive connections): a thousand deferred tasks make one token grant, not a
thousand, and do not flood Airflow's secret masker with a thousand tokens.  The hook is closed when
the last trigger using it ends, so a changed connection is read again by the next trigger.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.triggers.base import TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["HOOKS", "event", "in_thread", "poll_until"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


async def in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking hook call in a worker thread, triggerer-safe (see the module docstring)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(func, thread_sensitive=False)(*args)


def event(payload: dict[str, Any]) -> TriggerEvent:
    """A ``TriggerEvent`` of ``payload`` (typed for ``mypy --strict``)."""
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


class SharedHooks:
    """One hook per connection id for the triggers of this process, counted by its users.

    ``acquire`` and ``release`` block (connection lookup, closing sockets): call them in a worker
    thread.  The hook itself is safe to share: its token manager locks around grants, and its
    ``requests.Session`` pools connections per thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[str, tuple[CandelaHook, int]] = {}

    def acquire(self, conn_id: str) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        with self._lock:
            entry = self._hooks.get(conn_id)
            if entry is None:
                hook = CandelaHook(candela_conn_id=conn_id)
                hook.get_conn()  # the connection lookup happens here, off the event loop
                entry = (hook, 0)
            self._hooks[conn_id] = (entry[0], entry[1] + 1)
            return entry[0]

    def release(self, conn_id: str, hook: CandelaHook) -> None:
        with self._lock:
            shared, users = self._hooks.get(conn_id, (None, 0))
            if shared is not hook:
                return
            if users > 1:
                self._hooks[conn_id] = (hook, users - 1)
                return
            del self._hooks[conn_id]
        hook.close()

    def users(self, conn_id: str) -> int:
        """How many running triggers share the hook of ``conn_id`` (0: none is open)."""
        with self._lock:
            return self._hooks.get(conn_id, (None, 0))[1]


HOOKS = SharedHooks()


async def with_hook(conn_id: str, call: Callable[[CandelaHook], _T]) -> _T:
    """``call(hook)`` in a worker thread with the shared hook of ``conn_id``, released afterwards."""
    hook = await in_thread(HOOKS.acquire, conn_id)
    try:
        return await in_thread(call, hook)
    finally:
        await _release(conn_id, hook)


async def _release(conn_id: str, hook: CandelaHook) -> None:
    try:
        await in_thread(HOOKS.release, conn_id, hook)
    except Exception as err:  # closing is best effort
        _log.debug("Closing the Candela hook failed: %s", err)


async def poll_until(
    conn_id: str,
    check: Callable[[CandelaHook, int], dict[str, Any] | None],
    *,
    poll_interval: float,
    end_time: float | None,
    on_timeout: Callable[[int], dict[str, Any]],
    on_error: Callable[[Exception], dict[str, Any]],
) -> dict[str, Any]:
    """Call ``check(hook, n)`` every ``poll_interval`` s until it returns an event payload; return that payload.

    ``check`` blocks (it runs in a worker thread with the connection's shared hook; ``n`` counts the
    checks from 1) and returns ``None`` to be called again.  Past ``end_time`` (seconds since the
    epoch; ``None``: no limit) the payload is ``on_timeout(checks)``; an exception (a missing
    connection, Candela failing after the hook's retries) gives ``on_error(exception)``.
    Cancellation propagates.  The shared hook is released before the payload is returned: the
    triggerer may never resume a trigger's generator after its event, so nothing may be left to a
    ``finally`` there.
    """
    hook: CandelaHook | None = None
    checks = 0
    try:
        live = hook = await in_thread(HOOKS.acquire, conn_id)
        while True:
            checks += 1
            payload = await in_thread(check, live, checks)
            if payload is not None:
                return payload
            remaining = None if end_time is None else end_time - time.time()
            if remaining is not None and remaining <= 0:
                return on_timeout(checks)
            await asyncio.sleep(poll_interval if remaining is None else min(poll_interval, remaining))
    except asyncio.CancelledError:
        raise
    except Exception as err:
        return on_error(err)
    finally:
        if hook is not None:
            await _release(conn_id, hook)
