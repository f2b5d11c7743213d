"""Operators for stored sessions: delete given sessions, clean up sessions matching filters.

Imported at every DAG parse: the hook (and ``requests``) are imported inside methods only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_candela._validation import (
    as_utc,
    coerce_bool,
    coerce_name,
    coerce_older_than,
    coerce_optional_name,
    coerce_session,
    is_resolved,
)
from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaCancelledError,
    CandelaError,
    CandelaInputError,
)
from airflow_provider_candela.models import ObjectId, ObjectMetadata
from airflow_provider_candela.operators._base import CandelaOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaCleanupSessionsOperator", "CandelaDeleteSessionOperator"]


class CandelaDeleteSessionOperator(CandelaOperator):
    """Delete the given stored sessions (every version, or one); a session that does not exist is skipped.

    To delete by age, user or identifier prefix, use :class:`CandelaCleanupSessionsOperator`.

    XCom return value: the list of deleted ``ObjectMetadata`` dicts.

    :param session: the session to delete (``start.output``, an ``ObjectId``, a dict or
        ``"scope/identifier:version"``), or a list of those (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param scope: with ``session_id`` (or a ``"identifier"`` without scope): the session scope, default
        ``"default"`` (templated).
    :param version: with ``session_id``: only this version (default: every version) (templated).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    :param hook_params: per-task overrides of the connection's ``timeout`` (seconds, ``(connect, read)`` or
        ``'connect,read'``) and ``max_retries``, e.g. ``{"timeout": (10, 900), "max_retries": 2}``.
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session", "session_id", "scope", "version")
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json"}

    def __init__(
        self,
        *,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        version: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.session_id = session_id
        self.scope = scope
        self.version = version
        if all(is_resolved(v) for v in (session, session_id, scope, version)):
            self._sessions()

    def _sessions(self) -> list[ObjectId]:
        """The sessions to delete; validates every argument."""
        tid = self.task_id
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=tid)
        version = coerce_name(self.version, kind="version", argument="version", task_id=tid)
        session = self.session if self.session != "" else None
        if session is None and not self.session_id:
            raise CandelaInputError(
                f"Task '{tid}' has nothing to delete: pass `session=start.output` (or `session_id=`); to delete "
                "sessions by age, user or identifier prefix use CandelaCleanupSessionsOperator."
            )
        if isinstance(session, list | tuple):
            if self.session_id or version:
                raise CandelaInputError(
                    f"Task '{tid}': with a list of sessions in `session`, do not pass `session_id` or `version`."
                )
            return [
                coerce_session(item, session_id=None, scope=scope, task_id=tid, argument=f"session[{i}]")
                for i, item in enumerate(session)
            ]
        return [coerce_session(session, session_id=self.session_id, scope=scope, version=version, task_id=tid)]

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Delete the given sessions; return the deleted versions' metadata."""
        oids = self._sessions()
        out: list[dict[str, Any]] = []
        with self._task_hook() as hook:
            for oid in oids:
                if not hook.session_exists(oid):
                    self.log.warning("Session %s does not exist; nothing to delete.", oid)
                    continue
                for meta in _delete_present(hook, oid, self.log):
                    _log_deleted(self.log, meta)
                    out.append(meta.model_dump(mode="json"))
        return out


class CandelaCleanupSessionsOperator(CandelaOperator):
    """Delete every stored session version that matches all the given filters (a cleanup job).

    At least one filter is required; ``older_than=0`` matches every session.  Cleanup may delete a
    session another DAG is still using if it matches the filters: narrow them with ``scope``,
    ``created_by`` or ``identifier_prefix``.  A version that is gone by the time it is deleted (404:
    an overlapping cleanup deleted it first) is skipped, not counted as deleted.  A version that cannot
    be deleted is logged and the others are still deleted; the task then fails, naming the versions
    that were left.

    XCom return value: the list of ``ObjectMetadata`` dicts this task deleted (with ``dry_run``: that
    would be deleted).

    :param older_than: sessions created longer ago than this: a ``timedelta``, a number of seconds, or
        ``"7d"``/``"12h"``/``"30m"``/``"45s"`` (templated); beyond ``timedelta.max`` (``float("inf")``)
        it is ``timedelta.max``, which no session is older than.
    :param scope: sessions in this scope (templated).
    :param created_by: sessions created by this user (templated).
    :param identifier_prefix: sessions whose identifier starts with this (templated).
    :param dry_run: only list (and log) what would be deleted: a bool, or ``"true"``/``"false"`` from a
        template (templated, as the attribute ``dry_run_flag``: ``BaseOperator.dry_run`` is a method).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    :param hook_params: per-task overrides of the connection's ``timeout`` (seconds, ``(connect, read)`` or
        ``'connect,read'``) and ``max_retries``, e.g. ``{"timeout": (10, 900), "max_retries": 2}``.
    """

    template_fields: Sequence[str] = (
        "candela_conn_id",
        "older_than",
        "scope",
        "created_by",
        "identifier_prefix",
        "dry_run_flag",
    )

    def __init__(
        self,
        *,
        older_than: timedelta | float | str | None = None,
        scope: str | None = None,
        created_by: str | None = None,
        identifier_prefix: str | None = None,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # inf is timedelta.max (see coerce_older_than); as given, it is no JSON for Airflow's rendered fields
        self.older_than = timedelta.max if older_than == math.inf else older_than
        self.scope = scope
        self.created_by = created_by
        self.identifier_prefix = identifier_prefix
        self.dry_run_flag = dry_run  # not ``dry_run``: ``BaseOperator.dry_run`` is a method
        self._check_now(dry_run, lambda v: coerce_bool(v, argument="dry_run", task_id=self.task_id))
        if all(is_resolved(v) for v in (older_than, scope, created_by, identifier_prefix)):
            self._filters()

    def _filters(self) -> dict[str, Any]:
        """The filters that are set; validates every argument."""
        tid = self.task_id
        filters = {
            "older_than": coerce_older_than(self.older_than, task_id=tid),
            "scope": coerce_name(self.scope, kind="scope", argument="scope", task_id=tid),
            "created_by": coerce_optional_name(self.created_by, argument="created_by", task_id=tid),
            "identifier_prefix": coerce_optional_name(
                self.identifier_prefix, argument="identifier_prefix", task_id=tid
            ),
        }
        filters = {name: value for name, value in filters.items() if value is not None}
        if not filters:
            raise CandelaInputError(
                f"Task '{tid}' has no cleanup filter: pass at least one of `older_than`, `scope`, `created_by`, "
                "`identifier_prefix` (`older_than=0` matches every session); to delete given sessions use "
                "CandelaDeleteSessionOperator."
            )
        return filters

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Delete (or with ``dry_run`` list) the matching session versions; return their metadata."""
        filters = self._filters()
        dry_run = coerce_bool(self.dry_run_flag, argument="dry_run", task_id=self.task_id)
        now = datetime.now(UTC)
        with self._task_hook() as hook:
            candidates = [m for m in hook.list_sessions(all_versions=True) if _matches(m, filters, now)]
            self.log.info(
                "%s %d stored session version(s) matching %s.",
                "[dry run] Would delete" if dry_run else "Deleting",
                len(candidates),
                ", ".join(f"{k}={v}" for k, v in filters.items()),
            )
            if dry_run:
                for meta in candidates:
                    _log_deleted(self.log, meta, dry_run=True)
                return [meta.model_dump(mode="json") for meta in candidates]
            out: list[dict[str, Any]] = []
            failures: list[str] = []
            for meta in candidates:
                try:
                    deleted = _delete_present(hook, meta.obj_id, self.log)
                except CandelaCancelledError:
                    raise
                except CandelaError as err:
                    self.log.error("Could not delete session %s: %s", meta.obj_id, err)
                    failures.append(f"{meta.obj_id}: {err}")
                    continue
                for gone in deleted:
                    _log_deleted(self.log, gone)
                    out.append(gone.model_dump(mode="json"))
        if failures:
            raise CandelaError(
                f"Task '{self.task_id}' deleted {len(out)} session version(s) but failed on {len(failures)}: "
                + "; ".join(failures[:5])
                + (" ..." if len(failures) > 5 else "")
            )
        return out


def _delete_present(hook: CandelaHook, oid: ObjectId, log: Any) -> list[ObjectMetadata]:
    """Delete ``oid``; a 404 means it is already gone (another task deleted it first): nothing deleted."""
    try:
        return hook.delete_session(oid)
    except CandelaApiError as err:
        if err.status != 404:
            raise
        log.info("Session %s is already gone (deleted by another task?); nothing to delete.", oid)
        return []


def _log_deleted(log: Any, meta: ObjectMetadata, *, dry_run: bool = False) -> None:
    prefix = "[dry run] Would delete" if dry_run else "Deleted"
    log.info("%s session %s (created %s by %s).", prefix, meta.obj_id, meta.created_at, meta.created_by)


def _matches(meta: ObjectMetadata, filters: Mapping[str, Any], now: datetime) -> bool:
    """Whether ``meta`` matches every filter that is set."""
    if "scope" in filters and meta.obj_id.scope != filters["scope"]:
        return False
    if "created_by" in filters and meta.created_by != filters["created_by"]:
        return False
    if "identifier_prefix" in filters and not meta.obj_id.identifier.startswith(filters["identifier_prefix"]):
        return False
    return not ("older_than" in filters and now - as_utc(meta.created_at) < filters["older_than"])
