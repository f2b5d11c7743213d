"""The one exception family of the package.

Every error says what failed, the input or server detail that caused it, and what to do about it.
All of them subclass :class:`CandelaError`, itself an ``AirflowException``, so a DAG author can
catch one type.

An error a retry cannot fix also subclasses ``AirflowFailException``: the task fails at once instead of
spending its retries.  Those are :class:`CandelaInputError` (an argument or the connection),
:class:`CandelaOutputError` (an answer that does not fit ``output_type``) and :class:`CandelaRejectedError`
(a 4xx answer other than 408, 409 and 429: :data:`RETRYABLE_4XX`).  Every other error (5xx, 408, 409, 429,
a lost connection, a timeout, a failed slot) is retried as the task's ``retries`` say.
"""

from __future__ import annotations

from typing import Final

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

#: The 4xx answers a later attempt can change: 408 Request Timeout, 409 Conflict (another session holds the
#: slot), 429 Too Many Requests.  Any other 4xx is final (:class:`CandelaRejectedError`).
RETRYABLE_4XX: Final = frozenset({408, 409, 429})


class CandelaError(AirflowException):
    """Base class of every error raised by this provider."""


class CandelaInputError(CandelaError, AirflowFailException, ValueError):
    """An argument or connection field is invalid; raised before any HTTP request.  Not retried."""


class CandelaConnectionConfigError(CandelaInputError):
    """The Airflow connection lacks a field or has a malformed one."""


class CandelaTimeoutError(CandelaError):
    """A wait (slot start-up, sensor, deadline of retries) ran out of time."""


class CandelaSlotError(CandelaError):
    """The user's slot went to ERRORED or HOST_GONE while we waited for it."""


class CandelaApiError(CandelaError):
    """Candela answered with an error status (or a body that is not what the API promises).

    :param message: the whole message: what failed, the server's detail and what to check.
    :param status: the HTTP status code (``None`` when no response was received).
    :param method: the HTTP method of the failed call.
    :param path: the API path of the failed call (no host, no query string secrets).
    :param detail: the server's detail, already rendered for humans.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.detail = detail

    @staticmethod
    def class_for(status: int | None) -> type[CandelaApiError]:
        """The class of an error answered with ``status``: :class:`CandelaRejectedError` for a final 4xx."""
        final = status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX
        return CandelaRejectedError if final else CandelaApiError

    @property
    def refused(self) -> bool:
        """Whether the server answered with a 4xx: it refused the request, so it carried nothing out."""
        return self.status is not None and 400 <= self.status < 500

    def amended(self, text: str, cls: type[CandelaApiError] | None = None) -> CandelaApiError:
        """This error (as ``cls``, default its own class) with ``text`` added to its message."""
        return (cls or type(self))(
            f"{str(self).rstrip('.')}. {text}",
            status=self.status,
            method=self.method,
            path=self.path,
            detail=self.detail,
        )


class CandelaRejectedError(CandelaApiError, AirflowFailException):
    """Candela answered with a 4xx other than 408, 409 and 429: the request itself is wrong.  Not retried."""


class CandelaAuthError(CandelaRejectedError):
    """The credentials or their permissions were refused (the token endpoint's 4xx, or 401/403 from the API)."""


class CandelaResponseError(CandelaApiError):
    """A 2xx response whose body is not the JSON the API promises."""


class CandelaAmbiguousError(CandelaApiError):
    """A prompt was sent but its answer was lost (a 5xx, a connection cut, a stream broken off).

    Candela may or may not have acted on it, so it is never sent again automatically; check the session's
    output first.  Retried by the task's ``retries`` like any transient error.
    """


class CandelaSessionRunningError(CandelaApiError):
    """Candela refused to start a session because another one runs on the user's slot."""


class CandelaOutputError(CandelaError, AirflowFailException):
    """Candela's answer does not fit the task's ``output_type`` (the fields that did not fit are listed).

    Not retried: the prompt ran, and sending it again may book what it booked twice.
    """


class CandelaReviewError(CandelaError):
    """The reviewer rejected Candela's answer, or nobody reviewed it in time (``require_approval``).

    Retried like any failure: a retry prompts Candela again and asks for a new review.
    """


class CandelaStaleReviewError(CandelaReviewError, AirflowFailException):
    """Airflow (3.1 to 3.3) would show the reviewer an earlier try's answer, not this one: fails at once.

    Those versions keep the request part (subject, body, form) of a task instance's first review on every later
    try, so an approval could not be trusted to be of this answer; no retry changes that.
    """


class CandelaCancelledError(CandelaError):
    """The hook was cancelled (the task was killed) while a call was in flight; nothing was retried."""
