"""The backend of the Candela page: a FastAPI app whose every route is guarded by Airflow's auth manager.

Imported by the API server on the page's first request (:class:`.candela_page.CandelaPageApp`), never at
plugin load.  Each call to Candela is made with ``max_retries=0``, and all the calls of one answer together
are cut off once the connection's timeout (connect + read) has passed: a slow or broken Candela answers
within that timeout, with the hook's scrubbed error message, and the page stays usable.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_connection
from airflow.models.connection import Connection
from airflow.utils.session import create_session
from fastapi import Body, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from airflow_provider_candela._validation import as_utc
from airflow_provider_candela.exceptions import CandelaError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import ObjectId, ObjectMetadata, SlotData, SlotState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

T = TypeVar("T")

CONN_TYPE = "candela"
PAGE = Path(__file__).with_name("candela_page.html")


def _guard(method: str) -> Any:
    return Depends(requires_access_connection(method=method))  # type: ignore[arg-type]


def _candela_conn_ids(user: BaseUser) -> list[str]:
    """The ids of the connections of type ``candela`` in Airflow's database that ``user`` may read, sorted."""
    with create_session() as session:
        ids = session.scalars(select(Connection.conn_id).where(Connection.conn_type == CONN_TYPE))
        readable = [
            conn_id
            for conn_id in ids
            if get_auth_manager().is_authorized_connection(
                method="GET", details=ConnectionDetails(conn_id=conn_id), user=user
            )
        ]
    return sorted(readable)


def _hook(conn_id: str) -> CandelaHook:
    """A hook of the ``candela`` connection ``conn_id`` (404 when there is none)."""
    with create_session() as session:
        conn_type = session.scalar(select(Connection.conn_type).where(Connection.conn_id == conn_id))
    if conn_type != CONN_TYPE:
        raise HTTPException(404, f"There is no connection {conn_id!r} of type {CONN_TYPE!r}")
    return CandelaHook(conn_id, max_retries=0)


def _within_timeout(hook: CandelaHook, work: Callable[[CandelaHook], T]) -> T:
    """``work(hook)``, cut off (the hook cancelled) once the connection's timeout, connect + read, has passed."""
    connect, read = hook.config.timeout
    budget = connect + read
    reason = (
        f"Candela at {hook.config.base_url} did not answer within {budget:g} s, the timeout of connection "
        f"{hook.candela_conn_id!r} ({connect:g} s to connect + {read:g} s to read). Refresh to ask again"
    )
    timer = threading.Timer(budget, hook.cancel, (reason,))
    timer.daemon = True
    timer.start()
    try:
        with hook:
            return work(hook)
    finally:
        timer.cancel()


def _outcome(hook: CandelaHook, work: Callable[[CandelaHook], T]) -> tuple[T | None, str | None]:
    """``(work(hook), None)``, or ``(None, message)``: the hook's message, secrets scrubbed, never a traceback."""
    try:
        return _within_timeout(hook, work), None
    except Exception as exc:
        if hook.cancelled:
            text = hook.cancelled
        elif isinstance(exc, CandelaError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        return None, hook.scrub(text)


def _meta(meta: ObjectMetadata) -> dict[str, Any]:
    return {
        "scope": meta.obj_id.scope,
        "identifier": meta.obj_id.identifier,
        "version": meta.obj_id.version,
        "created_by": meta.created_by,
        "created_at": meta.created_at.isoformat(),
        "description": meta.description,
    }


def _summary(conn_id: str) -> dict[str, Any]:
    """One row of the page: identity, slot, the latest session on the slot, stored count; or the error."""
    row: dict[str, Any] = {"conn_id": conn_id}
    _, error = _outcome(CandelaHook(conn_id, max_retries=0), lambda hook: row.update(_state(hook)))
    if error is not None:
        row["error"] = error
    return row


def _state(hook: CandelaHook) -> dict[str, Any]:
    cfg = hook.config
    slot = hook.get_slot_metadata() if hook.user_has_slot() else None
    sessions = hook.list_sessions()
    state: dict[str, Any] = {
        "base_url": cfg.base_url,
        "slot_type_default": cfg.slot_type,
        "identity": "personal access token" if cfg.uses_pat else cfg.username,
        "stored_sessions": len(sessions),
        "slot": None,
        "session": None,
    }
    if slot is not None:
        state["slot"] = _slot(hook, slot)
        owner = slot.assigned_to or cfg.username
        if not cfg.username and owner:
            state["identity"] = owner
        state["session"] = _latest_on_slot(hook, sessions, owner, slot.ready or slot.assigned or slot.created)
    return state


def _slot(hook: CandelaHook, slot: SlotData) -> dict[str, Any]:
    state = SlotState(slot.state) if slot.state is not None else hook.get_slot_state()
    since = slot.ready or slot.assigned or slot.created
    return {
        "slot_id": slot.slot_id,
        "slot_type": slot.slot_type,
        "state": state.label,
        "failed": state.failed,
        "since": since.isoformat() if since else None,
    }


def _latest_on_slot(
    hook: CandelaHook, sessions: list[ObjectMetadata], owner: str | None, since: datetime | None
) -> dict[str, Any] | None:
    """The newest session the slot's user started since the slot was assigned (Candela runs one at a time)."""
    mine = [m for m in sessions if m.created_by == owner and (since is None or as_utc(m.created_at) >= as_utc(since))]
    if not mine:
        return None
    newest = max(mine, key=lambda m: as_utc(m.created_at))
    stored = hook.get_session(newest.obj_id)
    return {
        **_meta(newest),
        "app": str(stored.app) if stored.app else "dev circuit",
        "model": str(stored.model_cfg),
    }


def _act(conn_id: str, action: Callable[[CandelaHook], str]) -> dict[str, Any]:
    """Run ``action`` on a hook of ``conn_id``: ``{"ok", "message"}``, the message saying what happened."""
    done, error = _outcome(_hook(conn_id), action)
    return {"ok": error is None, "message": done if error is None else error}


def _filtered(
    sessions: list[ObjectMetadata], scope: str | None, prefix: str | None, older_than_hours: float | None
) -> Iterator[ObjectMetadata]:
    cutoff = None if older_than_hours is None else datetime.now(UTC) - timedelta(hours=older_than_hours)
    for meta in sessions:
        if scope and meta.obj_id.scope != scope:
            continue
        if prefix and not meta.obj_id.identifier.startswith(prefix):
            continue
        if cutoff is not None and as_utc(meta.created_at) > cutoff:
            continue
        yield meta


def create_app() -> FastAPI:
    """The app the API server mounts under ``/candela``."""
    app = FastAPI(title="Candela", description="Slots and sessions of the Candela connections")

    @app.get("/", response_class=HTMLResponse, dependencies=[_guard("GET")])
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/connections", dependencies=[_guard("GET")])
    def connections(user: GetUserDep) -> dict[str, Any]:
        ids = _candela_conn_ids(user)
        with ThreadPoolExecutor(max_workers=min(8, len(ids) or 1)) as pool:
            return {"connections": list(pool.map(_summary, ids))}

    @app.get("/api/connections/{connection_id}/sessions", dependencies=[_guard("GET")])
    def sessions(
        connection_id: str,
        *,
        scope: str | None = None,
        identifier_prefix: str | None = None,
        older_than_hours: Annotated[float | None, Query(ge=0)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        stored, error = _outcome(_hook(connection_id), lambda hook: hook.list_sessions(all_versions=True))
        if stored is None:
            return {"error": error, "total": 0, "offset": offset, "sessions": []}
        found = sorted(
            _filtered(stored, scope, identifier_prefix, older_than_hours),
            key=lambda m: as_utc(m.created_at),
            reverse=True,
        )
        return {"total": len(found), "offset": offset, "sessions": [_meta(m) for m in found[offset : offset + limit]]}

    @app.post("/api/connections/{connection_id}/stop", dependencies=[_guard("PUT")])
    def stop(connection_id: str) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            hook.stop_session()
            return f"Stopped the session running on the slot of {connection_id!r} (nothing to stop if none ran)."

        return _act(connection_id, run)

    @app.post("/api/connections/{connection_id}/dispose", dependencies=[_guard("PUT")])
    def dispose(connection_id: str) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            hook.dispose_slot()
            return f"Disposed of the slot of {connection_id!r}."

        return _act(connection_id, run)

    @app.post("/api/connections/{connection_id}/assign", dependencies=[_guard("PUT")])
    def assign(connection_id: str, slot_type: Annotated[str | None, Body(embed=True)] = None) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            kind = slot_type or hook.config.slot_type
            hook.assign_slot(kind)
            return f"Asked Candela for a slot of type {kind!r} for {connection_id!r}; it starts in a few moments."

        return _act(connection_id, run)

    @app.delete("/api/connections/{connection_id}/sessions", dependencies=[_guard("DELETE")])
    def delete(
        connection_id: str, sessions: Annotated[list[ObjectId], Body(embed=True, min_length=1)]
    ) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            gone = [m for oid in sessions for m in hook.delete_session(oid)]
            return f"Deleted {len(gone)} session version(s): " + (", ".join(str(m.obj_id) for m in gone) or "none")

        return _act(connection_id, run)

    return app
