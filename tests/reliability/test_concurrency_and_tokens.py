"""Fifty threads on one hook, tokens that expire under them, and token answers that OAuth2 allows but few send.

Every call goes to the emulator over real HTTP; token answers the emulator does not produce itself
(``expires_in: 0``, no ``refresh_token``) are injected as a fault that replaces the body of one token
answer, carrying a real token the emulator issued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._support import TALLY, requests_of, wait_until

THREADS = 50


def _hammer(hook: CandelaHook, during: Callable[[], Any]) -> list[BaseException]:
    """``THREADS`` threads calling ``hook`` until ``during()``, run meanwhile, returns.  Returns the errors."""
    errors: list[BaseException] = []
    stop = threading.Event()
    barrier = threading.Barrier(THREADS)

    def worker() -> None:
        barrier.wait()
        while not stop.is_set():
            try:
                hook.user_has_slot()
            except BaseException as exc:  # every failure is a finding: collect it
                errors.append(exc)

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker) for _ in range(THREADS)]
        try:
            during()
        finally:
            stop.set()
        for future in futures:
            future.result()
    return errors


def _answered(candela: CandelaEmulator) -> int:
    return requests_of(candela.stats(), "GET /slot/user_has_slot").get("200", 0)


def test_fifty_threads_one_grant_per_expiry_no_failure_no_pool_overflow(
    candela: CandelaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with TALLY.fault("50 threads on one hook, tokens revoked twice under them"):
        caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
        with CandelaHook() as hook:
            hook.user_has_slot()
            before = candela.stats()

            def more_calls() -> None:
                calls = _answered(candela)
                wait_until(lambda: _answered(candela) >= calls + THREADS)

            def revoke_twice() -> None:
                for revocations in (1, 2):
                    more_calls()  # the threads call with a live token
                    candela.expire_tokens()
                    wait_until(lambda n=revocations: candela.stats()["token_grants"]["refresh"] >= n)  # renewed
                more_calls()  # and call on with the new one

            errors = _hammer(hook, revoke_twice)
            grants = dict(hook._auth.grants)
        stats = candela.stats()
        assert errors == [], f"{len(errors)} calls failed, first: {errors[:1]}"
        assert grants == {"password": 1, "refresh": 2}, "one refresh per revocation (single flight)"
        assert [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()] == []
        opened = stats["tcp_connections"] - before["tcp_connections"]
        assert opened <= THREADS, f"{opened} TCP connections for {THREADS} threads"


def test_fifty_threads_with_tokens_living_one_second(candela: CandelaEmulator) -> None:
    with TALLY.fault("50 threads on one hook, 1 s tokens"):
        candela.configure(token_ttl=1)
        try:
            with CandelaHook() as hook:
                began = time.monotonic()
                # until the 1 s token has been renewed four times (about 2 s, at half its lifetime)
                errors = _hammer(hook, lambda: wait_until(lambda: hook._auth.grants["refresh"] >= 4, timeout=60))
                elapsed = time.monotonic() - began
                grants = dict(hook._auth.grants)
        finally:
            candela.restore_config()
        assert errors == [], f"{len(errors)} calls failed, first: {errors[:1]}"
        # Renewed at half the lifetime: about two grants a second, never one per thread.
        assert grants["password"] == 1
        assert grants["refresh"] <= elapsed / 0.5 + 2, grants


def _first_call_together(barrier: threading.Barrier) -> Callable[[CandelaHook], bool]:
    """``hook.user_has_slot()`` once ``barrier``'s parties are all waiting: the threads make it at the same moment."""

    def call(hook: CandelaHook) -> bool:
        barrier.wait(timeout=30)
        return hook.user_has_slot()

    return call


def test_fifty_threads_making_the_first_call_of_a_new_hook_make_one_grant(candela: CandelaEmulator) -> None:
    with TALLY.fault("50 threads making the first call of a new hook"):
        call = _first_call_together(threading.Barrier(THREADS))
        with CandelaHook() as hook, ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(call, [hook] * THREADS))
        assert answers == [False] * THREADS
        assert candela.stats()["token_grants"] == {"password": 1, "refresh": 0}


def test_fifty_triggers_making_the_first_call_of_the_shared_hook_make_one_grant(
    candela: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_candela.hooks._auth import TokenManager
    from airflow_provider_candela.triggers import _shared
    from airflow_provider_candela.triggers._shared import HOOKS, with_hook

    # The triggerer's shared hook has read its connection when it is handed out: what the first calls still
    # create is the token manager, in microseconds.  Slowed down here, so that threads creating it without a
    # lock would each make one (and a grant each), as they do on a busy triggerer now and then.
    create = TokenManager.__init__

    def slow_create(self: TokenManager, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        create(self, *args, **kwargs)

    monkeypatch.setattr(TokenManager, "__init__", slow_create)
    with TALLY.fault("50 trigger calls making the first call of the triggerer's shared hook"):
        call = _first_call_together(threading.Barrier(THREADS))

        async def fifty() -> list[bool]:
            return await asyncio.gather(*(with_hook("candela_default", call) for _ in range(THREADS)))

        # Enough threads for all fifty calls at once: the triggers' own pool, sized by [candela] trigger_threads.
        monkeypatch.setenv("AIRFLOW__CANDELA__TRIGGER_THREADS", str(THREADS))
        _shared._executor.cache_clear()
        try:
            answers = asyncio.run(asyncio.wait_for(fifty(), 60))
        finally:
            _shared._executor().shutdown(wait=False)
            _shared._executor.cache_clear()
        assert answers == [False] * THREADS
        assert candela.stats()["token_grants"] == {"password": 1, "refresh": 0}
        assert HOOKS.users("candela_default") == 0


def _real_token(emulator: CandelaEmulator) -> str:
    """A token the emulator issued (password grant, as the hook would make it)."""
    answer = requests.post(
        emulator.token_url,
        data={
            "grant_type": "password",
            "username": emulator.username,
            "password": emulator.password,
            "scope": "openid client groups offline_access",
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
        },
        timeout=10,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


@pytest.mark.parametrize("expires_in", [0, -5])
def test_a_token_without_a_known_lifetime_is_not_renewed_before_every_call(
    candela: CandelaEmulator, expires_in: int
) -> None:
    with TALLY.fault(f"token answer with expires_in={expires_in}"):
        token = _real_token(candela)
        body = {"access_token": token, "refresh_token": "r-unused", "expires_in": expires_in, "token_type": "Bearer"}
        candela.add_fault(match="POST /oauth2/token", status=200, body=body)
        with CandelaHook() as hook:
            for _ in range(20):
                hook.user_has_slot()
            assert hook._auth.grants == {"password": 1, "refresh": 0}


def test_a_token_answer_without_refresh_token_renews_with_the_password_grant(candela: CandelaEmulator) -> None:
    with TALLY.fault("token answer without refresh_token"):
        token = _real_token(candela)
        candela.add_fault(
            match="POST /oauth2/token",
            status=200,
            body={"access_token": token, "expires_in": 3600, "token_type": "Bearer"},
        )
        with CandelaHook() as hook:
            assert hook.user_has_slot() is False
            candela.expire_tokens()
            assert hook.user_has_slot() is False  # 401, then a new password grant, then the replay
            assert hook._auth.grants == {"password": 2, "refresh": 0}
