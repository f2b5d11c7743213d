"""What the Candela triggers share: hook calls off the event loop on threads of their own, one hook per connection.

The triggers reuse the synchronous :class:`~airflow_provider_candela.hooks.candela.CandelaHook` and
run each of its calls through ``asgiref.sync.sync_to_async(..., thread_sensitive=False,
executor=...)`` on a bounded thread pool of the provider's own (:data:`TRIGGER_THREADS` threads,
``[candela] trigger_threads``), never on the event loop's default executor: every trigger of every
provider in the triggerer shares that one (``asyncio.to_thread``), and a Candela that accepts
connections but never answers would hold its few threads for the whole read timeout.  Candela's
triggers then wait for one another, not other providers' triggers for Candela.  ``sync_to_async``
(rather than a bare ``run_in_executor``) matters on Airflow 3: the hook's connection lookup talks
to the triggerer's supervisor, and asgiref records the main event loop in the worker thread so that
the lookup is bridged back to it (the way
``airflow.providers.common.compat.connection.get_async_connection`` reads connections).

All the triggers of one triggerer process that use the same connection with the same
``hook_params`` share one hook (one token, one pool of keep-alive connections): a thousand deferred
tasks make one token grant, not a thousand, and do not flood Airflow's secret masker with a
thousand tokens.  The hook is closed when the last trigger using it ends, so a changed connection is
read again by the next trigger.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar

from airflow.triggers.base import TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["HOOKS", "TRIGGER_THREADS", "event", "in_thread", "poll_until", "with_hook"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


#: Threads of the Candela triggers of one triggerer process, unless ``[candela] trigger_threads`` says otherwise.
TRIGGER_THREADS: Final = 16


@functools.cache
def _executor() -> ThreadPoolExecutor:
    """The Candela triggers' own thread pool (made on first use, one per process)."""
    from airflow.providers.common.compat.sdk import conf

    threads = conf.getint("candela", "trigger_threads", fallback=TRIGGER_THREADS)
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="candela-trigger")


async def in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking hook call on the Candela triggers' own threads, triggerer-safe (see the module docstring)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(func, thread_sensitive=False, executor=_executor())(*args)


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
        self._hooks: dict[tuple[str, str], tuple[CandelaHook, int]] = {}

    @staticmethod
    def _key(conn_id: str, hook_params: Mapping[str, Any] | None) -> tuple[str, str]:
        return conn_id, json.dumps(dict(hook_params or {}), sort_keys=True, default=str)

    def acquire(self, conn_id: str, hook_params: Mapping[str, Any] | None = None) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        key = self._key(conn_id, hook_params)
        with self._lock:
            entry = self._hooks.get(key)
            if entry is None:
                hook = CandelaHook(candela_conn_id=conn_id, **dict(hook_params or {}))
                hook.get_conn()  # the connection lookup happens here, off the event loop
                entry = (hook, 0)
            self._hooks[key] = (entry[0], entry[1] + 1)
            return entry[0]

    def release(self, conn_id: str, hook: CandelaHook, hook_params: Mapping[str, Any] | None = None) -> None:
        key = self._key(conn_id, hook_params)
        with self._lock:
            shared, users = self._hooks.get(key, (None, 0))
            if shared is not hook:
                return
            if users > 1:
                self._hooks[key] = (hook, users - 1)
                return
            del self._hooks[key]
        hook.close()

    def users(self, conn_id: str, hook_params: Mapping[str, Any] | None = None) -> int:
        """How many running triggers share the hook of ``conn_id`` with ``hook_params`` (0: none is open)."""
        with self._lock:
            return self._hooks.get(self._key(conn_id, hook_params), (None, 0))[1]


HOOKS = SharedHooks()


async def with_hook(
    conn_id: str, call: Callable[[CandelaHook], _T], hook_params: Mapping[str, Any] | None = None
) -> _T:
    """``call(hook)`` in a worker thread with the shared hook of ``conn_id``, released afterwards."""
    hook = await in_thread(HOOKS.acquire, conn_id, hook_params)
    try:
        return await in_thread(call, hook)
    finally:
        await _release(conn_id, hook, hook_params)


async def _release(conn_id: str, hook: CandelaHook, hook_params: Mapping[str, Any] | None) -> None:
    try:
        await in_thread(HOOKS.release, conn_id, hook, hook_params)
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
    hook_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Call ``check(hook, n)`` every ``poll_interval`` s until it returns an event payload; return that payload.

    ``check`` blocks (it runs in a worker thread with the shared hook of the connection and
    ``hook_params``; ``n`` counts the checks from 1) and returns ``None`` to be called again.  Past
    ``end_time`` (seconds since the epoch; ``None``: no limit) the payload is ``on_timeout(checks)``;
    an exception (a missing connection, Candela failing after the hook's retries) gives ``on_error(exception)``.
    Cancellation propagates.  The shared hook is released before the payload is returned: the
    triggerer may never resume a trigger's generator after its event, so nothing may be left to a
    ``finally`` there.
    """
    hook: CandelaHook | None = None
    checks = 0
    try:
        live = hook = await in_thread(HOOKS.acquire, conn_id, hook_params)
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
            await _release(conn_id, hook, hook_params)
