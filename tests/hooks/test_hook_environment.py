"""What the hook takes from the process environment: a ~/.netrc never replaces the bearer token,
and proxy variables still apply (the fast path that skips the environment is only taken without them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator


def test_a_netrc_for_the_candela_host_does_not_replace_the_bearer_token(
    hook: CandelaHook, emulator: CandelaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {urlparse(emulator.url).hostname} login someone password not-a-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # forces the path that still reads the environment
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    assert hook.user_has_slot() is False  # a Basic header from .netrc would have been a 401
    assert hook.get_conn().trust_env is True, "with proxy variables set, requests must keep reading them"


def test_without_proxy_variables_the_environment_is_read_once(
    hook: CandelaHook, emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert hook.user_has_slot() is False
    assert hook.get_conn().trust_env is False
