"""Serve the emulator with uvicorn, counting TCP connections and announcing the bound URL."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any

import uvicorn

from airflow_provider_candela.emulator.app import create_app
from airflow_provider_candela.emulator.config import EmulatorConfig
from airflow_provider_candela.emulator.middleware import CONTROL_PREFIX, TRANSPORT_KEY
from airflow_provider_candela.emulator.state import EmulatorState

__all__ = ["READY_PREFIX", "serve"]

#: The line printed (flushed) on stdout once the server accepts connections.
READY_PREFIX = "Candela emulator listening on "


def _protocol_class(state: EmulatorState) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol that counts TCP connections carrying API requests and exposes its transport."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is optional
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class CountingProtocol(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            inner: Any = self.app  # type: ignore[has-type]
            counted = False

            async def app(scope: Any, receive: Any, send: Any) -> None:
                # A connection counts once it carries an API request (control calls are not counted).
                nonlocal counted
                if not counted and not scope.get("path", "").startswith(CONTROL_PREFIX):
                    counted = True
                    state.stats.tcp_connections += 1
                scope[TRANSPORT_KEY] = transport
                await inner(scope, receive, send)

            self.app = app

    return CountingProtocol


class _AnnouncingServer(uvicorn.Server):
    scheme = "http"

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"{READY_PREFIX}{self.scheme}://{shown}:{port}", flush=True)


def serve(config: EmulatorConfig) -> None:
    """Run the emulator until interrupted (SIGINT/SIGTERM)."""
    app = create_app(config)
    debug = config.log_level.lower() in ("debug", "trace")
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=_protocol_class(app.state.emulator),
        lifespan="off",
        log_level=config.log_level.lower(),
        access_log=debug,
        timeout_graceful_shutdown=2,
        server_header=False,
        ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
    )
    if debug:
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    server = _AnnouncingServer(uv_config)
    if config.ssl_certfile:
        server.scheme = "https"
    server.run()
