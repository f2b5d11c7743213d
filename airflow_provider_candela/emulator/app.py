"""The emulated Candela Gen A API (SessionsApi, UserSlotsApi, OAuth2 token endpoint) and its controls."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from airflow_provider_candela.emulator.config import EmulatorConfig
from airflow_provider_candela.emulator.middleware import EmulatorMiddleware, drop_connection
from airflow_provider_candela.emulator.responses import agent_events, find_canned, pipeline_result
from airflow_provider_candela.emulator.state import ApiError, EmulatorState
from airflow_provider_candela.models import (
    DevSessionStartRequest,
    ObjectMetadata,
    SessionStartRequest,
    SubmitPrompt,
)

__all__ = ["create_app"]

_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_TRUE = b"true"
_FALSE = b"false"
_CONFIG_KEYS = {"event_delay", "token_ttl", "slot_startup_seconds", "slot_start_fails", "agent_chat_events"}


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status_code=status, media_type=_JSON)


def _model_list(items: list[ObjectMetadata]) -> Response:
    return Response(b"[" + b",".join(item.model_dump_json().encode() for item in items) + b"]", media_type=_JSON)


def _api_error_response(exc: ApiError) -> JSONResponse:
    content = exc.detail if isinstance(exc.detail, dict) and "error" in exc.detail else {"detail": exc.detail}
    return JSONResponse(content, status_code=exc.status, headers=exc.headers)


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else (None, None)


async def current_user(request: Request) -> str:
    """The authenticated caller (FastAPI dependency): 401 for a missing, unknown or expired token."""
    state: EmulatorState = request.app.state.emulator
    try:
        return state.authenticate(request.headers.get("authorization"))
    except ApiError as exc:
        raise HTTPException(exc.status, exc.detail, headers=exc.headers) from None


# Module level: FastAPI resolves these (string) annotations in the module's globals.
User = Annotated[str, Depends(current_user)]
ScopeQ = Annotated[str, Query(description="Scope of the session")]
IdentifierQ = Annotated[str, Query(description="Identifier of the session")]
VersionQ = Annotated[str | None, Query(description="Version; omitted = latest (or all, for delete)")]


def create_app(config: EmulatorConfig) -> FastAPI:
    """Build the emulator's ASGI app; its state lives in ``app.state.emulator`` (an EmulatorState)."""
    state = EmulatorState(config)
    app = FastAPI(
        title="Candela emulator",
        description="A local emulation of the FINBOURNE Candela Gen A Sessions API, for tests and demos.",
        openapi_url="/_emulator/openapi.json",
        docs_url="/_emulator/docs",
        redoc_url=None,
    )
    app.state.emulator = state

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid_body(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's 422, rendered as ASCII JSON: its own handler fails on a lone surrogate in the input.
        return _json({"detail": jsonable_encoder(exc.errors())}, status=422)

    # ------------------------------------------------------------------ OAuth2
    @app.post("/oauth2/token", tags=["auth"])
    async def token(request: Request) -> Response:
        """Password grant and refresh grant (form-encoded), as the FINBOURNE SDK sends them."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise ApiError(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Send the token request as application/x-www-form-urlencoded",
                },
            )
        text = (await request.body()).decode("utf-8", "replace")  # bytes that are not UTF-8: no credentials match
        form = {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
        basic_id, basic_secret = _basic_credentials(request.headers.get("authorization"))
        client_id = basic_id if basic_id is not None else form.get("client_id")
        client_secret = basic_secret if basic_secret is not None else form.get("client_secret")
        grant_type = form.get("grant_type")
        if grant_type == "password":
            state.check_client(client_id, client_secret)
            body = state.password_grant(form.get("username"), form.get("password"))
        elif grant_type == "refresh_token":
            state.check_client(client_id, client_secret)
            body = state.refresh_grant(form.get("refresh_token"))
        else:
            raise ApiError(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"grant_type {grant_type!r} is not supported: use password or refresh_token",
                },
            )
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ------------------------------------------------------------------ SessionsApi
    @app.delete("/sessions/", tags=["Sessions"])
    async def delete_session(user: User, scope: ScopeQ, identifier: IdentifierQ, version: VersionQ = None) -> Response:
        return _model_list(state.delete_session(scope, identifier, version))

    @app.get("/sessions/", tags=["Sessions"])
    async def get_session(user: User, scope: ScopeQ, identifier: IdentifierQ, version: VersionQ = None) -> Response:
        stored = state.get_session(scope, identifier, version)
        return Response(stored.session.model_dump_json(), media_type=_JSON)

    @app.get("/sessions/metadata", tags=["Sessions"])
    async def get_session_metadata(
        user: User, scope: ScopeQ, identifier: IdentifierQ, version: VersionQ = None
    ) -> Response:
        stored = state.get_session(scope, identifier, version)
        return Response(stored.metadata.model_dump_json(), media_type=_JSON)

    @app.get("/sessions/list", tags=["Sessions"])
    async def list_sessions(user: User, all_versions: bool = False) -> Response:
        return _model_list(state.list_sessions(all_versions))

    @app.get("/sessions/exists", tags=["Sessions"])
    async def session_exists(user: User, scope: ScopeQ, identifier: IdentifierQ, version: VersionQ = None) -> Response:
        return Response(_TRUE if state.session_exists(scope, identifier, version) else _FALSE, media_type=_JSON)

    @app.post("/session", tags=["Sessions"])
    async def start_session(user: User, body: SessionStartRequest) -> Response:
        return Response(state.start_session(user, body).model_dump_json(), media_type=_JSON)

    @app.post("/session/dev", tags=["Sessions"])
    async def start_dev_session(user: User, body: DevSessionStartRequest) -> Response:
        return Response(state.start_dev_session(user, body).model_dump_json(), media_type=_JSON)

    @app.get("/session/stop", tags=["Sessions"], status_code=204)
    async def stop_session(user: User) -> Response:
        state.stop_session(user)
        return Response(status_code=204)

    @app.post("/session/pipeline_submit", tags=["Sessions"])
    async def submit_pipeline_prompt(user: User, body: SubmitPrompt) -> Response:
        stored = state.prompt_target(user, body.scope, body.session_id, "pipeline")
        canned = find_canned(state.catalog.responses, _app_key(stored.app_label), body.prompt, agent=False)
        result = canned.pipeline if canned is not None else None
        if result is None:
            result = pipeline_result(body.prompt, stored.app_label, body.session_id)
        return _json({"metadata": {"request_id": str(uuid.uuid4())}, "result": result})

    @app.post("/session/agent_submit", tags=["Sessions"])
    async def submit_prompt_to_agent(request: Request, user: User, body: SubmitPrompt) -> StreamingResponse:
        stored = state.prompt_target(user, body.scope, body.session_id, "agent")
        canned = find_canned(state.catalog.responses, _app_key(stored.app_label), body.prompt, agent=True)
        prompt = body.prompt
        session = state.running.get(user)

        async def stream() -> AsyncIterator[bytes]:
            events = iter(canned.events or ()) if canned is not None else agent_events(prompt, config.agent_chat_events)
            for event_type, content in events:
                delay = config.event_delay
                if delay > 0:
                    await asyncio.sleep(delay)
                if state.running.get(user) != session:
                    # The session was stopped (or replaced): its answer breaks off, as a real session's does.
                    await drop_connection(request.scope)
                    return
                line = json.dumps({"event_type": event_type, "content": content}, separators=(",", ":"))
                yield line.encode() + b"\n"

        return StreamingResponse(stream(), media_type=_NDJSON)

    # ------------------------------------------------------------------ UserSlotsApi
    @app.put("/slot", tags=["UserSlots"], status_code=204)
    async def assign_slot(user: User, slot_type: Annotated[str, Query()]) -> Response:
        state.assign_slot(user, slot_type)
        return Response(status_code=204)

    @app.delete("/slot", tags=["UserSlots"], status_code=204)
    async def dispose_slot(user: User) -> Response:
        state.dispose_slot(user)
        return Response(status_code=204)

    @app.get("/slot/state", tags=["UserSlots"])
    async def get_slot_state(user: User) -> Response:
        return Response(str(state.slot_state(user)), media_type=_JSON)

    @app.get("/slot/metadata", tags=["UserSlots"])
    async def get_slot_metadata(user: User) -> Response:
        return Response(state.slot_metadata(user).model_dump_json(), media_type=_JSON)

    @app.get("/slot/user_has_slot", tags=["UserSlots"])
    async def user_has_slot(user: User) -> Response:
        return Response(_TRUE if user in state.slots else _FALSE, media_type=_JSON)

    # ------------------------------------------------------------------ test controls
    @app.get("/_emulator/stats", tags=["emulator"])
    async def stats() -> Response:
        return _json(state.snapshot())

    @app.post("/_emulator/reset", tags=["emulator"])
    async def reset() -> Response:
        state.reset()
        return _json({"reset": True})

    @app.get("/_emulator/faults", tags=["emulator"])
    async def list_faults() -> Response:
        return _json([fault.to_json() for fault in state.faults])

    @app.post("/_emulator/faults", tags=["emulator"], status_code=201)
    async def add_fault(request: Request) -> Response:
        raw = await _json_body(request)
        try:
            fault = state.add_fault(raw)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return _json(fault.to_json(), status=201)

    @app.delete("/_emulator/faults", tags=["emulator"])
    async def clear_faults() -> Response:
        cleared = len(state.faults)
        state.faults.clear()
        return _json({"cleared": cleared})

    @app.get("/_emulator/tokens", tags=["emulator"])
    async def issued_tokens() -> Response:
        """Every access and refresh token issued since the last reset (tests check that none leaks)."""
        return _json(state.issued_tokens())

    @app.post("/_emulator/expire_tokens", tags=["emulator"])
    async def expire_tokens() -> Response:
        return _json({"expired": state.expire_tokens()})

    @app.get("/_emulator/config", tags=["emulator"])
    async def get_config() -> Response:
        return _json(_public_config(config))

    @app.patch("/_emulator/config", tags=["emulator"])
    async def patch_config(request: Request) -> Response:
        raw = await _json_body(request)
        if not isinstance(raw, dict) or set(raw) - _CONFIG_KEYS:
            raise ApiError(400, f"config accepts a JSON object with keys {sorted(_CONFIG_KEYS)}")
        for key, value in raw.items():
            if key == "agent_chat_events":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise ApiError(400, "agent_chat_events must be a non-negative integer or null")
            elif key == "slot_start_fails":
                if not isinstance(value, bool):
                    raise ApiError(400, "slot_start_fails must be true or false")
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ApiError(400, f"{key} must be a non-negative number of seconds")
        for key, value in raw.items():
            keep = key in ("agent_chat_events", "slot_start_fails") or value is None
            setattr(config, key, value if keep else float(value))
        return _json(_public_config(config))

    @app.get("/_emulator/users", tags=["emulator"])
    async def list_users() -> Response:
        return _json(sorted(state.users))

    @app.post("/_emulator/users", tags=["emulator"], status_code=201)
    async def add_user(request: Request) -> Response:
        raw = await _json_body(request)
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("username"), str)
            or not raw["username"]
            or not isinstance(raw.get("password"), str)
        ):
            raise ApiError(400, 'send {"username": "...", "password": "..."}')
        state.users[raw["username"]] = raw["password"]
        return _json({"username": raw["username"]}, status=201)

    app.add_middleware(EmulatorMiddleware, state=state)
    return app


def _app_key(app_label: str) -> str:
    return app_label.split(":", 1)[0]


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "the body must be JSON") from None


def _public_config(config: EmulatorConfig) -> dict[str, Any]:
    return {
        "domain": config.domain,
        "username": config.username,
        "token_ttl": config.token_ttl,
        "slot_startup_seconds": config.slot_startup_seconds,
        "slot_start_fails": config.slot_start_fails,
        "event_delay": config.event_delay,
        "agent_chat_events": config.agent_chat_events,
        "slot_types": list(config.catalog.slot_types),
        "apps": [f"{a.scope}/{a.identifier}:{a.versions[-1]} ({a.kind})" for a in config.catalog.apps.values()],
        "models": [f"{m.scope}/{m.identifier}:{m.versions[-1]}" for m in config.catalog.models.values()],
    }
