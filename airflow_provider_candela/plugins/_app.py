"""The backend of the Candela page: a FastAPI app whose every route is guarded by Airflow's auth manager.

Only imported on Airflow 3.1+ (by :mod:`.candela_page`).  The hook and the ORM are imported inside the routes.
Each call to Candela is made with ``max_retries=0``: a slow or broken Candela answers within the connection's
own timeout, with the hook's (scrubbed) error message, and the page stays usable.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from airflow_provider_candela.exceptions import CandelaError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectMetadata

CONN_TYPE = "candela"
PAGE = Path(__file__).with_name("candela_page.html")


def _guard(method: str) -> Any:
    from airflow.api_fastapi.core_api.security import requires_access_connection

    return Depends(requires_access_connection(method=method))  # type: ignore[arg-type]


def _candela_conn_ids() -> list[str]:
    """The ids of the connections of type ``candela`` in Airflow's database, sorted."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return sorted(session.scalars(select(Connection.conn_id).where(Connection.conn_type == CONN_TYPE)))


def _hook(conn_id: str) -> CandelaHook:
    from airflow_provider_candela.hooks.candela import CandelaHook

    if conn_id not in _candela_conn_ids():
        raise HTTPException(404, f"There is no connection {conn_id!r} of type {CONN_TYPE!r}")
    return CandelaHook(conn_id, max_retries=0)


def _error(hook: CandelaHook, exc: Exception) -> str:
    """The hook's message of ``exc``, secrets scrubbed (never a traceback)."""
    text = str(exc) if isinstance(exc, CandelaError) else f"{type(exc).__name__}: {exc}"
    return hook._scrub(text)


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
    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import SlotState

    hook = CandelaHook(conn_id, max_retries=0)
    row: dict[str, Any] = {"conn_id": conn_id}
    try:
        with hook:
            cfg = hook.config
            row.update(base_url=cfg.base_url, slot_type_default=cfg.slot_type)
            row["identity"] = "personal access token" if cfg.uses_pat else cfg.username
            slot = hook.get_slot_metadata() if hook.user_has_slot() else None
            sessions = hook.list_sessions()
            row["stored_sessions"] = len(sessions)
            row["slot"] = None
            row["session"] = None
            if slot is not None:
                state = SlotState(slot.state) if slot.state is not None else hook.get_slot_state()
                since = slot.ready or slot.assigned or slot.created
                row["slot"] = {
                    "slot_id": slot.slot_id,
                    "slot_type": slot.slot_type,
                    "state": state.label,
                    "failed": state.failed,
                    "since": since.isoformat() if since else None,
                }
                owner = slot.assigned_to or cfg.username
                row["identity"] = row["identity"] if cfg.username else owner
                row["session"] = _latest_on_slot(hook, sessions, owner, since)
    except Exception as exc:
        row["error"] = _error(hook, exc)
    return row


def _latest_on_slot(
    hook: CandelaHook, sessions: list[ObjectMetadata], owner: str | None, since: datetime | None
) -> dict[str, Any] | None:
    """The newest session the slot's user started since the slot was assigned (Candela runs one at a time)."""
    from airflow_provider_candela._validation import as_utc

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
    """Run ``action`` on a hook of ``conn_id``; ``{"ok", "message"}`` with the hook's scrubbed error on failure."""
    hook = _hook(conn_id)
    try:
        with hook:
            return {"ok": True, "message": action(hook)}
    except Exception as exc:
        return {"ok": False, "message": _error(hook, exc)}


def _filtered(
    sessions: list[ObjectMetadata], scope: str | None, prefix: str | None, older_than_hours: float | None
) -> Iterator[ObjectMetadata]:
    from airflow_provider_candela._validation import as_utc

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
    def connections() -> dict[str, Any]:
        ids = _candela_conn_ids()
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
        hook = _hook(connection_id)
        try:
            with hook:
                found = list(
                    _filtered(hook.list_sessions(all_versions=True), scope, identifier_prefix, older_than_hours)
                )
        except Exception as exc:
            return {"error": _error(hook, exc), "total": 0, "sessions": []}
        found.sort(key=lambda m: m.created_at, reverse=True)
        return {"total": len(found), "offset": offset, "sessions": [_meta(m) for m in found[offset : offset + limit]]}

    @app.post("/api/connections/{connection_id}/stop", dependencies=[_guard("PUT")])
    def stop(connection_id: str) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            hook.stop_session()
            return f"Stopped the session running on the slot of {connection_id!r} (if one ran)."

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
            return f"Asked Candela for a slot of type {kind!r} for {connection_id!r}."

        return _act(connection_id, run)

    @app.delete("/api/connections/{connection_id}/sessions", dependencies=[_guard("DELETE")])
    def delete(connection_id: str, sessions: Annotated[list[dict[str, Any]], Body(embed=True)]) -> dict[str, Any]:
        from airflow_provider_candela.models import ObjectId

        def run(hook: CandelaHook) -> str:
            gone = [m for item in sessions for m in hook.delete_session(ObjectId.model_validate(item))]
            return f"Deleted {len(gone)} session version(s): " + ", ".join(str(m.obj_id) for m in gone)

        return _act(connection_id, run)

    return app
