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

:class:`Sender` sends through the adapters of a ``requests.Session`` without ``Session.request``:
an API client has no use for what that adds to every call (cookie jars, response hooks, redirect
resolution, merging the environment's settings), and it costs more than the rest of the call.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, get_environ_proxies
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

__all__ = ["CandelaAdapter", "Exchange", "Sender", "tracking"]

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
    """``requests`` adapter with tracked connections and pools that grow to their concurrency.

    The connection pool of a request is remembered per origin (scheme, host and port), TLS settings
    and proxies, instead of being looked up again on every request.  Its responses carry no cookies:
    the hook sends none (see :class:`Sender`), and reading them from every answer would cost about a
    tenth of a call.
    """

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES
        self._pools: dict[tuple[Any, ...], HTTPConnectionPool] = {}
        self._most_pools = connections  # the pool manager keeps this many pools; so do we

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        url = request.url
        assert isinstance(url, str)
        end = url.find("/", url.find("//") + 2)  # a prepared URL has a path: its origin ends there
        key = (url[:end] if end > 0 else url, verify, cert, *(proxies or {}).items())
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:  # pool.pool None: closed (evicted by its manager, or the adapter closed)
            fresh = super().get_connection_with_tls_context(request, verify, dict(proxies or {}), cert)
            assert isinstance(fresh, HTTPConnectionPool)
            if len(self._pools) >= self._most_pools:
                self._pools.clear()
            pool = self._pools[key] = fresh
        return pool

    def close(self) -> None:
        super().close()
        self._pools.clear()

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url.decode("utf-8") if isinstance(req.url, bytes) else (req.url or "")
        response.request = req
        response.connection = self
        return response

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


class Sender:
    """Prepares and sends requests with a ``requests.Session``'s settings, straight through its adapters.

    What is taken from the session, on every call: its headers (a request's own headers win), the
    adapter mounted for the URL, ``verify`` and ``cert``.  Once per URL: the URL prepared as
    ``requests`` prepares it, and the proxies (the session's, overridden by the environment's when
    ``trust_env`` is set, as ``requests`` does).  Never used: cookies, response hooks, ``auth``
    (so never ``~/.netrc``) and redirects (a 3xx answer is returned as it is).  Without ``stream`` the
    body is read before returning, as ``requests`` does.

    :param session: the configured session; it stays the place to change headers or mount adapters.
    """

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        self._urls: dict[str, tuple[str, dict[str, str]]] = {}

    def _url(self, url: str) -> tuple[str, dict[str, str]]:
        known = self._urls.get(url)
        if known is None:
            prepared = requests.PreparedRequest()
            prepared.prepare_url(url, None)
            assert prepared.url is not None
            proxies = dict(self.session.proxies)
            if self.session.trust_env:
                proxies.update(get_environ_proxies(prepared.url, no_proxy=None))
            if len(self._urls) >= 64:  # the API's paths and the token URL: a handful
                self._urls.clear()
            known = self._urls[url] = (prepared.url, {k: v for k, v in proxies.items() if v is not None})
        return known

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: tuple[float, float],
        stream: bool = False,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
    ) -> requests.Response:
        """Send one request; the response of a 3xx is returned, not followed."""
        session = self.session
        prepared_url, proxies = self._url(url)
        request = requests.PreparedRequest()
        request.method = method.upper()
        if params and "#" not in prepared_url:
            prepared_url = f"{prepared_url}{'&' if '?' in prepared_url else '?'}{urlencode(params)}"
        elif params:
            request.prepare_url(url, params)
            assert request.url is not None
            prepared_url = request.url
        request.url = prepared_url
        request.headers = CaseInsensitiveDict(session.headers)  # type: ignore[arg-type]  # values may be bytes
        if headers:
            request.headers.update(headers)
        request.prepare_body(data, None, json)
        response = session.get_adapter(prepared_url).send(
            request,
            stream=stream,
            timeout=timeout,
            verify=True if session.verify is None else session.verify,
            cert=session.cert,
            proxies=proxies,
        )
        if not stream:
            response.content  # noqa: B018 (read the body now: the caller's deadline covers it)
        return response
