"""ASGI middleware: request statistics and fault injection for every API route.

Pure ASGI (no ``BaseHTTPMiddleware``) so that streaming stays streaming and the common path costs
one dict lookup.  ``/_emulator/*`` requests are neither counted nor faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from airflow_provider_candela.emulator.state import EmulatorState, Fault

__all__ = ["CONTROL_PREFIX", "TRANSPORT_KEY", "EmulatorMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key under which the server's connection protocol puts the asyncio transport (for drops).
TRANSPORT_KEY: Final = "candela.transport"
CONTROL_PREFIX: Final = "/_emulator"
_NOT_JSON: Final = b"<html><body><h1>502 Bad Gateway</h1><p>injected not_json fault</p></body></html>"
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class _CutStream(Exception):
    """Raised into the app's ``send`` to stop a stream cut by a fault."""


def _only_cut(exc: BaseException) -> bool:
    if isinstance(exc, _CutStream):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cut(inner) for inner in exc.exceptions)
    return False


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; the returned ``receive`` replays it whether or not the client stays.

    A server that has received a request may carry it out after the client stopped waiting for the
    answer (the ``detach`` fault): the handler must not notice the client has gone.
    """
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replayed() -> Message:
        if replay:
            return replay.pop()
        return await receive()

    return replayed


def _tolerant(send: Send) -> Send:
    """``send`` that ignores a client that has gone (the answer of a detached request has no reader)."""

    async def tolerant(message: Message) -> None:
        with contextlib.suppress(Exception):
            await send(message)

    return tolerant


async def drop_connection(scope: Scope) -> None:
    """Close the client's TCP connection with a reset and no response."""
    transport = scope.get(TRANSPORT_KEY)
    if transport is None:
        raise RuntimeError("drop fault: the server did not expose its transport")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the protocol see connection_lost so that the server does not try to answer.
    for _ in range(3):
        await asyncio.sleep(0)


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (latin-1), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _headers_without(headers: list[tuple[bytes, bytes]], *names: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() not in names]


class EmulatorMiddleware:
    """Counts requests per route and status, and applies injected faults."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self.state
        method: str = scope["method"]
        path: str = scope["path"]
        key = f"{method} {path}"
        state.stats.requests_total += 1
        fault = state.take_fault(method, path, _header(scope, b"authorization")) if state.faults else None

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.stats.count(key, message["status"])
            await send(message)

        if fault is None:
            await self.app(scope, receive, counting_send)
            return
        await self._with_fault(fault, key, scope, receive, send)

    async def _with_fault(self, fault: Fault, key: str, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.state.stats
        if fault.lose:
            self.state.lose(self.state.user_of(_header(scope, b"authorization")), fault.lose)
            if not (fault.status is not None or fault.drop or fault.delay or fault.transforms):

                async def counting(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        stats.count(key, message["status"])
                    await send(message)

                await self.app(scope, receive, counting)
                return
        if fault.detach:
            receive = await _buffered(receive)
            send = _tolerant(send)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        terminal = fault.status is not None or fault.drop
        if terminal and fault.cut_after_events is None:
            if fault.after:

                async def discard(message: Message) -> None:
                    return None

                await self.app(scope, receive, discard)
            if fault.drop:
                stats.count(key, "dropped")
                await drop_connection(scope)
            else:
                await self._send_fault_status(fault, key, send)
            return
        if not fault.transforms:
            # delay only
            async def counting_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    stats.count(key, message["status"])
                await send(message)

            await self.app(scope, receive, counting_send)
            return
        rewriter = _Rewriter(fault, key, scope, send, self.state)
        try:
            await self.app(scope, receive, rewriter.send)
        except Exception as exc:
            if not _only_cut(exc):
                raise
        await rewriter.finish()

    async def _send_fault_status(self, fault: Fault, key: str, send: Send) -> None:
        status = fault.status or 500
        if "body" in fault.spec:
            body_value = fault.spec["body"]
            if isinstance(body_value, str):
                body = body_value.encode()
                content_type = b"text/plain; charset=utf-8"
            else:
                body = json.dumps(body_value, separators=(",", ":")).encode()
                content_type = b"application/json"
        else:
            body = json.dumps({"detail": f"Injected fault: HTTP {status}"}).encode()
            content_type = b"application/json"
        if status in _NO_BODY_STATUSES:
            body = b""
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if fault.spec.get("retry_after") is not None:
            headers.append((b"retry-after", str(fault.spec["retry_after"]).encode()))
        self.state.stats.count(key, status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _Rewriter:
    """Rewrites the app's response for not_json / missing_field / extra_field / cut_after_events."""

    def __init__(self, fault: Fault, key: str, scope: Scope, send: Send, state: EmulatorState) -> None:
        self.fault = fault
        self.key = key
        self.scope = scope
        self._send = send
        self.state = state
        self.start: Message | None = None
        self.streaming = False
        self.buffer = bytearray()
        self.partial = b""
        self.events_sent = 0
        self.first_line = True
        self.done = False

    async def send(self, message: Message) -> None:
        if self.done:
            raise _CutStream
        if message["type"] == "http.response.start":
            self.start = message
            headers = dict((k.lower(), v) for k, v in message.get("headers", []))
            self.streaming = b"ndjson" in headers.get(b"content-type", b"")
            self.state.stats.count(self.key, message["status"])
            if self.streaming:
                await self._send(
                    {**message, "headers": _headers_without(list(message.get("headers", [])), b"content-length")}
                )
                if self.fault.cut_after_events == 0:
                    await self._cut()
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not self.streaming:
            self.buffer += body
            if not more:
                await self._flush_buffer()
            return
        data = self.partial + body
        *lines, self.partial = data.split(b"\n")
        out: list[bytes] = []
        for line in lines:
            out.append(self._rewrite_line(line) + b"\n")
            self.events_sent += 1
            if self.fault.cut_after_events is not None and self.events_sent >= self.fault.cut_after_events:
                if out:
                    await self._send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                await self._cut()
                return
        if out or not more:
            await self._send({"type": "http.response.body", "body": b"".join(out), "more_body": more})
        if not more:
            self.done = True

    async def _cut(self) -> None:
        self.done = True
        if self.fault.drop:
            self.state.stats.count(self.key, "dropped")
            await drop_connection(self.scope)
        else:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        raise _CutStream

    def _rewrite_line(self, line: bytes) -> bytes:
        if self.fault.spec.get("not_json") and self.first_line:
            self.first_line = False
            return b"this line is not json"
        if not (self.fault.spec.get("missing_field") or self.fault.spec.get("extra_field")):
            return line
        try:
            value = json.loads(line)
        except ValueError:
            return line
        return json.dumps(self._rewrite_value(value), separators=(",", ":")).encode()

    def _rewrite_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._rewrite_value(item) for item in value]
        if isinstance(value, dict):
            missing = self.fault.spec.get("missing_field")
            if missing:
                value.pop(missing, None)
            if self.fault.spec.get("extra_field"):
                value["unexpected_extra_field"] = "added by the emulator's extra_field fault"
        return value

    async def _flush_buffer(self) -> None:
        self.done = True
        assert self.start is not None
        status = int(self.start["status"])
        body = bytes(self.buffer)
        headers = list(self.start.get("headers", []))
        if status not in _NO_BODY_STATUSES:
            if self.fault.spec.get("not_json"):
                body = _NOT_JSON
            elif self.fault.spec.get("missing_field") or self.fault.spec.get("extra_field"):
                with contextlib.suppress(ValueError):
                    body = json.dumps(self._rewrite_value(json.loads(body)), separators=(",", ":")).encode()
            headers = [*_headers_without(headers, b"content-length"), (b"content-length", str(len(body)).encode())]
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def finish(self) -> None:
        """Complete a response the app left open (cannot normally happen)."""
        if self.start is not None and not self.done and not self.streaming:
            await self._flush_buffer()
