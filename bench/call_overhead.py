"""Figure 2, per-call overhead: ``session_exists`` through ``CandelaHook``, bare ``requests`` and the official SDK.

All three ask the same emulator whether the same (existing) session exists, each over one keep-alive
connection with a token obtained beforehand:

* hook: ``CandelaHook.session_exists`` (validation, retries wrapper, headers, typed parsing);
* bare (the floor): ``requests.Session.get`` with the bearer token, ``raise_for_status``, ``.json()``;
* SDK: ``finbourne-candela-sdk==0.1.173`` ``SessionsApi.session_exists`` in its own venv, a child
  process that times its own loops (see ``sdk_loop.py``);
* hook, traced (2c): a second hook made while ``[traces] otel_on`` is set, with an OpenTelemetry SDK
  tracer provider in the process (a span per exchange, recorded, not exported), against the hook with
  tracing off.

A round is ``calls`` calls of each candidate, in a shuffled order.  The ratio is the median of the
per-round ratios (paired: both candidates ran within the same fraction of a second, so a burst of
load from other processes hits both); the per-call times shown are the medians over the rounds.
Client CPU per call is reported for information.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any, Final

import requests

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import BENCH_DIR, Row, cpu_seconds, interleave, log, median, paired_ratio
from bench.sdk_env import SDK_REQUIREMENT, sdk_python

__all__ = ["password_grant", "run"]

HOOK_VS_BARE_TARGET: Final = 1.0
HOOK_VS_SDK_TARGET: Final = 1.2
#: Most a call may cost more with tracing on (a span per exchange) than off.
TRACING_ON_TARGET: Final = 1.05
_TOKEN_SCOPE: Final = "openid client groups offline_access"


def password_grant(session: requests.Session, emulator: CandelaEmulator) -> str:
    """An access token from the emulator's OAuth2 password grant (as the hook and the SDK obtain theirs)."""
    resp = session.post(
        emulator.token_url,
        data={
            "grant_type": "password",
            "username": emulator.username,
            "password": emulator.password,
            "scope": _TOKEN_SCOPE,
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
        },
        timeout=10,
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


class SdkLoop:
    """The SDK loop child process: one ``session_exists`` round per :meth:`round` call."""

    def __init__(self, emulator: CandelaEmulator, scope: str, identifier: str) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("FBN_") and key.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env.update(
            FBN_TOKEN_URL=emulator.token_url,
            FBN_CANDELA_URL=emulator.url,
            FBN_USERNAME=emulator.username,
            FBN_PASSWORD=emulator.password,
            FBN_CLIENT_ID=emulator.client_id,
            FBN_CLIENT_SECRET=emulator.client_secret,
        )
        env.pop("VIRTUAL_ENV", None)
        self.process = subprocess.Popen(
            [str(sdk_python()), str(BENCH_DIR / "sdk_loop.py"), scope, identifier],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self._read()
        if ready.get("result") is not True:
            raise RuntimeError(f"the SDK loop did not find the session: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the SDK loop ended (exit code {self.process.wait(10)})")
        result: dict[str, Any] = json.loads(line)
        return result

    def round(self, calls: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def run(emulator: CandelaEmulator, *, calls: int = 50, rounds: int = 30, warmup: int = 2) -> list[Row]:
    from airflow_provider_candela.hooks.candela import CandelaHook

    emulator.reset()
    emulator.configure(slot_startup_seconds=0)
    hook = CandelaHook()
    hook.ensure_slot()
    oid = hook.start_session("default/demo-pipeline", "default/demo-model").obj_id
    if not hook.session_exists(oid):
        raise RuntimeError(f"session {oid} should exist")

    bare = requests.Session()
    headers = {"Authorization": f"Bearer {password_grant(bare, emulator)}"}
    url = emulator.url + "/sessions/exists"
    params = {"scope": oid.scope, "identifier": oid.identifier}

    def bare_call() -> bool:
        resp = bare.get(url, params=params, headers=headers, timeout=10)
        resp.raise_for_status()
        return resp.json() is True

    traced = _traced_hook()
    if not traced.session_exists(oid):
        raise RuntimeError(f"session {oid} should exist")
    sdk = SdkLoop(emulator, oid.scope, oid.identifier)
    cpu: dict[str, list[float]] = {"hook": [], "bare": [], "sdk": [], "traced": []}

    def in_process(name: str, call: Callable[[], bool]) -> Callable[[], float]:
        def sample() -> float:
            c0, w0 = cpu_seconds(), time.perf_counter()
            ok = all([call() for _ in range(calls)])
            wall, used = time.perf_counter() - w0, cpu_seconds() - c0
            if not ok:
                raise RuntimeError(f"{name}: session_exists answered false")
            cpu[name].append(used / calls)
            return wall / calls

        return sample

    def sdk_sample() -> float:
        result = sdk.round(calls)
        if result.get("result") is not True:
            raise RuntimeError(f"SDK: session_exists answered {result.get('result')!r}")
        cpu["sdk"].append(float(result["cpu"]) / calls)
        return float(result["wall"]) / calls

    log(f"figure 2: {warmup + rounds} rounds of {calls} session_exists calls x hook / bare requests / SDK")
    before = emulator.stats()
    try:
        samples = interleave(
            {
                "hook": in_process("hook", lambda: hook.session_exists(oid)),
                "traced": in_process("traced", lambda: traced.session_exists(oid)),
                "bare": in_process("bare", bare_call),
                "sdk": sdk_sample,
            },
            rounds=rounds,
            warmup=warmup,
        )
    finally:
        sdk.close()
        hook.close()
        traced.close()
        bare.close()
    after = emulator.stats()
    us = {name: median(values) * 1e6 for name, values in samples.items()}
    cpu_us = {name: median(values[warmup:]) * 1e6 for name, values in cpu.items()}
    details: dict[str, Any] = {
        "metric": "median wall microseconds per call over rounds (emulator on loopback)",
        "calls_per_round": calls,
        "rounds": rounds,
        "per_call_us": us,
        "client_cpu_us_per_call_info": cpu_us,
        "hook_overhead_us_over_bare": us["hook"] - us["bare"],
        "samples_us": {name: [round(v * 1e6, 1) for v in values] for name, values in samples.items()},
        "sdk": SDK_REQUIREMENT,
        "tcp_connections_during_rounds": after["tcp_connections"] - before["tcp_connections"],
    }
    ratio_bare = paired_ratio(samples["hook"], samples["bare"])
    ratio_sdk = paired_ratio(samples["hook"], samples["sdk"])
    ratio_traced = paired_ratio(samples["traced"], samples["hook"])
    details["ratio_of_medians_info"] = {"hook/bare": us["hook"] / us["bare"], "hook/sdk": us["hook"] / us["sdk"]}
    return [
        Row(
            figure="2a per call: hook vs bare requests",
            ours=us["hook"],
            reference=us["bare"],
            reference_name="bare requests.Session",
            unit="us/call",
            ratio=ratio_bare,
            target=f"<= {HOOK_VS_BARE_TARGET}x",
            met=ratio_bare <= HOOK_VS_BARE_TARGET,
            details=details,
        ),
        Row(
            figure="2b per call: hook vs official SDK",
            ours=us["hook"],
            reference=us["sdk"],
            reference_name="finbourne-candela-sdk 0.1.173",
            unit="us/call",
            ratio=ratio_sdk,
            target=f"<= {HOOK_VS_SDK_TARGET}x",
            met=ratio_sdk <= HOOK_VS_SDK_TARGET,
            details={"see": "2a"},
        ),
        Row(
            figure="2c per call: tracing on vs off",
            ours=us["traced"],
            reference=us["hook"],
            reference_name="hook, tracing off",
            unit="us/call",
            ratio=ratio_traced,
            target=f"<= {TRACING_ON_TARGET}x",
            met=ratio_traced <= TRACING_ON_TARGET,
            details={"see": "2a"},
        ),
    ]


def _traced_hook() -> Any:
    """A hook whose calls make spans: made while ``[traces] otel_on`` is set, with an SDK tracer provider."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from airflow_provider_candela.hooks.candela import CandelaHook

    trace.set_tracer_provider(TracerProvider())
    saved = os.environ.get("AIRFLOW__TRACES__OTEL_ON")
    os.environ["AIRFLOW__TRACES__OTEL_ON"] = "True"
    try:
        hook = CandelaHook()
        if hook.telemetry.tracer is None:  # read now, while tracing is on
            raise RuntimeError("tracing did not turn on for the traced hook")
        return hook
    finally:
        if saved is None:
            os.environ.pop("AIRFLOW__TRACES__OTEL_ON", None)
        else:
            os.environ["AIRFLOW__TRACES__OTEL_ON"] = saved
