"""What the Candela hook adds under ``requests``: a deadline per exchange, cancellation, a pool sized to its users.

A socket timeout bounds each ``recv`` only: a server that sends one byte a second never trips it.
Every HTTP exchange of the hook is therefore an :class:`Exchange` with an absolute deadline, watched
by one process-wide :class:`_Watchdog` thread.  When the deadline passes (or the hook is cancelled,
e.g. by a task's ``on_kill``), the watchdog shuts the exchange's socket down: the blocked read
returns at once, and the hook turns what it sees into an error naming the deadline (or the kill).

The hook sends with ``requests.Session.send`` (a request prepared by ``requests.Request.prepare``);
the socket is found through the connection classes
of :class:`CandelaAdapter`: a connection that sends a request records itself on the exchange the
calling thread registered (:func:`tracking`).  The adapter's pools keep up to :data:`POOL_SIZE`
connections, so that threads sharing a hook reuse theirs instead of discarding (and logging) every
connection beyond urllib3's default of 10: connections <= concurrent callers.

Only public APIs of ``requests`` and ``urllib3`` are used, so that an upgrade of either does not break
the hook:

* ``requests.adapters.HTTPAdapter(pool_maxsize=..., pool_block=False)`` and its overridable
  ``init_poolmanager`` and ``proxy_manager_for`` (requests' "Transport Adapters");
* ``urllib3.PoolManager.pool_classes_by_scheme`` (the pool class per scheme, as urllib3's own
  ``contrib.socks`` sets it) and ``HTTPConnectionPool.ConnectionCls`` (the connection class of a pool);
* ``urllib3.connection.HTTPConnection.request`` (what a pool calls to send a request) and its ``sock``;
* from the standard library: ``socket.shutdown`` and ``os.register_at_fork``.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from contextlib import suppress
from typing import Any, Final

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager, ProxyManager

__all__ = ["POOL_SIZE", "CandelaAdapter", "Exchange", "tracking", "watch"]

#: Connections a pool keeps for reuse: threads beyond this many on one hook at once still work, but
#: urllib3 discards (and logs) their connections as they return them.
POOL_SIZE: Final = 100

_local = threading.local()


class Exchange:
    """One HTTP attempt in flight: its deadline, its socket once sending, and why it was aborted.

    :param what: e.g. ``"GET /slot/state"``, for messages.
    :param deadline: ``time.monotonic()`` after which the exchange is aborted.
    """

    __slots__ = ("_conn", "_sock", "aborted", "deadline", "done", "what")

    def __init__(self, what: str, deadline: float) -> None:
        self.what = what
        self.deadline = deadline
        self.done = False
        #: ``"deadline"`` or ``"cancelled"`` once aborted; None while the exchange runs normally.
        self.aborted: str | None = None
        self._conn: HTTPConnection | None = None
        self._sock: socket.socket | None = None

    def attach(self, conn: HTTPConnection) -> None:
        """The connection sending the request (its socket may not be connected yet)."""
        self._conn = conn
        if self.aborted is not None:
            self._shutdown()

    def attach_socket(self, sock: socket.socket | None) -> None:
        """The request's socket once sent: kept, since a connection that will close forgets it."""
        self._sock = sock
        if self.aborted is not None:
            self._shutdown()

    def abort(self, why: str) -> None:
        """Mark the exchange ``why`` and unblock whatever reads its socket (idempotent, any thread)."""
        if self.done or self.aborted is not None:
            return
        self.aborted = why
        self._shutdown()

    def finish(self) -> None:
        self.done = True
        self._conn = None
        self._sock = None

    def _shutdown(self) -> None:
        sock = self._sock or getattr(self._conn, "sock", None)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread aborting the exchanges whose deadline has passed."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._pushes = 0
        self._thread: threading.Thread | None = None

    def watch(self, exchange: Exchange) -> None:
        with self._lock:
            self._pushes += 1
            if self._pushes % 512 == 0:  # finished exchanges wait for their deadline otherwise: drop them now
                self._heap = [item for item in self._heap if not item[2].done]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="candela-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is exchange:  # the thread waits for a later deadline: wake it
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, exchange = self._heap[0]
                if exchange.done or exchange.aborted is not None:
                    heapq.heappop(self._heap)
                    continue
                now = time.monotonic()
                if when > now:
                    self._cond.wait(when - now)
                    continue
                heapq.heappop(self._heap)
                if exchange.deadline > now:  # moved later since it was queued (a stream that made progress)
                    heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
                    continue
                exchange.abort("deadline")


_WATCHDOG = _Watchdog()


def _new_watchdog() -> None:
    global _WATCHDOG  # noqa: PLW0603 (a forked child has neither the thread nor, safely, its lock)
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog)


class _Tracking:
    __slots__ = ("_exchange", "_previous")

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._previous: Exchange | None = None

    def __enter__(self) -> Exchange:
        self._previous = getattr(_local, "exchange", None)
        _local.exchange = self._exchange
        _WATCHDOG.watch(self._exchange)
        return self._exchange

    def __exit__(self, *exc_info: object) -> None:
        _local.exchange = self._previous


def tracking(exchange: Exchange) -> _Tracking:
    """Watch ``exchange``'s deadline and let the connection that sends the next request attach to it."""
    return _Tracking(exchange)


def watch(exchange: Exchange) -> None:
    """Re-queue an exchange whose deadline moved earlier (later deadlines are picked up by themselves)."""
    _WATCHDOG.watch(exchange)


class _Tracked:
    """Mixin of a urllib3 connection: the exchange of the sending thread learns its connection and socket."""

    sock: socket.socket | None

    def request(self, *args: Any, **kwargs: Any) -> None:
        exchange: Exchange | None = getattr(_local, "exchange", None)
        if exchange is not None:
            exchange.attach(self)  # type: ignore[arg-type]  # always mixed into an HTTPConnection
        super().request(*args, **kwargs)  # type: ignore[misc]  # HTTPConnection.request
        if exchange is not None:
            exchange.attach_socket(self.sock)


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_POOL_CLASSES = {"http": _TrackedPool, "https": _TrackedHTTPSPool}


class CandelaAdapter(HTTPAdapter):
    """``requests`` adapter whose connections attach to the sending thread's :class:`Exchange`.

    Its pools (direct and through an HTTP proxy) keep :data:`POOL_SIZE` connections and never block a
    caller (a caller waiting for a free connection would be outside any exchange's deadline).
    """

    def __init__(self) -> None:
        super().__init__(pool_maxsize=POOL_SIZE, pool_block=False)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # an HTTP(S) proxy; a SOCKS proxy keeps its own pool classes
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
