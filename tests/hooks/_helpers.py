"""Helpers of the hook tests."""

from __future__ import annotations

import json
import socket
from typing import Any, TypeVar

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import wait_until  # noqa: F401 (re-exported to the tests)

T = TypeVar("T")

AGENT = "default/demo-agent"
PIPELINE = "default/demo-pipeline"
MODEL = "default/demo-model"


def fast(hook: CandelaHook) -> CandelaHook:
    """Short backoff waits so that retry tests run in milliseconds (Retry-After is still honoured)."""
    hook.retry_wait_base = 0.01
    hook.retry_wait_max = 0.05
    return hook


def record_waits(hook: CandelaHook) -> list[float]:
    """The waits ``hook`` asks for between attempts, recorded instead of slept.

    The retry rules (Retry-After, its cap, the deadline) are checked on the waits they choose, with no real
    waiting: the hook's sleep (its own ``_sleep``, which a cancel cuts short) is replaced, as time is the one
    thing the emulator cannot speed up.
    """
    waits: list[float] = []
    hook._sleep = waits.append  # type: ignore[method-assign]
    return waits


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def requests_of(stats: dict[str, Any], route: str) -> dict[str, int]:
    """``{"<status>": n}`` of one route in ``/_emulator/stats``."""
    result: dict[str, int] = stats["requests"].get(route, {})
    return result


def conn_json(**fields: Any) -> str:
    return json.dumps({"conn_type": "candela", **fields})
