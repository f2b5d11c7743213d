"""The one exception family of the package.

Every error says what failed, the input or server detail that caused it, and what to do about it.
All of them subclass :class:`CandelaError`, itself an ``AirflowException``, so a DAG author can
catch one type.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException


class CandelaError(AirflowException):
    """Base class of every error raised by this provider."""


class CandelaInputError(CandelaError, ValueError):
    """An argument or connection field is invalid; raised before any HTTP request."""


class CandelaConnectionConfigError(CandelaInputError):
    """The Airflow connection lacks a field or has a malformed one."""


class CandelaTimeoutError(CandelaError):
    """A wait (slot start-up, sensor, deadline of retries) ran out of time."""


class CandelaSlotError(CandelaError):
    """The user's slot went to ERRORED or HOST_GONE while we waited for it."""


class CandelaApiError(CandelaError):
    """Candela answered with an error status (or a body that is not what the API promises).

    :param status: the HTTP status code (``None`` when no response was received).
    :param method: the HTTP method of the failed call.
    :param path: the API path of the failed call (no host, no query string secrets).
    :param detail: the server's detail, already rendered for humans.
    :param hint: what to check or do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        detail: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.detail = detail
        self.hint = hint

    def amended(self, text: str, cls: type[CandelaApiError] | None = None) -> CandelaApiError:
        """This error (as ``cls``, default its own class) with ``text`` added to its message."""
        return (cls or type(self))(
            f"{str(self).rstrip('.')}. {text}",
            status=self.status,
            method=self.method,
            path=self.path,
            detail=self.detail,
            hint=self.hint,
        )


class CandelaAuthError(CandelaApiError):
    """Authentication failed (token endpoint refused the credentials, or 401/403 from the API)."""


class CandelaResponseError(CandelaApiError):
    """A 2xx response whose body is not the JSON the API promises."""


class CandelaSessionRunningError(CandelaApiError):
    """Candela refused to start a session because another one runs on the user's slot."""


class CandelaOutputError(CandelaError):
    """Candela's answer does not fit the task's ``output_type`` (the fields that did not fit are listed)."""


class CandelaCancelledError(CandelaError):
    """The hook was cancelled (the task was killed) while a call was in flight; nothing was retried."""
