"""Candela sensors: wait for a session to exist (poke, reschedule or deferrable)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_candela._deferral import backstop, trigger_event
from airflow_provider_candela._validation import (
    DEFAULT_CONN_ID,
    coerce_conn_id,
    coerce_hook_params,
    coerce_name,
    coerce_session,
    is_resolved,
)
from airflow_provider_candela.exceptions import CandelaError, CandelaInputError
from airflow_provider_candela.models import ObjectId

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaSessionExistsSensor"]


class CandelaSessionExistsSensor(BaseSensorOperator):
    """Wait until a Candela session exists (e.g. one started by another DAG or another user).

    Give the session as the operators take it: ``session`` (an ``ObjectMetadata`` dict such as
    ``start.output``, an ``ObjectId``, a dict or ``"scope/identifier:version"``), or ``session_id``
    (+ ``scope``, default ``"default"``); ``version`` narrows either to one version (default any).

    Modes: ``mode="poke"`` (holds a worker slot), ``mode="reschedule"`` (frees it between checks) or
    ``deferrable=True`` (the check loop runs in the triggerer via
    :class:`~airflow_provider_candela.triggers.sessions.CandelaSessionExistsTrigger`; the session is
    checked once before deferring).  ``poke_interval`` and ``timeout`` (seconds) apply to all three.
    One task run (every poke of ``mode="poke"``) uses one hook: one token grant, one connection.

    XCom return value: the session's ``ObjectMetadata`` dict (as a start operator pushes).

    :param session: the awaited session (templated).
    :param session_id: instead of ``session``: its identifier (templated).
    :param scope: with ``session_id``: its scope, default ``"default"`` (templated).
    :param version: only this version of the session, default any (templated).
    :param identifier: deprecated alias of ``session_id`` (warns).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    :param hook_params: per-task overrides of the connection's ``timeout`` (seconds, ``(connect, read)`` or
        ``'connect,read'``) and ``max_retries``, e.g. ``{"timeout": (10, 900), "max_retries": 2}``.
    :param deferrable: wait in the triggerer instead of a worker (default: the
        ``[operators] default_deferrable`` option).
    :param kwargs: ``BaseSensorOperator`` arguments, notably ``poke_interval`` (seconds between checks,
        also the trigger's poll interval), ``timeout`` (seconds before the sensor fails, also the
        trigger's deadline), ``mode`` (``"poke"`` or ``"reschedule"``) and ``soft_fail`` (skip instead
        of failing on timeout).
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session", "session_id", "scope", "version")
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json"}
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        version: str | None = None,
        identifier: str | None = None,
        candela_conn_id: str = DEFAULT_CONN_ID,
        hook_params: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if identifier is not None:
            warnings.warn(
                f"Task '{self.task_id}': `identifier=` of CandelaSessionExistsSensor is deprecated; pass "
                "`session_id=` (the same value), as the operators take it.",
                AirflowProviderDeprecationWarning,
                stacklevel=2,
            )
            if session_id is not None:
                raise CandelaInputError(
                    f"Task '{self.task_id}' got both `session_id` and its deprecated alias `identifier`: "
                    "pass `session_id`."
                )
            session_id = identifier
        self.session = session
        self.session_id = session_id
        self.scope = scope
        self.version = version
        self.candela_conn_id = candela_conn_id
        self.hook_params = coerce_hook_params(hook_params, task_id=self.task_id)
        self.deferrable = bool(deferrable)
        if is_resolved(candela_conn_id):
            coerce_conn_id(candela_conn_id, task_id=self.task_id)
        if all(is_resolved(v) for v in (session, session_id, scope, version)):
            self._session_id()

    @property
    def identifier(self) -> str | None:
        """Deprecated: ``session_id``."""
        return self.session_id

    def _session_id(self) -> ObjectId:
        """The awaited session from ``session`` or ``session_id``/``scope``, and ``version``."""
        tid = self.task_id
        return coerce_session(
            self.session if self.session != "" else None,
            session_id=self.session_id,
            scope=coerce_name(self.scope, kind="scope", argument="scope", task_id=tid),
            version=coerce_name(self.version, kind="version", argument="version", task_id=tid),
            task_id=tid,
        )

    @cached_property
    def hook(self) -> CandelaHook:
        """The hook of this task run (every poke of it), closed when ``execute`` ends."""
        from airflow_provider_candela.hooks.candela import CandelaHook

        return CandelaHook(coerce_conn_id(self.candela_conn_id, task_id=self.task_id), **self.hook_params)

    def _check(self, oid: ObjectId) -> dict[str, Any] | None:
        """The session's metadata dict when it exists, else None."""
        hook = self.hook
        if not hook.session_exists(oid):
            return None
        try:
            found: dict[str, Any] = hook.get_session_metadata(oid).model_dump(mode="json")
        except CandelaError as err:
            self.log.warning("Session %s exists but its metadata could not be read: %s", oid, err)
            return oid.model_dump(mode="json")
        return found

    def poke(self, context: Context) -> PokeReturnValue:
        """One check: done (with the session's metadata as XCom) when the session exists."""
        oid = self._session_id()
        found = self._check(oid)
        if found is None:
            self.log.info("Candela session %s does not exist yet.", oid)
            return PokeReturnValue(is_done=False)
        self.log.info("Candela session %s exists.", oid)
        return PokeReturnValue(is_done=True, xcom_value=found)

    def execute(self, context: Context) -> Any:
        """Poke/reschedule as usual, or check once and defer to the trigger; one hook for the run."""
        try:
            return self._wait(context)
        finally:
            hook = self.__dict__.pop("hook", None)
            if hook is not None:
                hook.close()

    def on_kill(self) -> None:
        """Abort the check in flight at once."""
        hook = self.__dict__.get("hook")
        if hook is not None:
            hook.cancel(f"task '{self.task_id}' was killed")
        super().on_kill()

    def _wait(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        oid = self._session_id()
        found = self._check(oid)
        if found is not None:
            self.log.info("Candela session %s already exists; not deferring.", oid)
            return found
        from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

        timeout = _seconds(self.timeout)
        self.log.info(
            "Candela session %s does not exist yet; deferring (check every %s s, timeout %s s).",
            oid,
            self.poke_interval,
            timeout,
        )
        self.defer(
            trigger=CandelaSessionExistsTrigger(
                scope=oid.scope,
                identifier=oid.identifier,
                version=oid.version,
                candela_conn_id=self.hook.candela_conn_id,
                hook_params=self.hook_params,
                poll_interval=_seconds(self.poke_interval),
                timeout=timeout,
            ),
            method_name="execute_complete",
            timeout=backstop(timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired: return the session's metadata, or raise on timeout/error."""
        status, message, payload = trigger_event(event, ("success", "timeout", "error"), task_id=self.task_id)
        if status == "success":
            session = payload.get("session")
            if not isinstance(session, dict):
                raise CandelaError(f"Task '{self.task_id}': the success event carries no session: {event!r}.")
            self.log.info("%s", message or "The Candela session exists.")
            return session
        if status == "timeout":
            text = f"Task '{self.task_id}' timed out waiting for the Candela session: {message}"
            if self.soft_fail:
                raise AirflowSkipException(text)
            raise AirflowSensorTimeout(text)
        raise CandelaError(
            f"Task '{self.task_id}' could not check the Candela session: {message}. "
            f"Check the connection '{self.candela_conn_id}' and that the Candela API is reachable."
        )


def _seconds(value: float | timedelta) -> float:
    return float(value.total_seconds() if isinstance(value, timedelta) else value)
