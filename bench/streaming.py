"""Figure 4, streaming: time to the first agent event, and memory over a 100,000-event agent stream.

Time to first event: the emulator waits ``first_delay`` seconds before each event of a
100,000-event answer.  Side by side (interleaved, medians of paired rounds), the hook's
``submit_prompt_to_agent`` is read until its first ``Event``, and a raw socket sends the same request
and reads until the first event line has arrived: that is when the server sent it (loopback, no
parsing).  The lag is ``hook - raw``; both streams are closed after the first event.

Memory: fresh child processes read a whole 1,000- and 100,000-event stream (the emulator yields to
its event loop between events, ``event_delay`` = 0.2 ms, so every event is written on its own),
keeping only a count, while sampling their resident set size every 1,000 events (a control run keeps
every event, to show that the measure sees growth).  Growth = peak RSS during the stream minus RSS
before it; the figure is growth(100,000) - growth(1,000), for the hook and for a
bare ``requests`` ``iter_lines`` + ``json.loads`` reader (the reference).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Final

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import Row, interleave, log, median, paired_ratio, peak_rss_mb, private_stdout, rss_mb

__all__ = ["run"]

TTFE_TARGET_MS: Final = 50.0
MEMORY_TARGET_MB: Final = 20.0
PROMPT: Final = "Stream a long answer"


def _raw_first_event(host: str, port: int, token: str, body: bytes) -> float:
    """Seconds from sending the request to the arrival of the first complete event line (raw socket)."""
    request = (
        f"POST /session/agent_submit HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request)
        buffer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"the stream ended before its first event: {buffer[:300]!r}")
            buffer += data
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            if not buffer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"agent_submit failed: {buffer[:300]!r}")
            start = head_end + 4
            if b"transfer-encoding: chunked" in buffer[:head_end].lower():
                size_end = buffer.find(b"\r\n", start)
                if size_end < 0:
                    continue
                start = size_end + 2
            if buffer.find(b"\n", start) >= 0:
                return time.perf_counter() - started


def _time_to_first_event(emulator: CandelaEmulator, session_id: str, rounds: int, first_delay: float) -> dict[str, Any]:
    import requests

    from airflow_provider_candela.hooks.candela import CandelaHook
    from bench.call_overhead import password_grant

    emulator.configure(agent_chat_events=100_000, event_delay=first_delay)
    hook = CandelaHook()
    with requests.Session() as session:
        token = password_grant(session, emulator)
    body = json.dumps({"prompt": PROMPT, "session_id": session_id, "scope": "default"}).encode()

    def hook_sample() -> float:
        started = time.perf_counter()
        stream = hook.submit_prompt_to_agent(f"default/{session_id}", PROMPT)
        try:
            event = next(stream)
            elapsed = time.perf_counter() - started
        finally:
            stream.close()  # type: ignore[attr-defined]
        if event.event_type != "user":
            raise RuntimeError(f"unexpected first event {event!r}")
        return elapsed

    def raw_sample() -> float:
        return _raw_first_event(emulator.host, int(emulator.port or 0), token, body)

    try:
        samples = interleave({"hook": hook_sample, "raw": raw_sample}, rounds=rounds, warmup=1)
    finally:
        hook.close()
    lags = [(h - r) * 1e3 for h, r in zip(samples["hook"], samples["raw"], strict=True)]
    return {
        "first_delay_s": first_delay,
        "hook_ms": median(samples["hook"]) * 1e3,
        "raw_ms": median(samples["raw"]) * 1e3,
        "lag_ms": median(lags),
        "lag_ms_max": max(lags),
        "ratio": paired_ratio(samples["hook"], samples["raw"]),
        "samples_hook_ms": [round(v * 1e3, 2) for v in samples["hook"]],
        "samples_raw_ms": [round(v * 1e3, 2) for v in samples["raw"]],
    }


def _memory_child(reader: str, session_id: str) -> dict[str, Any]:
    """Runs in a fresh process: read one whole stream, report RSS growth (MB) and the event count."""
    import gc

    import requests

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import Event

    hook = CandelaHook()
    hook.session_exists(f"default/{session_id}")  # token, connection, parsing: warm before measuring
    Event.model_validate({"event_type": "chat", "content": "warm-up"})
    token = "Bearer " + os.environ["CANDELA_BENCH_TOKEN"]
    session = requests.Session()
    url = hook.config.base_url + "/session/agent_submit"
    body = {"prompt": PROMPT, "session_id": session_id, "scope": "default"}
    gc.collect()
    before, peak = rss_mb(), rss_mb()
    started = time.perf_counter()
    count = 0
    kept: list[Event] = []
    if reader in ("hook", "hook-keep"):
        for event in hook.submit_prompt_to_agent(f"default/{session_id}", PROMPT):
            count += 1
            if reader == "hook-keep":
                kept.append(event)
            if count % 1000 == 0:
                peak = max(peak, rss_mb())
    else:
        with session.post(url, json=body, headers={"Authorization": token}, stream=True, timeout=(10, 300)) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line:
                    json.loads(line)
                    count += 1
                    if count % 1000 == 0:
                        peak = max(peak, rss_mb())
    elapsed = time.perf_counter() - started
    peak = max(peak, rss_mb())
    hook.close()
    session.close()
    return {
        "reader": reader,
        "events": count,
        "seconds": elapsed,
        "rss_before_mb": before,
        "growth_mb": peak - before,
        "ru_maxrss_mb": peak_rss_mb(),
    }


def _memory_sample(emulator: CandelaEmulator, reader: str, events: int, session_id: str, token: str) -> dict[str, Any]:
    emulator.configure(agent_chat_events=events - 1)  # + the `user` echo
    proc = subprocess.run(
        [sys.executable, "-m", "bench.streaming", "--child", reader, session_id],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "CANDELA_BENCH_TOKEN": token},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {reader} memory child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["events"] != events:
        raise RuntimeError(f"the {reader} reader got {result['events']} events, expected {events}")
    return result


def run(
    emulator: CandelaEmulator,
    *,
    rounds: int = 9,
    events: int = 100_000,
    small: int = 1_000,
    first_delay: float = 0.05,
    event_delay: float = 0.0002,
    repeats: int = 2,
) -> list[Row]:
    import requests

    from airflow_provider_candela.hooks.candela import CandelaHook
    from bench.call_overhead import password_grant

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    with CandelaHook() as hook:
        hook.ensure_slot()
        session_id = hook.start_session("default/demo-agent", "default/demo-model").obj_id.identifier
    log(f"figure 4: time to first event ({rounds} rounds, {first_delay * 1e3:g} ms before each event)")
    ttfe = _time_to_first_event(emulator, session_id, rounds, first_delay)
    log(f"figure 4: memory of {small:,}- and {events:,}-event streams (hook and bare reader, x{repeats})")
    emulator.configure(event_delay=event_delay)
    with requests.Session() as bare:
        token = password_grant(bare, emulator)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for reader in ("hook", "bare"):
            for size in (small, events):
                runs.setdefault((reader, size), []).append(_memory_sample(emulator, reader, size, session_id, token))
    # Control: a caller keeping every event (``list(stream)``) must show growth, or the measure is blind.
    control = _memory_sample(emulator, "hook-keep", events, session_id, token)
    growth = {key: max(r["growth_mb"] for r in results) for key, results in runs.items()}
    diff = {reader: growth[(reader, events)] - growth[(reader, small)] for reader in ("hook", "bare")}
    seconds = {f"{reader} {size}": median([r["seconds"] for r in results]) for (reader, size), results in runs.items()}
    memory_details: dict[str, Any] = {
        "metric": f"peak RSS growth while reading a stream, MB: {events:,} events minus {small:,} events (max of runs)",
        "event_delay_s": event_delay,
        "growth_mb": {f"{reader} {size}": value for (reader, size), value in growth.items()},
        "stream_seconds_info": seconds,
        "control_keep_all_events_growth_mb": control["growth_mb"],
        "runs": {f"{reader} {size}": results for (reader, size), results in runs.items()},
    }
    return [
        Row(
            figure="4a stream: first event after server send",
            ours=ttfe["lag_ms"],
            reference=ttfe["raw_ms"],
            reference_name="raw socket time to first event",
            unit="ms",
            ratio=ttfe["ratio"],
            target=f"lag <= {TTFE_TARGET_MS:g} ms",
            met=ttfe["lag_ms"] <= TTFE_TARGET_MS,
            details={"metric": "hook time to first event minus raw socket (median of paired rounds)", **ttfe},
        ),
        Row(
            figure=f"4b stream: memory {small // 1000}k -> {events // 1000}k events",
            ours=diff["hook"],
            reference=diff["bare"],
            reference_name="bare requests iter_lines",
            unit="MB",
            ratio=None,
            target=f"< {MEMORY_TARGET_MB:g} MB",
            met=diff["hook"] < MEMORY_TARGET_MB,
            details=memory_details,
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        channel = private_stdout()
        print(json.dumps(_memory_child(sys.argv[2], sys.argv[3])), file=channel)
    else:
        sys.exit("usage: python -m bench.streaming --child hook|bare SESSION_ID (run by bench.run)")
