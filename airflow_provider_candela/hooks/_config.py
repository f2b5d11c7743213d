"""Reading and validating a Candela connection (and an optional FINBOURNE ``secrets.json``).

:func:`load_config` turns the fields of an Airflow connection into a frozen :class:`CandelaConfig`
or raises :class:`CandelaConnectionConfigError` naming the field, the connection id and the fix.
It never puts a secret value into a message.

No Airflow import here: the hook passes the connection's attributes in, so this module is
testable on its own.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from airflow_provider_candela._validation import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    parse_bool,
    parse_max_retries,
    parse_timeout,
    shorten,
)
from airflow_provider_candela.exceptions import CandelaConnectionConfigError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_SLOT_TYPE",
    "DEFAULT_TIMEOUT",
    "CandelaConfig",
    "load_config",
    "parse_max_retries",
    "parse_timeout",
]

DEFAULT_STREAM_TIMEOUT: Final = 3600.0
DEFAULT_SLOT_TYPE: Final = "gpu-medium"
EXTRA_PREFIX: Final = "extra__candela__"
HOST_EXAMPLE: Final = "https://<domain>.lusid.com/candela"

T = TypeVar("T")

#: Extra keys this provider reads; anything else in the extra is ignored (and logged by the hook).
KNOWN_EXTRAS: Final = (
    "token_url",
    "client_id",
    "client_secret",
    "access_token",
    "app_name",
    "verify",
    "proxy",
    "timeout",
    "stream_timeout",
    "max_retries",
    "slot_type",
    "secrets_file",
    "model",
)


@dataclass(frozen=True)
class CandelaConfig:
    """Everything the hook needs to talk to Candela, validated.

    ``access_token`` set means personal-access-token mode (no OAuth2 grant); otherwise
    ``token_url``, ``username``, ``password``, ``client_id`` and ``client_secret`` are all set.
    """

    conn_id: str
    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    app_name: str | None = None
    verify: bool | str = True
    proxy: str | None = field(default=None, repr=False)
    timeout: tuple[float, float] = DEFAULT_TIMEOUT
    stream_timeout: float = DEFAULT_STREAM_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    slot_type: str = DEFAULT_SLOT_TYPE
    secrets_file: str | None = None
    model: str | None = None

    @property
    def uses_pat(self) -> bool:
        """True when a personal access token is used instead of the OAuth2 password grant."""
        return bool(self.access_token)

    def secrets(self) -> list[str]:
        """The secret values of this configuration (to mask and to scrub from messages)."""
        values = [self.password, self.client_secret, self.access_token]
        if self.proxy:
            password = urlsplit(self.proxy).password
            values.append(password)
        return [v for v in values if v]


def _err(conn_id: str, text: str) -> CandelaConnectionConfigError:
    return CandelaConnectionConfigError(f"Connection {conn_id!r} {text}")


def _text(value: Any) -> str | None:
    """A stripped string, or None for missing/empty values."""
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def parse_extra(conn_id: str, extra: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The connection extra as a dict with unprefixed keys (``extra__candela__x`` -> ``x``).

    A key given both ways keeps the unprefixed value unless it is empty.
    """
    if extra is None or extra == "":
        return {}
    if isinstance(extra, str):
        try:
            loaded = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise _err(
                conn_id,
                f"has an extra that is not valid JSON ({exc.msg} at position {exc.pos}): set it to a JSON object "
                'such as {"token_url": "https://<domain>.identity.lusid.com/oauth2/<id>/v1/token", '
                '"client_id": "..."}',
            ) from None
    else:
        loaded = dict(extra)
    if not isinstance(loaded, dict):
        raise _err(conn_id, f"has an extra that is a JSON {type(loaded).__name__}, not an object: set it to {{...}}")
    result: dict[str, Any] = {}
    for key, value in loaded.items():
        if isinstance(key, str) and key.startswith(EXTRA_PREFIX):
            short = key[len(EXTRA_PREFIX) :]
            if _text(result.get(short)) is None:
                result[short] = value
        elif _text(value) is not None or key not in result:
            result[key] = value
    return result


def _read_secrets_file(conn_id: str, path: str) -> dict[str, Any]:
    """The ``api`` and ``proxy`` sections of a FINBOURNE secrets.json, flattened to our names."""
    expanded = os.path.expanduser(path)
    try:
        with open(expanded, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise _err(
            conn_id, f"has secrets_file={path!r}, which does not exist on this worker: fix the path or remove it"
        ) from None
    except OSError as exc:
        raise _err(conn_id, f"has secrets_file={path!r}, which cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise _err(
            conn_id,
            f"has secrets_file={path!r}, which is not valid JSON (line {getattr(exc, 'lineno', '?')}): "
            'expected {"api": {"tokenUrl": ..., "candelaUrl": ..., ...}}',
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("api", {}), dict):
        raise _err(conn_id, f"has secrets_file={path!r} without an 'api' object: expected {{\"api\": {{...}}}}")
    api: dict[str, Any] = data.get("api") or {}
    proxy_section = data.get("proxy")
    proxy: dict[str, Any] = proxy_section if isinstance(proxy_section, dict) else {}
    result: dict[str, Any] = {
        "host": api.get("candelaUrl") or api.get("finbourne_candelaUrl"),
        "login": api.get("username"),
        "password": api.get("password"),
        "token_url": api.get("tokenUrl"),
        "client_id": api.get("clientId"),
        "client_secret": api.get("clientSecret"),
        "app_name": api.get("applicationName"),
        "access_token": api.get("accessToken"),
        "verify": api.get("clientCertificate"),
    }
    address = _text(proxy.get("address"))
    if address:
        user, secret = _text(proxy.get("username")), _text(proxy.get("password"))
        if user:
            parts = urlsplit(address if "://" in address else f"http://{address}")
            auth = quote(user, safe="") + (":" + quote(secret, safe="") if secret else "")
            netloc = f"{auth}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            address = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        result["proxy"] = address
    return {k: v for k, v in result.items() if _text(v) is not None}


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` removed (for messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, "***@" + parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, ""))


def _http_url(conn_id: str, name: str, value: str, example: str) -> str:
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        valid = False
    if not valid:
        shown = _without_userinfo(value)
        raise _err(conn_id, f"has {name}={shown!r}, which is not an http(s) URL: set it like {example}")
    return value


def _base_url(conn_id: str, host: str, port: int | None, schema: str | None) -> str:
    if "://" not in host:
        # URI-form connections split the URL into host / port / schema: put it back together.
        netloc = host.strip("/") + (f":{port}" if port else "")
        path = f"/{schema.strip('/')}" if schema else ""
        host = f"https://{netloc}{path}"
    elif port:
        host = _with_port(conn_id, _http_url(conn_id, "host", host, HOST_EXAMPLE), port)
    _http_url(conn_id, "host", host, HOST_EXAMPLE)
    return host.rstrip("/")


def _with_port(conn_id: str, url: str, port: int) -> str:
    """``url`` (a host URL) on the connection's Port field: added when the URL has no port; equal, or an error."""
    parts = urlsplit(url)
    if parts.port is None:
        netloc = parts.netloc.rstrip(":") + f":{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if parts.port != int(port):
        shown = _without_userinfo(url)
        raise _err(
            conn_id,
            f"has host={shown!r} (port {parts.port}) and Port={port}: they disagree. Keep the port in one of "
            "them (or make them the same).",
        )
    return url


def _app_name(conn_id: str, value: str | None) -> str | None:
    """The extra ``app_name`` when it can be sent as the ``X-LUSID-Application`` header (printable Latin-1)."""
    for position, char in enumerate(value or ""):
        if not (" " <= char <= "~" or "\xa0" <= char <= "\xff"):
            what = "a character outside Latin-1" if char > "\xff" else "a line break or another control character"
            raise _err(
                conn_id,
                f"has app_name={shorten(str(value), 80)!r}, which holds {what} ({char!r} at position {position}) "
                "and cannot be sent as the X-LUSID-Application header: set the extra app_name to one line of "
                "plain text such as 'airflow-prod' (letters, digits, spaces, '-', '_', '.')",
            )
    return value


def _verify(conn_id: str, value: Any) -> bool | str:
    if value is None or isinstance(value, bool):
        return True if value is None else value
    text = _text(value)
    if text is None:
        return True
    flag = parse_bool(text)
    if flag is not None:
        return flag
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise _err(
            conn_id,
            f"has verify={text!r}: expected true, false or the path of a CA bundle file that exists on this worker",
        )
    return path


def _stream_timeout(conn_id: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_STREAM_TIMEOUT
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise _err(conn_id, f"has stream_timeout={value!r}: expected a positive number of seconds such as 3600")
    return number


def _parsed(conn_id: str, name: str, value: Any, parse: Callable[[Any], T]) -> T:
    try:
        return parse(value)
    except ValueError as err:
        raise _err(conn_id, f"has {name}={value!r}: {err}") from None


def load_config(
    conn_id: str,
    *,
    host: str | None,
    login: str | None,
    password: str | None,
    extra: str | Mapping[str, Any] | None,
    port: int | None = None,
    schema: str | None = None,
    timeout: Any = None,
    max_retries: Any = None,
) -> CandelaConfig:
    """Validate a connection and return its :class:`CandelaConfig`.

    ``timeout`` / ``max_retries`` (hook arguments) override the connection's extras.

    :raises CandelaConnectionConfigError: naming the field, the connection id and the fix.
    """
    extras = parse_extra(conn_id, extra)
    values: dict[str, Any] = {k: extras.get(k) for k in KNOWN_EXTRAS}
    values.update(host=_text(host), login=_text(login), password=password or None)
    secrets_file = _text(values["secrets_file"])
    if secrets_file:
        for key, value in _read_secrets_file(conn_id, secrets_file).items():
            if _text(values.get(key)) is None:
                values[key] = value

    raw_host = _text(values["host"])
    if raw_host is None:
        raise _err(conn_id, f"has no host: set it to the Candela API URL, e.g. {HOST_EXAMPLE}")
    base_url = _base_url(conn_id, raw_host, port, _text(schema))

    access_token = _text(values["access_token"])
    token_url = _text(values["token_url"])
    username = _text(values["login"])
    secret_password = values["password"] if isinstance(values["password"], str) and values["password"] else None
    client_id = _text(values["client_id"])
    client_secret = _text(values["client_secret"])
    if not access_token:
        missing = [
            name
            for name, value in (
                ("login (username)", username),
                ("password", secret_password),
                ("extra token_url", token_url),
                ("extra client_id", client_id),
                ("extra client_secret", client_secret),
            )
            if not value
        ]
        if missing:
            raise _err(
                conn_id,
                f"cannot authenticate: {_and(missing)} {'is' if len(missing) == 1 else 'are'} missing. "
                "Set login, password and the extras token_url, client_id and client_secret (OAuth2 password "
                "grant), or set the extra access_token to a personal access token",
            )
        assert token_url is not None
        _http_url(conn_id, "token_url", token_url, "https://<domain>.identity.lusid.com/oauth2/<id>/v1/token")

    proxy = _text(values["proxy"])
    if proxy:
        _http_url(conn_id, "proxy", proxy, "http://proxy.example:3128")
    slot_type = _text(values["slot_type"]) or DEFAULT_SLOT_TYPE

    return CandelaConfig(
        conn_id=conn_id,
        base_url=base_url,
        username=username,
        password=secret_password,
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        access_token=access_token,
        app_name=_app_name(conn_id, _text(values["app_name"])),
        verify=_verify(conn_id, values["verify"]),
        proxy=proxy,
        timeout=_parsed(conn_id, "timeout", timeout if timeout is not None else values["timeout"], parse_timeout),
        stream_timeout=_stream_timeout(conn_id, values["stream_timeout"]),
        max_retries=_parsed(
            conn_id, "max_retries", max_retries if max_retries is not None else values["max_retries"], parse_max_retries
        ),
        slot_type=slot_type,
        secrets_file=secrets_file,
        model=_text(values["model"]),
    )
