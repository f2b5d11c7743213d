"""Candela triggers: wait for a session to exist without holding a worker slot.

The trigger reuses the synchronous :class:`~airflow_provider_candela.hooks.candela.CandelaHook` and
runs each of its calls in a worker thread through
``asgiref.sync.sync_to_async(..., thread_sensitive=False)``, so the triggerer's event loop never
blocks.  ``sync_to_async`` (rather than a bare ``asyncio.to_thread``) matters on Airflow 3: the
hook's connection lookup talks to the triggerer's supervisor, and asgiref records the main event
loop in the worker thread so that the lookup is bridged back to it (the way
``airflow.providers.common.compat.connection.get_async_connection`` reads connections).

All the triggers of one triggerer process that use the same connection share one hook (one token,
one pool of keep-alive connections): a thousand deferred sensors make one token grant, not a
thousand, and do not flood Airflow's secret masker with a thousand tokens.  The hook is closed when
the last trigger using it ends, so a changed connection is read again by the next trigger.

Only identifiers, the connection id and the timing are serialized; never credentials.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_candela.models import ObjectId

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaSessionExistsTrigger"]

_T = TypeVar("_T")


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking hook call in a worker thread, triggerer-safe (see the module docstring)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(func, thread_sensitive=False)(*args)


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


class _SharedHooks:
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


_HOOKS = _SharedHooks()


class CandelaSessionExistsTrigger(BaseTrigger):
    """Poll Candela until a session exists, then fire one event.

    Events (``TriggerEvent.payload``):

    * ``{"status": "success", "message": ..., "session": <ObjectMetadata dict>}``
    * ``{"status": "timeout", "message": ..., "session": {"scope", "identifier", "version"}}``
    * ``{"status": "error", "message": ..., "session": {"scope", "identifier", "version"}}``

    :param scope: scope of the awaited session.
    :param identifier: identifier of the awaited session.
    :param version: version of the awaited session (``None``: any version).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    :param poll_interval: seconds between two checks.
    :param timeout: seconds to wait before firing a ``timeout`` event (``None``: no limit).  Turned
        into an absolute ``end_time`` so that a trigger moved to another triggerer keeps its deadline.
    :param end_time: absolute deadline (seconds since the epoch); wins over ``timeout``.
    """

    def __init__(
        self,
        scope: str,
        identifier: str,
        version: str | None = None,
        *,
        candela_conn_id: str = "candela_default",
        poll_interval: float = 60.0,
        timeout: float | None = None,
        end_time: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.scope = scope
        self.identifier = identifier
        self.version = version
        self.candela_conn_id = candela_conn_id
        self.poll_interval = float(poll_interval)
        if end_time is None and timeout is not None:
            end_time = time.time() + float(timeout)
        self.end_time = end_time

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs: ids, conn id and timing only (no credentials)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "scope": self.scope,
                "identifier": self.identifier,
                "version": self.version,
                "candela_conn_id": self.candela_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
            },
        )

    @property
    def _session_id(self) -> ObjectId:
        return ObjectId(scope=self.scope, identifier=self.identifier, version=self.version)

    @staticmethod
    def _metadata(hook: CandelaHook, oid: ObjectId) -> dict[str, Any]:
        """The session's ObjectMetadata dict, or its ids when the metadata call fails."""
        try:
            found: dict[str, Any] = hook.get_session_metadata(oid).model_dump(mode="json")
        except Exception:
            return oid.model_dump(mode="json")
        return found

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check every ``poll_interval`` seconds until the session exists or ``end_time`` passes."""
        # The shared hook is released inside _wait, before the event is yielded: the triggerer may
        # never resume this generator after its event, so nothing may be left to a `finally` here.
        yield _event(await self._wait())

    async def _wait(self) -> dict[str, Any]:
        """Poll until success, timeout or error; return the event payload."""
        oid = self._session_id
        ids = oid.model_dump(mode="json")
        hook: CandelaHook | None = None
        checks = 0
        try:
            live = hook = await _in_thread(_HOOKS.acquire, self.candela_conn_id)
            while True:
                checks += 1
                if await _in_thread(live.session_exists, oid):
                    session = await _in_thread(self._metadata, live, oid)
                    self.log.info("Candela session %s exists (check %d).", oid, checks)
                    return {"status": "success", "message": f"Candela session {oid} exists.", "session": session}
                remaining = None if self.end_time is None else self.end_time - time.time()
                if remaining is not None and remaining <= 0:
                    return {
                        "status": "timeout",
                        "message": f"Candela session {oid} did not appear before the deadline "
                        f"({checks} checks, every {self.poll_interval:g} s).",
                        "session": ids,
                    }
                self.log.debug("Candela session %s does not exist yet (check %d).", oid, checks)
                await asyncio.sleep(self.poll_interval if remaining is None else min(self.poll_interval, remaining))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            return {
                "status": "error",
                "message": f"Checking Candela session {oid} failed: {type(err).__name__}: {err}",
                "session": ids,
            }
        finally:
            if hook is not None:
                try:
                    await _in_thread(_HOOKS.release, self.candela_conn_id, hook)
                except Exception as err:  # closing is best effort
                    self.log.debug("Closing the Candela hook failed: %s", err)
