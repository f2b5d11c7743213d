"""What the Candela hook adds under ``requests``: deadlines per exchange, cancellation, a pool sized to its users.

A socket timeout bounds each ``recv`` only: a server that sends one byte a second never trips it.
Every HTTP exchange of the hook is therefore an :class:`Exchange` with an absolute deadline, watched
by one process-wide :class:`_Watchdog` thread.  When the deadline passes (or the hook is cancelled,
e.g. by a task's ``on_kill``), the watchdog shuts the exchange's socket down: the blocked read
returns at once, and the hook turns what it sees into an error naming the deadline (or the kill).

The socket is found through the connection classes of :class:`CandelaAdapter`: a connection that
sends a request records itself on the exchange the calling thread registered (:func:`tracking`).

The adapter's pools also grow to the number of threads that use them at once, instead of
discarding (and logging) every connection beyond a fixed size: connections <= concurrent callers.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

__all__ = ["CandelaAdapter", "Exchange", "tracking"]

_local = threading.local()


class Exchange:
    """One HTTP attempt in flight: its deadline, its socket once sending, and why it was aborted.

    :param what: e.g. ``"GET /slot/state"``, for messages.
    :param deadline: ``time.monotonic()`` after which the exchange is aborted.
    :param budget: how the deadline was set, for the error message (e.g. ``"connect 10 s + read 300 s"``).
    """

    __slots__ = ("_conn", "_sock", "aborted", "budget", "deadline", "done", "what")

    def __init__(self, what: str, deadline: float, budget: str) -> None:
        self.what = what
        self.deadline = deadline
        self.budget = budget
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
        self._cond = threading.Condition(threading.RLock())
        self._heap: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._pushes = 0
        self._thread: threading.Thread | None = None

    def watch(self, exchange: Exchange) -> None:
        with self._cond:
            self._pushes += 1
            if self._pushes % 512 == 0:  # finished exchanges wait for their deadline otherwise: drop them now
                self._heap = [item for item in self._heap if not item[2].done]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="candela-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is exchange:
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


@contextmanager
def tracking(exchange: Exchange) -> Iterator[Exchange]:
    """Watch ``exchange``'s deadline and let the connection that sends the next request attach to it."""
    previous = getattr(_local, "exchange", None)
    _local.exchange = exchange
    _WATCHDOG.watch(exchange)
    try:
        yield exchange
    finally:
        _local.exchange = previous


def watch(exchange: Exchange) -> None:
    """Re-queue an exchange whose deadline moved earlier (later deadlines are picked up by themselves)."""
    _WATCHDOG.watch(exchange)


def _send_tracked(conn: HTTPConnection, send: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    exchange: Exchange | None = getattr(_local, "exchange", None)
    if exchange is None:
        send(*args, **kwargs)
        return
    exchange.attach(conn)
    send(*args, **kwargs)
    exchange.attach_socket(conn.sock)


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _send_tracked(self, super().request, *args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _send_tracked(self, super().request, *args, **kwargs)


class _Growing(HTTPConnectionPool):
    """A pool that keeps every connection its concurrent users return (never "pool is full, discarding")."""

    def _put_conn(self, conn: Any) -> None:
        pool = self.pool
        if pool is not None and conn is not None:
            with pool.mutex:
                if pool.maxsize and pool._qsize() >= pool.maxsize:
                    pool.maxsize += 1
        super()._put_conn(conn)


class _GrowingPool(_Growing):
    ConnectionCls = _TrackedHTTPConnection


class _GrowingHTTPSPool(_Growing, HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_POOL_CLASSES = {"http": _GrowingPool, "https": _GrowingHTTPSPool}


class CandelaAdapter(HTTPAdapter):
    """``requests`` adapter with tracked connections and pools that grow to their concurrency."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
