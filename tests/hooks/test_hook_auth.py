"""Authentication: password grant, refresh grant, personal access token, 401 replay, token endpoint faults, masking."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, redact

from airflow_provider_candela.exceptions import CandelaApiError, CandelaAuthError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import closed_port, fast, requests_of, wait_until

MakeHook = Callable[..., CandelaHook]


def grants(emulator: CandelaEmulator) -> dict[str, int]:
    result: dict[str, int] = emulator.stats()["token_grants"]
    return result


def test_password_grant_once_for_many_calls(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    for _ in range(5):
        assert hook.user_has_slot() is False
    assert grants(emulator) == {"password": 1, "refresh": 0}
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 5}


def test_refresh_grant_when_the_token_is_about_to_expire(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(token_ttl=1)
    hook.user_has_slot()
    assert grants(emulator) == {"password": 1, "refresh": 0}
    wait_until(hook._auth.needs_renewal, timeout=60)
    # The renewed token lives long: on a busy machine a 1 s one could expire again before its call arrives.
    emulator.configure(token_ttl=3600)
    hook.user_has_slot()
    assert grants(emulator) == {"password": 1, "refresh": 1}
    # Renewed before the API could refuse it: no 401 was needed.
    assert "401" not in requests_of(emulator.stats(), "GET /slot/user_has_slot")


def test_refused_refresh_falls_back_to_the_password_grant(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(token_ttl=1)
    hook.user_has_slot()
    wait_until(hook._auth.needs_renewal, timeout=60)
    emulator.add_fault(
        match="POST /oauth2/token",
        status=400,
        body={"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."},
    )
    assert hook.user_has_slot() is False
    assert grants(emulator) == {"password": 2, "refresh": 0}
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {"200": 2, "400": 1}


def test_401_re_authenticates_once_and_replays(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    emulator.expire_tokens()
    assert hook.user_has_slot() is False
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 2, "401": 1}
    assert grants(emulator) == {"password": 1, "refresh": 1}


def test_401_after_re_authentication_is_an_auth_error(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    hook.user_has_slot()
    emulator.add_fault(match="GET /slot/user_has_slot", status=401, count=2, body={"detail": "Not authenticated"})
    with pytest.raises(CandelaAuthError) as info:
        hook.user_has_slot()
    message = str(info.value)
    assert message.startswith("Candela rejected GET /slot/user_has_slot (401): Not authenticated.")
    assert "even after re-authenticating" in message
    assert "token_url, client_id and client_secret" in message
    assert info.value.status == 401 and info.value.path == "/slot/user_has_slot"
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"200": 1, "401": 2}  # one replay only


def test_personal_access_token(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(pat=True)
    assert hook.user_has_slot() is False
    hook.assign_slot()
    assert emulator.stats()["slots"][emulator.username] is not None  # the PAT acts as the primary user
    assert grants(emulator) == {"password": 0, "refresh": 0}
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {}


def test_refused_personal_access_token(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(pat=True, extra={"access_token": "not-the-pat-value"})
    with pytest.raises(CandelaAuthError) as info:
        hook.user_has_slot()
    message = str(info.value)
    assert "(401)" in message
    assert "extra access_token of connection" in message and "renew it" in message
    assert "not-the-pat-value" not in message
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {"401": 1}  # nothing to re-authenticate with


def test_personal_access_token_wins_over_oauth_fields(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"access_token": emulator.access_token})
    hook.user_has_slot()
    assert grants(emulator) == {"password": 0, "refresh": 0}


@pytest.mark.parametrize(
    ("fields", "extra"),
    [({"password": "wrong-password-123"}, {}), ({}, {"client_secret": "wrong-secret-456"})],
    ids=["bad-password", "bad-client-secret"],
)
def test_invalid_credentials(
    make_hook: MakeHook, emulator: CandelaEmulator, fields: dict[str, str], extra: dict[str, str]
) -> None:
    hook = make_hook(conn_id="candela_badcreds", extra=extra, **fields)
    with pytest.raises(CandelaAuthError) as info:
        hook.user_has_slot()
    message = str(info.value)
    assert f"The token endpoint {emulator.token_url} refused the password grant" in message
    assert "Check login, password and the extras client_id, client_secret and token_url of connection" in message
    assert "'candela_badcreds'" in message
    for secret in ("wrong-password-123", "wrong-secret-456", emulator.password, emulator.client_secret):
        assert secret not in message
    # Refused credentials are not retried, and the API was never called.
    assert sum(requests_of(emulator.stats(), "POST /oauth2/token").values()) == 1
    assert requests_of(emulator.stats(), "GET /slot/user_has_slot") == {}
    ok, reason = hook.test_connection()
    assert ok is False and "refused the password grant" in reason and "wrong-" not in reason


@pytest.mark.parametrize("char", ["+", "&", "%", "=", "é"], ids=["plus", "ampersand", "percent", "equals", "e-acute"])
def test_credentials_with_form_metacharacters_authenticate(monkeypatch: pytest.MonkeyPatch, char: str) -> None:
    # The character in the login, the password, the client id and the client secret; "41" after it, so that
    # a "%" sent unencoded would arrive as "A".  The shared emulator's client is fixed when it starts: this
    # test starts its own (the emulator compares credentials as UTF-8 bytes, so non-ASCII ones can match).
    login, password = f"ops{char}41-airflow@acme.com", f"pass {char}41 word"
    client_id, client_secret = f"client{char}41", f"secret{char}41"
    with CandelaEmulator(
        username=login, password=password, client_id=client_id, client_secret=client_secret, token_ttl=1
    ) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_CANDELA_METACHARACTERS", emulator.connection_json())
        with fast(CandelaHook("candela_metacharacters")) as hook:
            assert hook.user_has_slot() is False  # password grant: everything in the form body
            wait_until(hook._auth.needs_renewal, timeout=60)
            emulator.configure(token_ttl=3600)  # the renewed token outlives its call, however busy the machine
            assert hook.user_has_slot() is False  # refresh grant: the client as HTTP Basic auth
        assert grants(emulator) == {"password": 1, "refresh": 1}
        assert requests_of(emulator.stats(), "POST /oauth2/token") == {"200": 2}


def test_token_endpoint_429_honours_retry_after(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /oauth2/token", status=429, retry_after="1")
    started = time.monotonic()
    assert hook.user_has_slot() is False
    assert time.monotonic() - started >= 0.9
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {"429": 1, "200": 1}


def test_token_endpoint_429_with_an_http_date(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(
        match="POST /oauth2/token", status=429, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True)
    )
    started = time.monotonic()
    hook.user_has_slot()
    assert time.monotonic() - started >= 0.8
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {"429": 1, "200": 1}


def test_token_endpoint_5xx_is_retried_with_backoff(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.add_fault(match="POST /oauth2/token", status=500, count=2)
    assert hook.user_has_slot() is False
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {"500": 2, "200": 1}


def test_token_endpoint_failing_until_max_retries(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"max_retries": 2})
    emulator.add_fault(match="POST /oauth2/token", status=503, count=-1)
    with pytest.raises(CandelaApiError) as info:
        hook.user_has_slot()
    assert not isinstance(info.value, CandelaAuthError | AirflowFailException), "a failing IdP is worth a task retry"
    assert "refused the password grant (503)" in str(info.value)
    assert "gave up after 3 attempts" in str(info.value)
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {"503": 3}


def test_token_endpoint_down(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    token_url = f"http://127.0.0.1:{closed_port()}/oauth2/token"
    hook = make_hook(extra={"token_url": token_url, "max_retries": 1})
    with pytest.raises(CandelaApiError) as info:
        hook.user_has_slot()
    assert not isinstance(info.value, CandelaAuthError | AirflowFailException), "an unreachable IdP is transient"
    message = str(info.value)
    assert f"Could not reach the Candela token endpoint {token_url}" in message
    assert "check the extra token_url (and proxy)" in message
    assert "gave up after 2 attempts" in message
    assert emulator.stats()["requests_total"] == 0


def test_tokens_are_masked_as_soon_as_obtained(hook: CandelaHook, emulator: CandelaEmulator) -> None:
    emulator.configure(token_ttl=1)
    hook.user_has_slot()
    first_access, first_refresh = hook._auth._access_token, hook._auth._refresh_token
    wait_until(hook._auth.needs_renewal, timeout=60)
    hook.user_has_slot()  # refresh grant: a new access token
    second_access = hook._auth._access_token
    assert first_access and first_refresh and second_access and second_access != first_access
    for token in (first_access, first_refresh, second_access, emulator.password, emulator.client_secret):
        record = logging.LogRecord("candela", logging.INFO, __file__, 1, "Authorization: Bearer %s", (token,), None)
        line = logging.Formatter("%(levelname)s %(message)s").format(record)
        assert token in line
        redacted = redact(line)
        assert token not in redacted
        assert "***" in redacted


def test_personal_access_token_is_masked(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(pat=True, extra={"access_token": "pat-value-for-masking-test"})
    assert "pat-value-for-masking-test" in str(redact("token pat-value-for-masking-test"))  # not known yet
    assert hook.config.uses_pat  # reading the connection registers its secrets
    assert "pat-value-for-masking-test" not in str(redact("token pat-value-for-masking-test"))


def test_hook_logs_never_contain_tokens(
    hook: CandelaHook, emulator: CandelaEmulator, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.configure(token_ttl=1)
    hook.ensure_slot(poll_interval=0.01)
    wait_until(hook._auth.needs_renewal, timeout=60)
    emulator.expire_tokens()
    emulator.add_fault(match="GET /slot/state", status=503, retry_after="0")
    hook.get_slot_state()
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "retrying" in logged  # the capture does see the hook's log lines
    for secret in (hook._auth._access_token, hook._auth._refresh_token, emulator.password, emulator.client_secret):
        assert secret and secret not in logged
