"""Shared helpers of the benchmarks: result rows, statistics, interleaving, the emulator, process metrics.

Every figure is a ratio of candidates measured side by side in one run: rounds interleave the
candidates in a shuffled order, the first ``warmup`` rounds are dropped and medians are reported.
Absolute numbers are printed for information only (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from airflow_provider_candela.testing import CandelaEmulator

__all__ = [
    "BENCH_DIR",
    "ROOT",
    "Row",
    "airflow_env",
    "bench_emulator",
    "cpu_seconds",
    "dump_json",
    "interleave",
    "log",
    "median",
    "paired_ratio",
    "peak_rss_mb",
    "private_stdout",
    "request_count",
    "rss_mb",
    "stats_delta",
    "wait_for",
]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


@dataclass
class Row:
    """One line of the result table: our figure against its reference, and the target verdict.

    :param figure: short name, e.g. ``"2a per-call: hook vs bare requests"``.
    :param ours: our value, in ``unit``.
    :param reference: the reference value (same unit), or None when the reference is the target itself.
    :param reference_name: what the reference is (``"bare requests"``).
    :param unit: unit of ``ours`` and ``reference``.
    :param ratio: ``ours / reference`` when both exist (the figure that matters on a noisy machine).
    :param target: the target, in words.
    :param met: whether the target is met.
    :param details: every raw number behind the row (samples, medians, absolute times).
    :param note: one line printed under the table (figures reported without a target).
    """

    figure: str
    ours: float
    reference: float | None
    reference_name: str
    unit: str
    ratio: float | None
    target: str
    met: bool
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    if not values:
        raise ValueError("no samples")
    return float(statistics.median(values))


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-round ratios of two interleaved candidates (robust to slow load swings)."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


def interleave(
    candidates: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    warmup: int = 1,
    seed: int = 6,
) -> dict[str, list[float]]:
    """Run every candidate once per round, in a shuffled order; drop the warm-up rounds.

    :param candidates: name -> callable returning one sample (e.g. seconds per call).
    :return: name -> the samples of the measured rounds.
    """
    rng = random.Random(seed)
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            value = candidates[name]()
            if index >= warmup:
                samples[name].append(value)
    return samples


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds() -> float:
    """CPU seconds (user + system) used by this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """Current resident set size of this process, in MB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def request_count(stats: Mapping[str, Any], route: str, status: str | None = None) -> int:
    """Requests the emulator counted for ``route`` (``"GET /sessions/exists"``), of one status or all."""
    by_status: Mapping[str, int] = stats.get("requests", {}).get(route, {})
    if status is not None:
        return int(by_status.get(status, 0))
    return sum(int(n) for n in by_status.values())


def stats_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Requests per route, token grants and TCP connections counted between two ``stats()`` snapshots."""
    routes: dict[str, int] = {}
    for route in after.get("requests", {}):
        count = request_count(after, route) - request_count(before, route)
        if count:
            routes[route] = count
    grants = {
        kind: int(n) - int(before.get("token_grants", {}).get(kind, 0))
        for kind, n in after.get("token_grants", {}).items()
    }
    return {
        "requests": routes,
        "requests_total": int(after["requests_total"]) - int(before["requests_total"]),
        "token_grants": sum(grants.values()),
        "token_grants_by_kind": grants,
        "tcp_connections": int(after["tcp_connections"]) - int(before["tcp_connections"]),
    }


@contextmanager
def airflow_env() -> Iterator[dict[str, str]]:
    """An isolated Airflow home (no example DAGs, no ``~/airflow``) for this process and its children."""
    home = tempfile.mkdtemp(prefix="candela-bench-airflow-")
    saved = {key: os.environ.get(key) for key in ("AIRFLOW_HOME", "AIRFLOW__CORE__LOAD_EXAMPLES")}
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    try:
        yield dict(os.environ)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def bench_emulator(**flags: Any) -> Iterator[CandelaEmulator]:
    """The emulator on a free loopback port, with ``AIRFLOW_CONN_CANDELA_DEFAULT`` pointing at it."""
    emulator = CandelaEmulator(**flags).start()
    saved = os.environ.get("AIRFLOW_CONN_CANDELA_DEFAULT")
    os.environ["AIRFLOW_CONN_CANDELA_DEFAULT"] = emulator.connection_json()
    try:
        yield emulator
    finally:
        emulator.stop()
        if saved is None:
            os.environ.pop("AIRFLOW_CONN_CANDELA_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_CANDELA_DEFAULT"] = saved


def private_stdout() -> TextIO:
    """Keep the real stdout for this process's own output; send fd 1 (and ``print``) to stderr.

    Airflow's structlog writes its log lines to stdout: in a child whose stdout is a pipe read only
    for results, they would mix with the results or fill the pipe and block the child.
    """
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return channel


def log(message: str) -> None:
    """Progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dump_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a ``.tmp`` file renamed over the target)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
