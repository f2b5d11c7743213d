"""Reading the connection: every field, both extra spellings, secrets.json, and the errors for bad values."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_candela.exceptions import CandelaConnectionConfigError
from airflow_provider_candela.hooks._http import USER_AGENT
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._helpers import fast, requests_of

MakeHook = Callable[..., CandelaHook]


def config_error(hook: CandelaHook) -> str:
    """The message of the config error the first call raises (and proof that no HTTP call was made)."""
    with pytest.raises(CandelaConnectionConfigError) as info:
        hook.user_has_slot()
    return str(info.value)


def test_defaults(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    cfg = make_hook(host=emulator.url + "/").config
    assert cfg.base_url == emulator.url  # trailing slash stripped
    assert cfg.timeout == (10.0, 300.0)
    assert cfg.max_retries == 5
    assert cfg.slot_type == "gpu-medium"
    assert cfg.verify is True
    assert cfg.proxy is None and cfg.app_name is None
    assert not cfg.uses_pat


def test_every_extra_is_read(make_hook: MakeHook, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not really a certificate")
    cfg = make_hook(
        extra={
            "app_name": "airflow-tests",
            "verify": str(bundle),
            "proxy": "http://127.0.0.1:3128",
            "timeout": "3, 45",
            "max_retries": "2",
            "slot_type": "gpu-large",
        }
    ).config
    assert cfg.app_name == "airflow-tests"
    assert cfg.verify == str(bundle)
    assert cfg.proxy == "http://127.0.0.1:3128"
    assert cfg.timeout == (3.0, 45.0)
    assert cfg.max_retries == 2
    assert cfg.slot_type == "gpu-large"


def test_prefixed_extras_as_stored_by_the_airflow_2_form(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    extra = {f"extra__candela__{k}": v for k, v in emulator.connection_extra().items()}
    extra["extra__candela__max_retries"] = 1
    extra["extra__candela__app_name"] = ""  # empty form fields are stored as ""
    hook = make_hook(extra=json.dumps(extra))
    assert hook.config.token_url == emulator.token_url
    assert hook.config.client_id == emulator.client_id
    assert hook.config.max_retries == 1
    assert hook.config.app_name is None
    assert hook.user_has_slot() is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("False", False), (False, False), ("true", True), (True, True), ("", True)],
)
def test_verify_values(make_hook: MakeHook, value: object, expected: bool) -> None:
    assert make_hook(extra={"verify": value}).config.verify is expected


@pytest.mark.parametrize(("value", "expected"), [("7", (7.0, 7.0)), (12, (12.0, 12.0)), ("2.5,60", (2.5, 60.0))])
def test_timeout_values(make_hook: MakeHook, value: object, expected: tuple[float, float]) -> None:
    assert make_hook(extra={"timeout": value}).config.timeout == expected


def test_hook_arguments_override_the_connection(make_hook: MakeHook) -> None:
    hook = make_hook(extra={"timeout": "5,50", "max_retries": 4}, hook_kwargs={"timeout": (1, 2), "max_retries": 0})
    assert hook.config.timeout == (1.0, 2.0)
    assert hook.config.max_retries == 0


def test_headers_and_timeouts_on_every_request(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    hook = make_hook(extra={"app_name": "airflow-tests", "timeout": "4,40"})
    sent: list[tuple[dict[str, str], object]] = []
    adapter = hook.get_conn().get_adapter(emulator.url)
    original = adapter.send

    def recording_send(request, **kwargs):  # type: ignore[no-untyped-def]
        sent.append((dict(request.headers), kwargs.get("timeout")))
        return original(request, **kwargs)

    adapter.send = recording_send  # type: ignore[method-assign]
    hook.user_has_slot()
    hook.list_sessions()
    api_calls = [(headers, timeout) for headers, timeout in sent if "Authorization" in headers]
    assert len(api_calls) == 2
    correlation_ids = {headers["CorrelationId"] for headers, _ in api_calls}
    assert len(correlation_ids) == 2  # a new one per call
    for headers, timeout in sent:
        assert headers["User-Agent"] == USER_AGENT
        assert headers["Accept"] == "application/json"
        assert headers["X-LUSID-Application"] == "airflow-tests"
        assert timeout == (4.0, 40.0)
    for headers, _ in api_calls:
        assert headers["Authorization"].startswith("Bearer ")


def test_secrets_file_fills_what_the_connection_leaves_empty(
    make_hook: MakeHook, emulator: CandelaEmulator, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(
        json.dumps(
            {
                "api": {
                    "tokenUrl": emulator.token_url,
                    "candelaUrl": emulator.url,
                    "username": emulator.username,
                    "password": emulator.password,
                    "clientId": emulator.client_id,
                    "clientSecret": emulator.client_secret,
                    "applicationName": "from-secrets",
                },
                "proxy": {"address": "http://127.0.0.1:3128", "username": "proxy-user", "password": "proxy-pass"},
            }
        )
    )
    hook = make_hook(
        host=None, login=None, password=None, extra=json.dumps({"secrets_file": str(secrets), "app_name": "mine"})
    )
    cfg = hook.config
    assert cfg.base_url == emulator.url
    assert cfg.username == emulator.username
    assert cfg.app_name == "mine"  # the connection wins over the file
    assert cfg.proxy == "http://proxy-user:proxy-pass@127.0.0.1:3128"
    assert "proxy-pass" in cfg.secrets()
    # Without the (unreachable) proxy the file's credentials work against the emulator.
    hook = make_hook(host=None, login=None, password=None, extra=json.dumps({"secrets_file": str(secrets)}))
    secrets.write_text(json.dumps({"api": json.loads(secrets.read_text())["api"]}))
    assert hook.user_has_slot() is False
    assert emulator.stats()["token_grants"]["password"] == 1


def test_secrets_file_with_a_personal_access_token(
    make_hook: MakeHook, emulator: CandelaEmulator, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"api": {"candelaUrl": emulator.url, "accessToken": emulator.access_token}}))
    hook = make_hook(host=None, login=None, password=None, extra=json.dumps({"secrets_file": str(secrets)}))
    assert hook.config.uses_pat
    assert hook.user_has_slot() is False
    assert emulator.stats()["token_grants"] == {"password": 0, "refresh": 0}


def test_configuration_is_read_lazily(make_hook: MakeHook) -> None:
    hook = make_hook(host=None)  # constructing the hook (DAG parsing) never fails
    assert "has no host" in config_error(hook)


def test_missing_host(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    message = config_error(make_hook(host=None, conn_id="candela_nohost"))
    assert message == (
        "Connection 'candela_nohost' has no host: set it to the Candela API URL, e.g. https://<domain>.lusid.com/candela"
    )
    assert emulator.stats()["requests_total"] == 0


def test_missing_oauth_fields_are_listed_without_values(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    message = config_error(make_hook(login=None, extra={"client_id": None, "token_url": None}))
    assert "login (username), extra token_url and extra client_id are missing" in message
    assert "access_token" in message  # the alternative is named
    assert emulator.password not in message and emulator.client_secret not in message


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"token_url": "ftp://idp.example/token"}, "token_url='ftp://idp.example/token', which is not an http(s) URL"),
        ({"token_url": "not a url"}, "which is not an http(s) URL"),
        ({"timeout": "soon"}, "timeout='soon': expected one positive number of seconds or 'connect,read'"),
        ({"timeout": "1,2,3"}, "expected one positive number"),
        ({"timeout": "-1"}, "expected one positive number"),
        ({"max_retries": "many"}, "max_retries='many': expected a whole number >= 0"),
        ({"max_retries": -2}, "expected a whole number >= 0"),
        ({"verify": "/no/such/ca.pem"}, "verify='/no/such/ca.pem': expected true, false or the path of a CA bundle"),
        ({"proxy": "proxy:3128"}, "proxy='proxy:3128', which is not an http(s) URL"),
        ({"proxy": "socks://user:hunter22@proxy"}, "proxy='socks://***@proxy'"),
        ({"secrets_file": "/no/such/secrets.json"}, "secrets_file='/no/such/secrets.json', which does not exist"),
    ],
)
def test_malformed_fields(make_hook: MakeHook, extra: dict[str, object], fragment: str) -> None:
    message = config_error(make_hook(extra=extra, conn_id="candela_bad"))
    assert message.startswith("Connection 'candela_bad' ")
    assert fragment in message
    assert "hunter22" not in message


def test_extra_that_is_not_json(make_hook: MakeHook) -> None:
    message = config_error(make_hook(extra="{token_url: nope", conn_id="candela_badjson"))
    assert message.startswith("Connection 'candela_badjson' has an extra that is not valid JSON")
    assert "set it to a JSON object" in message


def test_extra_that_is_not_an_object(make_hook: MakeHook) -> None:
    assert "is a JSON list, not an object" in config_error(make_hook(extra="[1, 2]"))


def test_secrets_file_that_is_not_json(make_hook: MakeHook, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text("{not json")
    assert "which is not valid JSON" in config_error(make_hook(extra={"secrets_file": str(secrets)}))


def test_uri_form_host_is_completed(make_hook: MakeHook) -> None:
    cfg = make_hook(host="demo.lusid.com", port=8443, schema="candela").config
    assert cfg.base_url == "https://demo.lusid.com:8443/candela"


def test_a_url_host_without_a_port_uses_the_port_field(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    port = int(emulator.url.rsplit(":", 1)[1])
    hook = make_hook(host="http://127.0.0.1/", port=port)  # as `--conn-port` or JSON "port" store it
    assert hook.config.base_url == emulator.url
    before = requests_of(emulator.stats(), "GET /slot/user_has_slot")
    hook.user_has_slot()  # over real HTTP: the emulator listens on the Port field's port, not on 80
    assert sum(requests_of(emulator.stats(), "GET /slot/user_has_slot").values()) == sum(before.values()) + 1


def test_a_url_host_whose_port_is_the_port_field_s_is_accepted(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    port = int(emulator.url.rsplit(":", 1)[1])
    assert make_hook(host=emulator.url, port=port).config.base_url == emulator.url


def test_a_url_host_whose_port_disagrees_with_the_port_field_is_refused(
    make_hook: MakeHook, emulator: CandelaEmulator
) -> None:
    before = emulator.stats()["requests_total"]
    message = config_error(make_hook(host="https://user:pw@demo.lusid.com:8443/candela", port=9443))
    assert "port 8443" in message and "Port=9443" in message and "disagree" in message
    assert "pw" not in message, "the URL's credentials are not shown"
    assert emulator.stats()["requests_total"] == before, "refused before any request"


def test_undefined_connection(emulator: CandelaEmulator) -> None:
    hook = fast(CandelaHook("candela_nowhere"))
    message = config_error(hook)
    assert message.startswith("Connection 'candela_nowhere' is not defined")
    assert "AIRFLOW_CONN_CANDELA_NOWHERE" in message


def test_test_connection_reports_config_errors(make_hook: MakeHook) -> None:
    ok, message = make_hook(host=None).test_connection()
    assert ok is False
    assert "has no host" in message


def test_user_agent_names_the_provider() -> None:
    from airflow_provider_candela import __version__

    assert f"airflow-provider-candela/{__version__}" == USER_AGENT


def test_no_request_is_counted_for_config_errors(make_hook: MakeHook, emulator: CandelaEmulator) -> None:
    config_error(make_hook(extra={"timeout": "x"}))
    assert requests_of(emulator.stats(), "POST /oauth2/token") == {}
