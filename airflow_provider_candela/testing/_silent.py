"""A Candela that accepts connections and never answers: what a hung server or a stalled proxy looks like.

:class:`SilentCandela` listens on a free loopback port, accepts every TCP connection, reads and discards
what the client sends and never sends a byte back: a hook call to it blocks until its read timeout.  It
records what a client can be seen doing from the server's side: each connection accepted (and when),
the most connections open at once, and each one the client closed (a read timeout or a retry closes
it).  The emulator always answers, so it cannot play this part.  Standard library only.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["SilentCandela", "SilentStats"]


@dataclass(frozen=True)
class SilentStats:
    """What :meth:`SilentCandela.stats` saw from the server's side."""

    accepted: int  # connections accepted since the start
    open: int  # connections open now
    most_open: int  # the most connections open at once
    closed_by_client: int  # connections the client closed
    oldest_open_seconds: float  # how long the oldest open connection has been held (0: none open)


class SilentCandela:
    """A loopback TCP server that accepts connections and never answers (a thread of this process).

    Point a connection's host at :attr:`url`; :meth:`close` (also at the end of a ``with`` block) closes every
    connection, so each blocked call fails at once.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, float] = {}  # connection -> when it was accepted (monotonic)
        self._accepted = self._most_open = self._closed_by_client = 0
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="silent-candela", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_reader:
                    return
                if sock is self._listener:
                    self._accept()
                else:
                    assert isinstance(sock, socket.socket)
                    self._read(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._selector.register(conn, selectors.EVENT_READ)
        with self._lock:
            self._open[conn] = time.monotonic()
            self._accepted += 1
            self._most_open = max(self._most_open, len(self._open))

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)  # the request: discarded, never answered
        except OSError:
            data = b""
        if data:
            return
        self._selector.unregister(conn)
        conn.close()
        with self._lock:
            self._open.pop(conn, None)
            self._closed_by_client += 1

    def __enter__(self) -> SilentCandela:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> SilentStats:
        """The connections seen so far: accepted, open now, most open at once, closed by the client."""
        with self._lock:
            oldest = min(self._open.values(), default=None)
            return SilentStats(
                accepted=self._accepted,
                open=len(self._open),
                most_open=self._most_open,
                closed_by_client=self._closed_by_client,
                oldest_open_seconds=0.0 if oldest is None else time.monotonic() - oldest,
            )

    def close(self) -> None:
        """Stop listening and close every connection: each blocked read ends at once (closed by the server)."""
        if self._closing:
            return
        self._closing = True
        self._wake_writer.send(b"x")
        self._thread.join(10)
        self._selector.close()
        self._listener.close()
        with self._lock:
            conns, self._open = list(self._open), {}
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._wake_reader.close()
        self._wake_writer.close()
