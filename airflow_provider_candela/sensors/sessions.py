"""Candela sensors: wait for a session to exist (poke, reschedule or deferrable)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_candela._validation import (
    coerce_name,
    coerce_object_id,
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

    Give the session as ``session`` (an ``ObjectMetadata`` dict such as ``start.output``, an
    ``ObjectId``, a dict or ``"scope/identifier:version"``), or as ``identifier`` (+ ``scope``,
    default ``"default"``, + ``version``, default any).

    Modes: ``mode="poke"`` (holds a worker slot), ``mode="reschedule"`` (frees it between checks) or
    ``deferrable=True`` (the check loop runs in the triggerer via
    :class:`~airflow_provider_candela.triggers.sessions.CandelaSessionExistsTrigger`; the session is
    checked once before deferring).  ``poke_interval`` and ``timeout`` (seconds) apply to all three.

    XCom return value: the session's ``ObjectMetadata`` dict (as a start operator pushes).

    :param session: the awaited session (templated).
    :param scope: instead of ``session``: its scope, default ``"default"`` (templated).
    :param identifier: instead of ``session``: its identifier (templated).
    :param version: instead of ``session``: its version, default any (templated).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    :param deferrable: wait in the triggerer instead of a worker (default: the
        ``[operators] default_deferrable`` option).
    :param kwargs: ``BaseSensorOperator`` arguments, notably ``poke_interval`` (seconds between checks,
        also the trigger's poll interval), ``timeout`` (seconds before the sensor fails, also the
        trigger's deadline), ``mode`` (``"poke"`` or ``"reschedule"``) and ``soft_fail`` (skip instead
        of failing on timeout).
    """

    template_fields: Sequence[str] = ("session", "scope", "identifier", "version")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        session: Any = None,
        scope: str | None = None,
        identifier: str | None = None,
        version: str | None = None,
        candela_conn_id: str = "candela_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.scope = scope
        self.identifier = identifier
        self.version = version
        if not isinstance(candela_conn_id, str) or not candela_conn_id.strip():
            raise CandelaInputError(
                f"Invalid `candela_conn_id` for task '{self.task_id}': expected a connection id such as "
                f"'candela_default', got {candela_conn_id!r}."
            )
        self.candela_conn_id = candela_conn_id
        self.deferrable = bool(deferrable)
        if all(is_resolved(v) for v in (session, scope, identifier, version)):
            self._session_id()

    def _session_id(self) -> ObjectId:
        """The awaited session from ``session`` or ``scope``/``identifier``/``version``."""
        tid = self.task_id
        given_session = self.session is not None and self.session != ""
        if given_session and (self.identifier or self.version):
            raise CandelaInputError(f"Task '{tid}' got both `session` and `identifier`/`version`: pass one of them.")
        if given_session:
            oid = coerce_object_id(self.session, argument="session", task_id=tid)
            scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=tid)
            if scope and scope != oid.scope:
                raise CandelaInputError(
                    f"Task '{tid}': `scope`={scope!r} contradicts the scope of `session` ({oid.scope!r})."
                )
            return oid
        if not self.identifier:
            raise CandelaInputError(
                f"Task '{tid}' needs a session to wait for: pass `session=` (e.g. 'default/<identifier>') or "
                "`identifier=` (with `scope=` when not 'default', and optionally `version=`)."
            )
        return coerce_object_id(
            {
                "scope": coerce_name(self.scope, kind="scope", argument="scope", task_id=tid) or "default",
                "identifier": self.identifier,
                "version": coerce_name(self.version, kind="version", argument="version", task_id=tid),
            },
            argument="identifier",
            task_id=tid,
        )

    def _new_hook(self) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        return CandelaHook(candela_conn_id=self.candela_conn_id)

    def _check(self, oid: ObjectId) -> dict[str, Any] | None:
        """The session's metadata dict when it exists, else None (one hook, closed after)."""
        hook = self._new_hook()
        try:
            if not hook.session_exists(oid):
                return None
            try:
                found: dict[str, Any] = hook.get_session_metadata(oid).model_dump(mode="json")
            except CandelaError as err:
                self.log.warning("Session %s exists but its metadata could not be read: %s", oid, err)
                return oid.model_dump(mode="json")
            return found
        finally:
            hook.close()

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
        """Poke/reschedule as usual, or check once and defer to the trigger."""
        if not self.deferrable:
            return super().execute(context)
        oid = self._session_id()
        found = self._check(oid)
        if found is not None:
            self.log.info("Candela session %s already exists; not deferring.", oid)
            return found
        from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

        timeout = float(self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else self.timeout)
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
                candela_conn_id=self.candela_conn_id,
                poll_interval=float(
                    self.poke_interval.total_seconds()
                    if isinstance(self.poke_interval, timedelta)
                    else self.poke_interval
                ),
                timeout=timeout,
            ),
            method_name="execute_complete",
            # A little later than the trigger's own deadline, so its clear timeout event wins.
            timeout=timedelta(seconds=timeout + max(60.0, timeout * 0.1)),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired: return the session's metadata, or raise on timeout/error."""
        if not isinstance(event, dict) or event.get("status") not in {"success", "timeout", "error"}:
            raise CandelaError(
                f"Task '{self.task_id}' resumed with an unexpected trigger event {event!r}; "
                "expected a dict with status success, timeout or error."
            )
        status = event["status"]
        message = str(event.get("message") or "")
        if status == "success":
            session = event.get("session")
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
