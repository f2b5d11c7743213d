"""The hook's sending path: proxies (the connection's, and the environment's while ``trust_env`` holds) and pools.

The proxy here is a small forwarding HTTP proxy on loopback that records what it relays.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from airflow_provider_candela.hooks._transport import Exchange, tracking
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator, wait_until

MakeHook = Callable[..., CandelaHook]


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.seen: list[tuple[str, dict[str, str]]] = []
        #: A ``Set-Cookie`` value added to every answer relayed, when set.
        self.set_cookie: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(BaseHTTPRequestHandler):
    server: _Proxy

    def _relay(self) -> None:
        self.server.seen.append((self.requestline, dict(self.headers)))
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(target.netloc, timeout=10)
        try:
            path = f"{target.path}?{target.query}" if target.query else target.path
            upstream.request(self.command, path, body=body or None, headers=dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(name, value)
        if self.server.set_cookie:
            self.send_header("Set-Cookie", self.server.set_cookie)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _relay

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_the_connection_proxy_carries_every_call(
    make_hook: MakeHook, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_environment(monkeypatch)
    hook = make_hook(extra={"proxy": proxy.url})
    assert hook.user_has_slot() is False
    assert hook.list_sessions() == []
    lines = [line for line, _ in proxy.seen]
    base = hook.config.base_url
    assert lines[0].startswith("POST http://127.0.0.1:")  # the password grant goes through the proxy too
    assert lines[1:] == [
        f"GET {base}/slot/user_has_slot HTTP/1.1",
        f"GET {base}/sessions/list?all_versions=false HTTP/1.1",
    ]
    correlation_ids = [headers["CorrelationId"] for _, headers in proxy.seen[1:]]
    assert len(set(correlation_ids)) == 2
    assert all(str(uuid.UUID(value)) == value for value in correlation_ids)  # shaped like the SDK's


def test_environment_proxies_apply_unless_no_proxy_names_the_host(
    make_hook: MakeHook, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    hook = make_hook(pat=True)
    assert hook.user_has_slot() is False
    assert [line for line, _ in proxy.seen] == [f"GET {hook.config.base_url}/slot/user_has_slot HTTP/1.1"]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = make_hook(pat=True)
    assert direct.user_has_slot() is False
    assert len(proxy.seen) == 1, "NO_PROXY names the host: the call must not go through the proxy"


def test_cookies_set_by_the_server_are_not_sent_back(
    make_hook: MakeHook, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_environment(monkeypatch)
    proxy.set_cookie = "AWSALB=sticky; Path=/"
    hook = make_hook(pat=True, extra={"proxy": proxy.url})
    assert hook.user_has_slot() is False
    assert hook.user_has_slot() is False
    assert len(proxy.seen) == 2
    assert [headers.get("Cookie") for _, headers in proxy.seen] == [None, None]


def test_one_connection_serves_every_call_until_the_hook_is_closed(
    make_hook: MakeHook, emulator: CandelaEmulator
) -> None:
    hook = make_hook(pat=True)
    before = emulator.stats()["tcp_connections"]
    connections = []
    for close_first in (False, False, True, False):
        if close_first:
            hook.close()  # closes the session's pooled connections; the hook stays usable
        assert hook.user_has_slot() is False
        connections.append(emulator.stats()["tcp_connections"] - before)
    assert connections == [1, 1, 2, 2], "one keep-alive connection, reused until the hook is closed"


def _read_until_aborted(deadline_in: float) -> Exchange:
    """A read of a socket that never answers, under an exchange that the watchdog must abort."""
    quiet, _peer = socket.socketpair()
    with quiet, _peer:
        exchange = Exchange("GET /never", time.monotonic() + deadline_in)
        exchange.attach_socket(quiet)
        with tracking(exchange):
            quiet.settimeout(10)
            assert quiet.recv(1) == b""  # returns once the watchdog shuts the socket down
        return exchange


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_still_aborts_exchanges_at_their_deadline() -> None:
    assert _read_until_aborted(0.05).aborted == "deadline"  # the parent's watchdog thread runs now
    pid = os.fork()
    if pid == 0:  # the child has no watchdog thread unless it starts its own
        code = 1
        try:
            # recv returns (b"") only when a watchdog shut the socket down; without one it times out after 10 s
            code = 0 if _read_until_aborted(0.05).aborted == "deadline" else 1
        finally:
            sys.stdout.flush()
            os._exit(code)

    reaped: list[int] = []

    def exit_code() -> list[int] | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reaped.append(os.waitstatus_to_exitcode(status))
        return reaped or None

    try:
        assert wait_until(exit_code, timeout=15) == [0], "the forked child's exchange was not aborted at its deadline"
    finally:
        if not reaped:  # still running (hung): do not leave it behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
