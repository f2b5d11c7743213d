"""The backend of the Candela page: a FastAPI app whose every route is guarded by Airflow's auth manager.

Imported by the API server on the page's first request (:class:`.candela_page.CandelaPageApp`), never at
plugin load.  What it guards against:

* **Forged actions.**  Every request that changes something (any method but GET and HEAD) must come from the
  page itself (:func:`refuse_forgery`, one dependency of the whole app): ``Content-Type: application/json``
  with a JSON body and the header ``X-Candela-Page: 1``, which neither an HTML form nor a ``no-cors`` fetch of
  another origin can send, and, where the browser says where the request comes from, ``Sec-Fetch-Site:
  same-origin`` and an ``Origin`` of the API server itself.
* **A stalled Candela.**  The routes are ``async``: the Airflow database reads run on the API server's worker
  threads as Airflow's own routes do, but every call to Candela runs on the page's own bounded pool
  (:class:`CandelaCalls`), at most :data:`PER_CONNECTION` at once per connection and :data:`POOL_SIZE` in all,
  never queued (a call beyond that is answered at once with :data:`BUSY`), each answer cut off at the
  connection's timeout (connect + read) or :data:`LONGEST_WAIT`, whichever comes first, with a message saying
  so.  Each call is made with ``max_retries=0``.
* **Any value typed into the page** is answered or refused with a 4xx (the bounds of the query parameters).
* **No documentation pages** (no Swagger UI, no ReDoc, which load their scripts from a CDN) and a
  Content-Security-Policy on the page that lets it load nothing from elsewhere and be framed by its own
  origin only.  Every route but ``/openapi.json`` needs a login.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_connection
from airflow.configuration import conf
from airflow.models.connection import Connection
from airflow.utils.session import create_session
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
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

CONN_TYPE: Final = "candela"
PAGE: Final = Path(__file__).with_name("candela_page.html")
#: The header the page sends with every request; one that changes something is refused without it.
PAGE_HEADER: Final = "X-Candela-Page"
#: Calls to Candela the page runs at once, in all (threads of its own pool) ...
POOL_SIZE: Final = 16
#: ... and for one connection, so that one stalled Candela leaves room for the others.
PER_CONNECTION: Final = 4
#: The longest the page waits for one answer (seconds), however long the connection's timeout.
LONGEST_WAIT: Final = 30.0
BUSY: Final = (
    "The Candela page is busy: {running} call(s) to Candela are still waiting for an answer ({here} for "
    "connection {conn_id!r}; the page runs at most {per_connection} per connection and {size} in all, each for at "
    "most {longest:g} s). Refresh in a moment"
)
#: Rows of one answer of the connection list read at once (the others wait for them, not for other answers).
ROWS_AT_ONCE: Final = 8
#: Bounds of what a person can type into the filters (a longer text is refused with 422).
LONGEST_FILTER: Final = 256
#: Session versions one delete may name (the page shows at most 500 at once).
MOST_DELETED: Final = 500


async def refuse_forgery(request: Request) -> None:
    """Refuse (403, 415 or 400) a request that changes something unless the page itself sent it.

    Reads (GET, HEAD) pass.  Any other method needs what a cross-origin HTML form or a ``no-cors`` fetch cannot
    send, as the user's cookie would go along with it (Airflow's cookie is ``SameSite=Lax``, sent by another
    port of the same host too): the header ``X-Candela-Page: 1`` and ``Content-Type: application/json`` with a
    JSON body.  Where the browser says where the request comes from, it must be the API server's own origin:
    ``Sec-Fetch-Site: same-origin`` (the Airflow UI shows the page in an iframe of its own origin, which is
    same-origin too) and an ``Origin`` equal to the request's own or to ``[api] base_url``'s.
    """

    if request.method in ("GET", "HEAD"):
        return
    refused = "The Candela page refused this request"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise HTTPException(
            403, f"{refused}: it comes from another origin (Sec-Fetch-Site: {site}). Use the page itself"
        )
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in _own_origins(request):
        raise HTTPException(403, f"{refused}: it comes from another origin (Origin: {origin}). Use the page itself")
    if request.headers.get(PAGE_HEADER) != "1":
        raise HTTPException(403, f"{refused}: it lacks the header {PAGE_HEADER}: 1 that the page sends")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, f"{refused}: it needs Content-Type: application/json and a JSON body, e.g. {{}}")
    try:
        json.loads(await request.body())
    except ValueError:
        raise HTTPException(400, f"{refused}: its body is not JSON (send {{}} when there is nothing to say)") from None


def _own_origins(request: Request) -> set[str]:
    """The origins of the API server: the request's own (scheme and Host) and that of ``[api] base_url``."""
    origins = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    if base.scheme and base.netloc:
        origins.add(f"{base.scheme}://{base.netloc}".lower())
    return origins


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


def _message(hook: CandelaHook, exc: Exception) -> str:
    """What to show for ``exc`` raised by a call of ``hook``: its message, secrets scrubbed, never a traceback."""
    if hook.cancelled:
        text = hook.cancelled
    elif isinstance(exc, CandelaError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return hook.scrub(text)


def _loaded(conn_id: str) -> tuple[CandelaHook, str | None]:
    """A hook of ``conn_id`` with its connection read (a database read): ``(hook, None)`` or ``(hook, why not)``."""
    hook = CandelaHook(conn_id, max_retries=0)
    try:
        hook.config  # noqa: B018 - reads and checks the connection here, not on the page's pool
    except Exception as exc:
        return hook, _message(hook, exc)
    return hook, None


def _readable_hooks(user: BaseUser) -> list[tuple[CandelaHook, str | None]]:
    return [_loaded(conn_id) for conn_id in _candela_conn_ids(user)]


def _candela_hook(conn_id: str) -> tuple[CandelaHook, str | None]:
    """:func:`_loaded` for the ``candela`` connection ``conn_id`` (404 when there is none)."""
    with create_session() as session:
        conn_type = session.scalar(select(Connection.conn_type).where(Connection.conn_id == conn_id))
    if conn_type != CONN_TYPE:
        raise HTTPException(404, f"There is no connection {conn_id!r} of type {CONN_TYPE!r}")
    return _loaded(conn_id)


def _in_thread(hook: CandelaHook, work: Callable[[CandelaHook], T]) -> tuple[T | None, str | None]:
    try:
        with hook:
            return work(hook), None
    except Exception as exc:
        return None, _message(hook, exc)


def _deadline(hook: CandelaHook) -> tuple[float, str]:
    """How long the page waits for ``work(hook)`` and what it says once that has passed."""
    connect, read = hook.config.timeout
    timeout = connect + read
    where = f"Candela at {hook.config.base_url} did not answer"
    if timeout <= LONGEST_WAIT:
        return timeout, (
            f"{where} within {timeout:g} s, the timeout of connection {hook.candela_conn_id!r} ({connect:g} s to "
            f"connect + {read:g} s to read). Refresh to ask again"
        )
    return LONGEST_WAIT, (
        f"{where} within {LONGEST_WAIT:g} s, the longest the Candela page waits for an answer (the timeout of "
        f"connection {hook.candela_conn_id!r} is {timeout:g} s). Refresh to ask again"
    )


class CandelaCalls:
    """The page's own threads for calls to Candela: bounded, never queued, each answer within a deadline.

    The API server's shared worker threads serve Airflow's UI, REST API and Execution API; a Candela that
    accepts connections and never answers must hold none of them.  Here it holds at most ``per_connection``
    threads of this pool; further calls for it are answered at once with :data:`BUSY`, and each call ends at
    its deadline (:func:`_deadline`): the hook is cancelled, which unblocks its read, and the thread is free.
    """

    def __init__(self, size: int, per_connection: int) -> None:
        self._size = size
        self._per_connection = per_connection
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="candela-page")
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def _admit(self, conn_id: str) -> str | None:
        """None when a thread is free for ``conn_id`` (then counted as running), else :data:`BUSY` filled in."""
        with self._lock:
            if self._running[conn_id] < self._per_connection and self._running.total() < self._size:
                self._running[conn_id] += 1
                return None
            running, here = self._running.total(), self._running[conn_id]
        return BUSY.format(
            running=running,
            here=here,
            conn_id=conn_id,
            per_connection=self._per_connection,
            size=self._size,
            longest=LONGEST_WAIT,
        )

    def _release(self, conn_id: str) -> None:
        with self._lock:
            self._running[conn_id] -= 1
            if not self._running[conn_id]:
                del self._running[conn_id]

    async def outcome(self, hook: CandelaHook, work: Callable[[CandelaHook], T]) -> tuple[T | None, str | None]:
        """``(work(hook), None)``, or ``(None, message)``: Candela's error, the deadline passed, or busy."""
        conn_id = hook.candela_conn_id
        busy = self._admit(conn_id)
        if busy is not None:
            return None, busy
        budget, reason = _deadline(hook)
        try:
            job = self._executor.submit(_in_thread, hook, work)
        except BaseException:
            self._release(conn_id)
            raise
        job.add_done_callback(lambda _: self._release(conn_id))
        answer = asyncio.wrap_future(job)
        try:
            await asyncio.wait({answer}, timeout=budget)
        finally:
            if not answer.done():  # the deadline passed, or the request was abandoned: end its calls now
                hook.cancel(reason)
        if not answer.done():
            # The cancelled hook unblocks its read at once; its own message (or its late result) is the answer.
            await asyncio.wait({answer}, timeout=2.0)
        return answer.result() if answer.done() else (None, hook.scrub(reason))


@cache
def calls() -> CandelaCalls:
    """The pool of the page (one per API server process), created on the first call."""
    return CandelaCalls(POOL_SIZE, PER_CONNECTION)


@cache
def _page() -> tuple[str, dict[str, str]]:
    """The page and its headers: a Content-Security-Policy that allows its own inline script and style only."""
    html = PAGE.read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    policy = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
    )
    return html, {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _meta(meta: ObjectMetadata) -> dict[str, Any]:
    return {
        "scope": meta.obj_id.scope,
        "identifier": meta.obj_id.identifier,
        "version": meta.obj_id.version,
        "created_by": meta.created_by,
        "created_at": meta.created_at.isoformat(),
        "description": meta.description,
    }


async def _summary(hook: CandelaHook, error: str | None) -> dict[str, Any]:
    """One row of the page: identity, slot, the latest session on the slot, stored count; or the error."""
    row: dict[str, Any] = {"conn_id": hook.candela_conn_id}
    if error is None:
        _, error = await calls().outcome(hook, lambda hook: row.update(_state(hook)))
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


async def _act(conn_id: str, action: Callable[[CandelaHook], str]) -> dict[str, Any]:
    """Run ``action`` on a hook of ``conn_id``: ``{"ok", "message"}``, the message saying what happened."""
    hook, error = await anyio.to_thread.run_sync(_candela_hook, conn_id)
    done, error = (None, error) if error is not None else await calls().outcome(hook, action)
    return {"ok": error is None, "message": done if error is None else error}


def _cutoff(older_than_hours: float | None) -> datetime | None:
    """The newest creation time a session may have to be listed; beyond the calendar, older than any session."""
    if older_than_hours is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(hours=older_than_hours)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def _filtered(
    sessions: list[ObjectMetadata], scope: str | None, prefix: str | None, older_than_hours: float | None
) -> Iterator[ObjectMetadata]:
    cutoff = _cutoff(older_than_hours)
    for meta in sessions:
        if scope and meta.obj_id.scope != scope:
            continue
        if prefix and not meta.obj_id.identifier.startswith(prefix):
            continue
        if cutoff is not None and as_utc(meta.created_at) > cutoff:
            continue
        yield meta


FilterText = Annotated[str | None, Query(max_length=LONGEST_FILTER)]


def create_app() -> FastAPI:
    """The app the API server mounts under ``/candela``: no docs pages, every action checked for forgery."""
    app = FastAPI(
        title="Candela",
        description="Slots and sessions of the Candela connections",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(refuse_forgery)],
    )

    @app.get("/", response_class=HTMLResponse, dependencies=[_guard("GET")])
    async def page() -> HTMLResponse:
        html, headers = _page()
        return HTMLResponse(html, headers=headers)

    @app.get("/api/connections", dependencies=[_guard("GET")])
    async def connections(user: GetUserDep) -> dict[str, Any]:
        loaded = await anyio.to_thread.run_sync(_readable_hooks, user)
        rows_at_once = asyncio.Semaphore(ROWS_AT_ONCE)

        async def row(hook: CandelaHook, error: str | None) -> dict[str, Any]:
            async with rows_at_once:
                return await _summary(hook, error)

        return {"connections": list(await asyncio.gather(*(row(hook, error) for hook, error in loaded)))}

    @app.get("/api/connections/{connection_id}/sessions", dependencies=[_guard("GET")])
    async def sessions(
        connection_id: str,
        *,
        scope: FilterText = None,
        identifier_prefix: FilterText = None,
        older_than_hours: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        hook, error = await anyio.to_thread.run_sync(_candela_hook, connection_id)
        stored: list[ObjectMetadata] | None = None
        if error is None:
            stored, error = await calls().outcome(hook, lambda hook: hook.list_sessions(all_versions=True))
        if stored is None:
            return {"error": error, "total": 0, "offset": offset, "sessions": []}
        found = sorted(
            _filtered(stored, scope, identifier_prefix, older_than_hours),
            key=lambda m: as_utc(m.created_at),
            reverse=True,
        )
        return {"total": len(found), "offset": offset, "sessions": [_meta(m) for m in found[offset : offset + limit]]}

    @app.post("/api/connections/{connection_id}/stop", dependencies=[_guard("PUT")])
    async def stop(connection_id: str) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            hook.stop_session()
            return f"Stopped the session running on the slot of {connection_id!r} (nothing to stop if none ran)."

        return await _act(connection_id, run)

    @app.post("/api/connections/{connection_id}/dispose", dependencies=[_guard("PUT")])
    async def dispose(connection_id: str) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            hook.dispose_slot()
            return f"Disposed of the slot of {connection_id!r}."

        return await _act(connection_id, run)

    @app.post("/api/connections/{connection_id}/assign", dependencies=[_guard("PUT")])
    async def assign(
        connection_id: str, slot_type: Annotated[str | None, Body(embed=True, max_length=LONGEST_FILTER)] = None
    ) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            kind = slot_type or hook.config.slot_type
            hook.assign_slot(kind)
            return f"Asked Candela for a slot of type {kind!r} for {connection_id!r}; it starts in a few moments."

        return await _act(connection_id, run)

    @app.delete("/api/connections/{connection_id}/sessions", dependencies=[_guard("DELETE")])
    async def delete(
        connection_id: str,
        sessions: Annotated[list[ObjectId], Body(embed=True, min_length=1, max_length=MOST_DELETED)],
    ) -> dict[str, Any]:
        def run(hook: CandelaHook) -> str:
            gone = [m for oid in sessions for m in hook.delete_session(oid)]
            return f"Deleted {len(gone)} session version(s): " + (", ".join(str(m.obj_id) for m in gone) or "none")

        return await _act(connection_id, run)

    return app
