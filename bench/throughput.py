"""Figure 6, emulator throughput: ``GET /sessions/exists`` requests per second with 50 concurrent clients.

The load generator is deliberately cheap (asyncio, 50 raw keep-alive HTTP/1.1 connections, the
request bytes built once) so that it measures the emulator rather than the client.  After a
one-second warm-up, requests completed in ``seconds`` seconds are counted (also capped in number);
every answer must be ``200 true``.  The reference is one ``CandelaHook`` calling ``session_exists``
in a loop: the ratio says how many such busy clients the emulator serves before it becomes the
bottleneck of a test suite.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Final

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, log, median

__all__ = ["run"]

CLIENTS: Final = 50
TARGET_RPS: Final = 1000.0


@dataclass
class _Load:
    warm_until: float
    stop_at: float
    remaining: int
    completed: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


async def _client(host: str, port: int, request: bytes, load: _Load) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while load.remaining > 0 and time.monotonic() < load.stop_at:
            load.remaining -= 1
            started = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            finished = time.monotonic()
            if finished >= load.warm_until:
                load.completed += 1
                load.latencies.append(finished - started)
                if not head.startswith(b"HTTP/1.1 200") or body != b"true":
                    load.errors += 1
    finally:
        writer.close()


async def _generate(host: str, port: int, request: bytes, seconds: float, max_requests: int) -> dict[str, Any]:
    now = time.monotonic()
    load = _Load(warm_until=now + 1.0, stop_at=now + 1.0 + seconds, remaining=max_requests)
    await asyncio.gather(*(_client(host, port, request, load) for _ in range(CLIENTS)))
    window = min(time.monotonic(), load.stop_at) - load.warm_until
    latencies = sorted(load.latencies)
    return {
        "requests": load.completed,
        "errors": load.errors,
        "window_s": window,
        "rps": load.completed / window if window > 0 else 0.0,
        "latency_ms_p50": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "latency_ms_p99": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
    }


def run(emulator: CandelaEmulator, *, seconds: float = 5.0, max_requests: int = 200_000) -> list[Row]:
    import requests

    from airflow_provider_candela.hooks.candela import CandelaHook
    from bench.call_overhead import password_grant

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    with CandelaHook() as hook:
        hook.ensure_slot()
        oid = hook.start_session("default/demo-pipeline", "default/demo-model").obj_id
        log("figure 6: one hook client for 2 s (reference)")
        rounds: list[float] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            for _ in range(50):
                hook.session_exists(oid)
            rounds.append(50 / (time.perf_counter() - began))
    hook_rps = median(rounds)
    with requests.Session() as session:
        token = password_grant(session, emulator)
    host, port = emulator.host, int(emulator.port or 0)
    request = (
        f"GET /sessions/exists?scope={oid.scope}&identifier={oid.identifier} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    log(f"figure 6: {CLIENTS} concurrent keep-alive clients for {seconds:g} s (after 1 s warm-up)")
    before = emulator.stats()
    result = asyncio.run(_generate(host, port, request, seconds, max_requests))
    after = emulator.stats()
    result["tcp_connections"] = after["tcp_connections"] - before["tcp_connections"]
    result["single_hook_client_rps"] = hook_rps
    rps = float(result["rps"])
    return [
        Row(
            figure=f"6 emulator: session_exists, {CLIENTS} clients",
            ours=rps,
            reference=hook_rps,
            reference_name="one busy hook client",
            unit="req/s",
            ratio=rps / hook_rps,
            target=f">= {TARGET_RPS:,.0f} req/s, no errors",
            met=rps >= TARGET_RPS and result["errors"] == 0,
            details=result,
        )
    ]
