"""Bearer tokens for the Candela hook: a personal access token, or the FINBOURNE OAuth2 grants.

Password grant and refresh grant exactly as the FINBOURNE SDKs send them: an
``application/x-www-form-urlencoded`` body (every field encoded, so that a ``+``, ``&``, ``%`` or
non-ASCII character in a credential arrives as it is), ``scope=openid client groups offline_access``;
client id/secret in the body for the password grant and as HTTP Basic auth for the refresh grant.
Tokens are handed to ``register_secret`` (Airflow's ``mask_secret``) the moment they arrive and are
never put into a message.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlencode

import requests
from pydantic import ValidationError

from airflow_provider_candela._validation import validation_problems
from airflow_provider_candela.exceptions import CandelaApiError, CandelaAuthError, CandelaRejectedError
from airflow_provider_candela.hooks._config import CandelaConfig
from airflow_provider_candela.hooks._retry import (
    RETRY_STATUSES,
    LogLike,
    Retryable,
    RetrySettings,
    call_with_retries,
    parse_retry_after,
)
from airflow_provider_candela.hooks._telemetry import count
from airflow_provider_candela.models import TokenResponse

__all__ = ["TokenManager"]

SCOPE: Final = "openid client groups offline_access"
#: Refresh this long before ``expires_in`` (60 s, as the SDKs do), or at half the lifetime for short-lived tokens.
REFRESH_MARGIN: Final = 60.0
_CREDENTIAL_FIELDS: Final = "login, password and the extras client_id, client_secret and token_url"


class TokenManager:
    """Obtains, caches and renews the bearer token of one hook.

    :param config: the validated connection.
    :param post: sends ``POST <url>`` with a form body and headers through the hook's HTTP core (its
        keep-alive session, deadlines, cancellation and refusal of redirects).
    :param settings: returns the retry settings in force.
    :param register_secret: called with every token as soon as it is received.
    :param scrub: removes known secrets from a text before it goes into a message.
    """

    def __init__(
        self,
        config: CandelaConfig,
        *,
        post: Callable[[str, bytes, dict[str, str]], requests.Response],
        settings: Callable[[], RetrySettings],
        register_secret: Callable[[str], None],
        scrub: Callable[[str], str],
        log: LogLike,
    ) -> None:
        self._config = config
        self._send_post = post
        self._settings = settings
        self._register = register_secret
        self._scrub = scrub
        self._log = log
        self._lock = threading.RLock()
        self._access_token: str | None = config.access_token
        self._refresh_token: str | None = None
        self._renew_at = float("inf")
        self.grants: dict[str, int] = {"password": 0, "refresh": 0}

    @property
    def can_reauthenticate(self) -> bool:
        """False for a personal access token (there is nothing to renew it with)."""
        return not self._config.uses_pat

    def needs_renewal(self) -> bool:
        """True when the next API call would first renew the token."""
        return self._access_token is None or time.monotonic() >= self._renew_at

    def authorization(self) -> str:
        """The ``Authorization`` header value, obtaining or renewing the token when due.

        Threads that find the token due wait for the one renewing it and then use its token.
        """
        with self._lock:
            if self._access_token is None:
                self._password_grant()
            elif self.needs_renewal():
                self._renew()
            assert self._access_token is not None
            return f"Bearer {self._access_token}"

    def reauthenticate(self, refused: str) -> bool:
        """Renew after the API refused the ``Authorization`` value ``refused`` (401).

        Single flight: when another thread renewed the token since ``refused`` was handed out, its
        token is used as it is (no second grant for the same expiry).

        :return: whether this call made a grant.
        """
        with self._lock:
            if self._access_token is not None and refused != f"Bearer {self._access_token}":
                return False
            self._renew()
            return True

    def _renew(self) -> None:
        """Refresh grant, or a password grant when there is no refresh token (it is optional in OAuth2)."""
        if self._refresh_token:
            self._refresh()
        else:
            self._password_grant()

    # -- grants ---------------------------------------------------------------------------------

    def _password_grant(self) -> None:
        cfg = self._config
        assert cfg.username and cfg.password and cfg.client_id and cfg.client_secret
        body = urlencode(
            {
                "grant_type": "password",
                "username": cfg.username,
                "password": cfg.password,
                "scope": SCOPE,
                "client_id": cfg.client_id,
                "client_secret": cfg.client_secret,
            }
        )
        resp = self._post(body, headers={}, grant="password")
        if resp.status_code != 200:
            raise self._rejected(resp, "password")
        self._store(resp, "password")

    def _refresh(self) -> None:
        cfg = self._config
        assert cfg.client_id and cfg.client_secret and self._refresh_token
        basic = base64.b64encode(f"{cfg.client_id}:{cfg.client_secret}".encode()).decode("ascii")
        body = urlencode({"grant_type": "refresh_token", "scope": SCOPE, "refresh_token": self._refresh_token})
        resp = self._post(body, headers={"Authorization": f"Basic {basic}"}, grant="refresh")
        if resp.status_code == 200:
            self._store(resp, "refresh")
            return
        if resp.status_code in (400, 401):
            self._log.info(
                "Candela token refresh refused (%s, %s); making a new password grant",
                resp.status_code,
                self._oauth_error(resp) or "no detail",
            )
            self._refresh_token = None
            self._password_grant()
            return
        raise self._rejected(resp, "refresh")

    def _post(self, body: str, *, headers: dict[str, str], grant: str) -> requests.Response:
        cfg = self._config
        assert cfg.token_url
        url = cfg.token_url
        all_headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            **headers,
        }

        def attempt() -> requests.Response:
            try:
                resp = self._send_post(url, body.encode("utf-8"), all_headers)
            except requests.exceptions.SSLError as exc:
                raise CandelaAuthError(
                    f"TLS verification failed for the token endpoint {url} of connection {cfg.conn_id!r} "
                    f"({type(exc).__name__}): set the extra verify to the path of your CA bundle",
                    method="POST",
                    path=url,
                ) from exc
            except requests.RequestException as exc:
                raise Retryable(
                    CandelaApiError(
                        f"Could not reach the Candela token endpoint {url} ({type(exc).__name__}): check the extra "
                        f"token_url (and proxy) of connection {cfg.conn_id!r} and that the identity provider is up",
                        method="POST",
                        path=url,
                        detail=self._scrub(str(exc)),
                    )
                ) from exc
            if resp.status_code in RETRY_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                error = self._rejected(resp, grant)
                resp.close()
                raise Retryable(error, retry_after)
            return resp

        return call_with_retries(attempt, self._settings, f"POST {url} ({grant} grant)", self._log)

    def _store(self, resp: requests.Response, grant: str) -> None:
        try:
            token = TokenResponse.model_validate_json(resp.content)
        except ValidationError as exc:
            problems = validation_problems(exc, root="not a JSON object")
            raise CandelaAuthError(
                f"The token endpoint {self._config.token_url} answered the {grant} grant with 200 but not with "
                f"a token ({problems}): check the extra token_url of connection "
                f"{self._config.conn_id!r} (it must be the OAuth2 token endpoint, e.g. .../oauth2/<id>/v1/token)",
                status=resp.status_code,
                method="POST",
                path=self._config.token_url or "",
            ) from None
        # Mask first: nothing may log the tokens before the masker knows them.
        self._register(token.access_token)
        if token.refresh_token:
            self._register(token.refresh_token)
        self._access_token = token.access_token
        self._refresh_token = token.refresh_token
        lifetime = float(token.expires_in)
        if lifetime <= 0:
            # An unknown lifetime: renewing before every call would make one grant per call.
            self._renew_at = float("inf")
        else:
            self._renew_at = time.monotonic() + lifetime - min(REFRESH_MARGIN, lifetime / 2)
        self.grants[grant] += 1
        count("token.grants", {"grant": grant})
        self._log.debug("Candela %s grant succeeded; token valid for %s s", grant, token.expires_in)

    # -- errors ---------------------------------------------------------------------------------

    def _oauth_error(self, resp: requests.Response) -> str:
        try:
            data: Any = resp.json()
        except ValueError:
            return self._scrub(resp.text[:200].strip())
        if not isinstance(data, dict):
            return self._scrub(str(data)[:200])
        parts = [str(data[k]) for k in ("error", "error_description", "errorSummary", "detail") if data.get(k)]
        return self._scrub(": ".join(parts)[:300])

    def _rejected(self, resp: requests.Response, grant: str) -> CandelaApiError:
        """The error of a refused grant: :class:`CandelaAuthError` when final, else retryable (429, 5xx)."""
        count("token.failures", {"grant": grant, "status": str(resp.status_code)})
        cfg = self._config
        detail = self._oauth_error(resp)
        status = resp.status_code
        if status in (400, 401, 403):
            hint = f"check {_CREDENTIAL_FIELDS} of connection {cfg.conn_id!r}"
        elif status == 429:
            hint = "the identity provider is rate limiting; try again later"
        elif status >= 500:
            hint = "the identity provider is failing; try again later"
        else:
            hint = f"check the extra token_url of connection {cfg.conn_id!r}"
        said = (detail or "no detail").rstrip(".")
        cls = CandelaAuthError if CandelaApiError.class_for(status) is CandelaRejectedError else CandelaApiError
        return cls(
            f"The token endpoint {cfg.token_url} refused the {grant} grant ({status}): {said}. "
            f"{hint[0].upper()}{hint[1:]}.",
            status=status,
            method="POST",
            path=cfg.token_url or "",
            detail=detail,
        )
