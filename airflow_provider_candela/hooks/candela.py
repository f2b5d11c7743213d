"""CandelaHook: an Airflow connection -> authenticated HTTP -> the wire models of :mod:`models`.

One hook = one validated configuration, one ``requests.Session`` (keep-alive) and one cached
bearer token.  Every endpoint of the Gen A Sessions and Slots APIs is a typed method returning
models, never a ``requests.Response``.  Retries (tenacity) honour ``Retry-After``; calls that
start a session are reconciled instead of being replayed blindly, and prompts are never replayed
once the server may have received them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import TypeAdapter

from airflow_provider_candela._validation import (
    IF_SESSION_RUNNING,
    as_utc,
    coerce_choice,
    coerce_model,
    coerce_name,
    coerce_object_id,
    coerce_positive_seconds,
    coerce_prompt,
)
from airflow_provider_candela.connection_form import form_widgets, ui_field_behaviour
from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaError,
    CandelaResponseError,
    CandelaSessionRunningError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks._config import DEFAULT_SLOT_TYPE
from airflow_provider_candela.hooks._http import SESSION_RUNNING, Ambiguous, Call, CandelaHttpCore
from airflow_provider_candela.hooks._retry import (
    Retryable,
    call_with_retries,
    retry_reason,
)
from airflow_provider_candela.hooks._stream import CandelaEventStream
from airflow_provider_candela.hooks._telemetry import count, route, timing
from airflow_provider_candela.hooks._transport import Exchange
from airflow_provider_candela.models import (
    AgentAnswer,
    CircuitDTO,
    DevSessionStartRequest,
    Directive,
    ObjectId,
    ObjectMetadata,
    PipelineAnswer,
    Session,
    SessionRef,
    SessionStartRequest,
    SlotData,
    SlotState,
    SubmitPrompt,
    ToolModule,
)

__all__ = ["CandelaEventStream", "CandelaHook"]

_OBJECT_METADATA = TypeAdapter(ObjectMetadata)
_OBJECT_METADATA_LIST = TypeAdapter(list[ObjectMetadata])
_SESSION = TypeAdapter(Session)
_SLOT_DATA = TypeAdapter(SlotData)
_BOOL = TypeAdapter(bool)
_INT = TypeAdapter(int)
_PIPELINE_ANSWER = TypeAdapter(PipelineAnswer)

#: Longest a connection test (the UI's "Test" button) may take, retries included.
TEST_CONNECTION_DEADLINE: Final = 20.0

#: Longest a best-effort stop takes (:meth:`CandelaHook.stop_session_best_effort`), a watch for a late start
#: included: within the time Airflow leaves a killed task to clean up.
CLEANUP_BUDGET: Final = 25.0
#: Seconds between two looks for the session of a start that got no answer.
LATE_START_POLL: Final = 0.5

#: Clock skew tolerated when looking for a session started by a lost request (server clock known).
RECONCILE_SKEW: Final = 2.0
#: Same, when the server sent no ``Date`` header to measure its clock against ours.
RECONCILE_SKEW_UNKNOWN_CLOCK: Final = 30.0


@dataclass(frozen=True)
class _UnansweredStart:
    """A start call sent without an answer yet: Candela may still carry it out."""

    what: str
    began: float
    matches: Callable[[Session], bool]
    deadline: float


class CandelaHook(CandelaHttpCore):
    """Talk to the FINBOURNE Candela Sessions API through an Airflow connection.

    The connection (type ``candela``): ``host`` is the API base URL
    (``https://<domain>.lusid.com/candela``), ``login``/``password`` the FINBOURNE user; the extras
    ``token_url``, ``client_id``, ``client_secret`` configure the OAuth2 password grant, or
    ``access_token`` holds a personal access token (then no OAuth2 grant is made).  Optional extras:
    ``app_name`` (sent as ``X-LUSID-Application``), ``verify`` (true/false/CA bundle path),
    ``proxy``, ``timeout`` (``"connect,read"`` seconds, default ``10,300``), ``max_retries``
    (default 5), ``slot_type`` (default ``gpu-medium``) and ``secrets_file`` (a FINBOURNE
    ``secrets.json`` that fills whatever the connection leaves empty).  Extras may carry the
    ``extra__candela__`` prefix.

    :param candela_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout: seconds, ``(connect, read)`` or ``"c,r"``.
    :param max_retries: overrides the connection's ``max_retries``.

    The class attributes ``retry_wait_base``, ``retry_wait_max``, ``retry_after_cap`` and
    ``retry_deadline`` (seconds) tune the backoff; set them on an instance to change one hook.
    """

    #: The start call of this hook still waiting for its answer (or cut off before it came), if any.
    _unanswered_start: _UnansweredStart | None = None
    #: The app of the session this hook last started (the ``app`` tag of ``candela.session.stopped``).
    _running_app: str | None = None

    # ------------------------------------------------------------------------------------------
    # connection form (Airflow 2.11; Airflow 3.2+ reads get_provider_info's conn-fields instead)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the connection form (:func:`.connection_form.form_widgets`)."""
        return form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden fields, relabels, placeholders (:func:`.connection_form.ui_field_behaviour`)."""
        return ui_field_behaviour()

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and make one real call (``GET /slot/user_has_slot``).  Never raises.

        :return: ``(True, message)`` on success, ``(False, reason)`` otherwise; no secret in either.
        """
        try:
            call = Call("GET", "/slot/user_has_slot")
            has_slot = self._parse(self._request(call, deadline=TEST_CONNECTION_DEADLINE), _BOOL, "true/false", call)
            cfg = self.config
            auth = "a personal access token" if cfg.uses_pat else f"user {cfg.username!r}"
            slot = "has a slot" if has_slot else "has no slot yet"
            return True, f"Connected to Candela at {cfg.base_url} with {auth}; the user {slot}."
        except CandelaError as exc:
            return False, self.scrub(str(exc))
        except Exception as exc:
            return False, self.scrub(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------
    # arguments (every check lives in airflow_provider_candela._validation)

    @staticmethod
    def _session_params(session: ObjectId) -> dict[str, str]:
        params = {"scope": session.scope, "identifier": session.identifier}
        if session.version:
            params["version"] = session.version
        return params

    @staticmethod
    def _prompt(session: SessionRef, prompt: Any) -> SubmitPrompt:
        """The body of a prompt call, every argument checked (once) before any request."""
        oid = coerce_object_id(session, argument="session")
        # Checked above: the model is built without validating the (up to 1 MiB) prompt a second time.
        return SubmitPrompt.model_construct(prompt=coerce_prompt(prompt), session_id=oid.identifier, scope=oid.scope)

    # ------------------------------------------------------------------------------------------
    # sessions

    def start_session(
        self,
        app: ObjectId | str,
        model: ObjectId | str,
        *,
        scope: str | None = None,
        parent_session: ObjectId | str | None = None,
        circuit_override: ObjectId | str | None = None,
        directive_override: ObjectId | str | None = None,
        if_session_running: str = "fail",
    ) -> ObjectMetadata:
        """Start an app (agent or pipeline) with a model on the user's slot (``POST /session``).

        If the request may have reached Candela but no answer came back, the hook looks for the
        session it started (created by this user since the call began, same app and model) and
        returns it instead of starting a second one; otherwise it retries.

        :param app: the app to run, e.g. ``"default/my-agent:1.0.0"``.
        :param model: the model configuration, e.g. ``"default/llama-3-8b"``.
        :param scope: the scope of the new session (Candela's default: ``"default"``).
        :param parent_session: a session this one continues.
        :param circuit_override: a circuit replacing the app's (same scope as the app).
        :param directive_override: a directive replacing the app's (same scope as the app).
        :param if_session_running: when Candela answers that a session already runs on the user's slot:
            ``"fail"`` (raise :class:`CandelaSessionRunningError`) or ``"stop"`` (stop it and start again).
        :return: the new session's metadata (``obj_id.identifier`` is the session id for prompts).
        """
        app_id = coerce_object_id(app, argument="app")
        model_id = coerce_object_id(model, argument="model")
        request = SessionStartRequest(
            app=app_id,
            model_cfg=model_id,
            scope=coerce_name(scope, kind="scope", argument="scope"),
            parent_session=coerce_object_id(parent_session, argument="parent_session") if parent_session else None,
            circuit_override=coerce_object_id(circuit_override, argument="circuit_override")
            if circuit_override
            else None,
            directive_override=(
                coerce_object_id(directive_override, argument="directive_override") if directive_override else None
            ),
        )

        def matches(session: Session) -> bool:
            return _same(session.app, app_id) and _same(session.model_cfg, model_id)

        return self._start(
            Call("POST", "/session", "start", body=request.model_dump(mode="json", exclude_none=True)),
            matches,
            if_session_running,
            app=f"{app_id.scope}/{app_id.identifier}",
        )

    def start_dev_session(
        self,
        model: ObjectId | str,
        circuit: CircuitDTO | dict[str, Any],
        directive: Directive | dict[str, Any],
        *,
        scope: str | None = None,
        parent_session: ObjectId | str | None = None,
        tool_module: ToolModule | dict[str, Any] | str | None = None,
        if_session_running: str = "fail",
    ) -> ObjectMetadata:
        """Run an inline circuit and directive with a model (``POST /session/dev``).

        Reconciled like :meth:`start_session` when the answer is lost.

        :param model: the model configuration.
        :param circuit: ``{"first": <node id>, "nodes": {<node id>: {...}}}``.
        :param directive: the directive (identity, purpose, style, restriction, ...).
        :param scope: the scope of the new session.
        :param parent_session: a session this one continues.
        :param tool_module: Python source of tool classes (a string) or a ``ToolModule``.
        :param if_session_running: as for :meth:`start_session`.
        """
        model_id = coerce_object_id(model, argument="model")
        if isinstance(tool_module, str):
            tool_module = ToolModule(content=tool_module)
        request = DevSessionStartRequest(
            model_id=model_id,
            circuit=coerce_model(circuit, CircuitDTO, argument="circuit"),
            directive=coerce_model(directive, Directive, argument="directive"),
            scope=coerce_name(scope, kind="scope", argument="scope"),
            parent_session=coerce_object_id(parent_session, argument="parent_session") if parent_session else None,
            tool_module_override=coerce_model(tool_module, ToolModule, argument="tool_module") if tool_module else None,
        )

        def matches(session: Session) -> bool:
            return (session.dev_session is True or session.app is None) and _same(session.model_cfg, model_id)

        body = request.model_dump(mode="json", exclude_none=True)
        return self._start(Call("POST", "/session/dev", "start", body=body), matches, if_session_running, app="dev")

    def _start(
        self, call: Call, matches: Callable[[Session], bool], if_session_running: str, *, app: str
    ) -> ObjectMetadata:
        """Start; when Candela answers that a session runs and ``if_session_running="stop"``, stop it and start again.

        Only that answer stops anything: a refused app or model (or any other error) stops nothing.

        :raises CandelaSessionRunningError: a session runs on the user's slot (``"fail"``, or again after the stop).
        """
        coerce_choice(if_session_running, IF_SESSION_RUNNING, argument="if_session_running")
        try:
            started = self._start_once(call, matches)
        except CandelaSessionRunningError:
            if if_session_running != "stop":
                raise
            self.log.info("A session already runs on the Candela user's slot: stopping it and starting again.")
            self.stop_session()
            started = self._start_once(call, matches)
        count("session.started", {"app": app})
        self._running_app = app
        return started

    def _start_once(self, call: Call, matches: Callable[[Session], bool]) -> ObjectMetadata:
        """One start with retries and reconciliation; a "session running" refusal as its own error."""
        try:
            return self._start_reconciled(call, matches)
        except CandelaApiError as exc:
            if exc.status == 409 or (exc.status == 400 and SESSION_RUNNING.search(exc.detail)):
                raise exc.amended(
                    "Another session runs on the Candela user's slot: stop it first (stop_session), or wait "
                    "until it ends",
                    CandelaSessionRunningError,
                ) from exc
            raise

    def _start_reconciled(self, call: Call, matches: Callable[[Session], bool]) -> ObjectMetadata:
        began = time.time()
        attempts = 0
        failed = ""  # why the last attempt is retried (candela.request.retries)

        def attempt() -> ObjectMetadata:
            nonlocal attempts, failed
            attempts += 1
            if failed:
                count("request.retries", {"route": route(call.method, call.path), "reason": failed})
                failed = ""
            connect, read = self.config.timeout
            # Until Candela answers, the start may still be carried out, even after we stopped waiting.
            self._unanswered_start = _UnansweredStart(call.what, began, matches, time.monotonic() + connect + read)
            try:
                resp = self._attempt(call, retries=attempts - 1)
            except (Ambiguous, Retryable, CandelaApiError) as failure:
                error = failure if isinstance(failure, CandelaApiError) else failure.error
                if getattr(error, "status", None) is not None:
                    self._unanswered_start = None  # Candela answered: what it did is known
                if isinstance(failure, Retryable):
                    failed = retry_reason(failure.error)
                if not isinstance(failure, Ambiguous):
                    raise
                signal = failure
                found = self._reconcile_start(call, began, matches, signal.error)
                if found is not None:
                    self._unanswered_start = None
                if found is not None:
                    self.log.warning(
                        "%s: no answer received, but session %s was started by it; using that session",
                        call.what,
                        found.obj_id,
                    )
                    return found
                self.log.info("%s: no session was started by the failed attempt; a retry is safe", call.what)
                failed = "lost_answer"
                raise Retryable(signal.error, signal.retry_after) from signal.__cause__
            self._unanswered_start = None
            return self._parse(resp, _OBJECT_METADATA, "an ObjectMetadata object", call)

        return call_with_retries(attempt, self._retry_settings, call.what, self.log)

    def _whoami(self) -> str | None:
        """The user name sessions are created by (login, or the slot's owner for a personal access token)."""
        if self._me is None:
            if not self.config.uses_pat and self.config.username:
                self._me = self.config.username
            else:
                try:
                    self._me = self.get_slot_metadata().assigned_to
                except CandelaApiError:
                    self._me = None
        return self._me

    def _reconcile_start(
        self, call: Call, began: float, matches: Callable[[Session], bool], error: CandelaError
    ) -> ObjectMetadata | None:
        """The session a lost start request created, if any (created by us, since ``began``, same app/model)."""
        try:
            return self._started_since(began, matches)
        except CandelaError as exc:
            raise CandelaApiError(
                f"{str(error).rstrip('.')}. The session may or may not have been started, and checking failed too "
                f"({exc}). Call list_sessions (or look in Candela) before starting it again",
                status=getattr(error, "status", None),
                method=call.method,
                path=call.path,
            ) from exc

    def _started_since(self, began: float, matches: Callable[[Session], bool]) -> ObjectMetadata | None:
        """The newest session created by this user since ``began`` (our clock) that ``matches``, if any."""
        sessions = self.list_sessions()
        me = self._whoami()
        if self._server_clock_offset is None:
            since = began - RECONCILE_SKEW_UNKNOWN_CLOCK
        else:
            since = began + self._server_clock_offset - RECONCILE_SKEW
        candidates = [
            meta for meta in sessions if (me is None or meta.created_by == me) and _timestamp(meta.created_at) >= since
        ]
        for meta in sorted(candidates, key=lambda m: _timestamp(m.created_at), reverse=True):
            if matches(self.get_session(meta.obj_id)):
                return meta
        return None

    def stop_session_best_effort(self, reason: str, *, budget: float = CLEANUP_BUDGET) -> bool:
        """Stop the user's running session within ``budget`` seconds in all; log a failure, never raise.

        Made for cleanups (a one-task session's end, a failed or killed start, a timed-out invocation): it
        runs on a cancelled hook too, and its own short deadline replaces the hook's retry budget.  When a
        start call of this hook never got its answer (cut off by a kill, a timeout or a lost connection),
        Candela may still carry it out after we stopped waiting: the hook then watches for the session that
        start creates, until the start's own deadline (connect + read timeout after it was sent) or the
        budget, whichever comes first, and stops it too.

        :param reason: why the session is stopped, for the log (e.g. ``"task 'prompt' was killed"``).
        :param budget: seconds the stop (and the watch for a late start) may take in all.
        :return: whether the session was stopped (False: the failure was logged as a warning).
        """
        unanswered, self._unanswered_start = self._unanswered_start, None
        try:
            with self._cleanup(budget):
                self.stop_session()
                if unanswered is not None:
                    self._stop_late_start(unanswered, time.monotonic() + budget - min(5.0, budget / 5))
        except Exception as exc:
            self.log.warning(
                "Could not stop the Candela session of connection %r (%s): %s. It may still hold the user's "
                "slot: the next start with if_session_running='stop', or CandelaStopSessionOperator, stops it.",
                self.candela_conn_id,
                reason,
                self.scrub(str(exc)),
            )
            return False
        self.log.info("Stopped the Candela session of connection %r (%s).", self.candela_conn_id, reason)
        return True

    def _stop_late_start(self, start: _UnansweredStart, until: float) -> None:
        """Stop the session ``start`` creates if it appears before its deadline (and before ``until``)."""
        watch_until = min(start.deadline + RECONCILE_SKEW, until)
        self.log.info(
            "%s got no answer: watching for %.0f s for a session it may still start.",
            start.what,
            max(watch_until - time.monotonic(), 0.0),
        )
        while True:
            found = self._started_since(start.began, start.matches)
            if found is not None:
                self.log.warning("%s was carried out after all: stopping session %s.", start.what, found.obj_id)
                self.stop_session()
                return
            remaining = watch_until - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(min(LATE_START_POLL, remaining))

    def replaced(self, session: ObjectMetadata | ObjectId) -> ObjectMetadata | None:
        """The session started by this user after ``session`` (which it replaced, Candela running one per user).

        For explaining a failed prompt; None when there is none or when the check itself fails.
        """
        try:
            mine = session if isinstance(session, ObjectMetadata) else self.get_session_metadata(session)
            oid = mine.obj_id
            newer = [
                meta
                for meta in self.list_sessions()
                if meta.created_by == mine.created_by
                and _timestamp(meta.created_at) > _timestamp(mine.created_at)
                and (meta.obj_id.scope, meta.obj_id.identifier) != (oid.scope, oid.identifier)
            ]
        except CandelaError:
            return None
        return max(newer, key=lambda m: _timestamp(m.created_at), default=None)

    def submit_pipeline_prompt(self, session: SessionRef, prompt: str) -> PipelineAnswer:
        """Send a prompt to a running pipeline session (``POST /session/pipeline_submit``).

        Not replayed once the request may have reached Candela (a pipeline may have side effects).

        :param session: the session: its ``ObjectMetadata`` (or dict, e.g. a start task's XCom), its
            ``ObjectId`` or ``"scope/identifier"``.
        :param prompt: the prompt text.
        :return: the pipeline's answer (``metadata.request_id``, ``result`` and whatever else it sent).
        """
        body = self._prompt(session, prompt)
        call = Call("POST", "/session/pipeline_submit", "submit", body=body.model_dump(mode="json"))
        return self._parse(self._request(call), _PIPELINE_ANSWER, "a JSON object", call)

    def submit_prompt_to_agent(self, session: SessionRef, prompt: str) -> CandelaEventStream:
        """Send a prompt to a running agent session and stream its answer (``POST /session/agent_submit``).

        The request is sent now; the returned :class:`CandelaEventStream` yields each :class:`Event`
        as soon as its line arrives.  Read it to the end (or ``close()`` it / use it in a ``with``)
        so the connection is released.  Not replayed once the request may have reached Candela.

        :param session: the session, in any form :meth:`submit_pipeline_prompt` takes.
        :param prompt: the prompt text.
        """
        body = self._prompt(session, prompt)
        call = Call("POST", "/session/agent_submit", "submit", body=body.model_dump(mode="json"), stream=True)
        resp = self._request(call)
        exchange: Exchange = resp.candela_exchange  # type: ignore[attr-defined]
        return CandelaEventStream(
            resp,
            method=call.method,
            path=call.path,
            scrub=self.scrub,
            exchange=exchange,
            event_gap=self.config.timeout[1],
            total=self.config.stream_timeout,
            release=lambda: self._release(exchange),
            cancelled=lambda: self._cancelled,
        )

    def agent_answer(
        self,
        session: SessionRef,
        prompt: str,
        *,
        keep_events: bool = False,
        on_event: Callable[[str, str], object] | None = None,
    ) -> AgentAnswer:
        """Send a prompt to a running agent session and read its whole answer (:meth:`submit_prompt_to_agent`).

        The events are summed up as they arrive (never buffered, unless ``keep_events``); ``on_event(type,
        content)`` sees each one as it arrives (e.g. a transcript writing the task log).

        :param session: the running agent session.
        :param prompt: the prompt text.
        :param keep_events: keep every event in the answer (``AgentAnswer.events``).
        :param on_event: called with each event's type and content, in order.
        """
        answer = AgentAnswer(keep_events=keep_events)
        with self.submit_prompt_to_agent(session, prompt) as stream:
            for event in stream:
                answer.add(event.event_type, event.content)
                if on_event is not None:
                    on_event(event.event_type, event.content)
        return answer

    def stop_session(self) -> None:
        """Stop whatever session runs on the user's slot (``GET /session/stop``); fine when none runs."""
        self._request(Call("GET", "/session/stop")).close()
        count("session.stopped", {"app": self._running_app or "unknown"})
        self._running_app = None

    def delete_session(self, session: ObjectId | str) -> list[ObjectMetadata]:
        """Delete a session and its data (``DELETE /sessions/``); without a version, every version.

        :return: the metadata of the deleted versions (empty when a retried call found them already gone).
        """
        oid = coerce_object_id(session, argument="session")
        call = Call("DELETE", "/sessions/", params=self._session_params(oid))
        resp = self._execute(call, done_statuses=frozenset({404}))
        if resp is None:
            return []
        return self._parse(resp, _OBJECT_METADATA_LIST, "a list of ObjectMetadata", call)

    def get_session(self, session: ObjectId | str) -> Session:
        """The stored session (``GET /sessions/``): app, model, host, overrides."""
        oid = coerce_object_id(session, argument="session")
        call = Call("GET", "/sessions/", params=self._session_params(oid))
        return self._parse(self._request(call), _SESSION, "a Session object", call)

    def get_session_metadata(self, session: ObjectId | str) -> ObjectMetadata:
        """The session's metadata (``GET /sessions/metadata``)."""
        oid = coerce_object_id(session, argument="session")
        call = Call("GET", "/sessions/metadata", params=self._session_params(oid))
        return self._parse(self._request(call), _OBJECT_METADATA, "an ObjectMetadata object", call)

    def list_sessions(self, all_versions: bool = False) -> list[ObjectMetadata]:
        """The sessions the user can see (``GET /sessions/list``); latest versions unless ``all_versions``."""
        call = Call("GET", "/sessions/list", params={"all_versions": "true" if all_versions else "false"})
        return self._parse(self._request(call), _OBJECT_METADATA_LIST, "a list of ObjectMetadata", call)

    def session_exists(self, session: ObjectId | str) -> bool:
        """Whether the session exists (``GET /sessions/exists``)."""
        oid = coerce_object_id(session, argument="session")
        call = Call("GET", "/sessions/exists", params=self._session_params(oid))
        return self._parse(self._request(call), _BOOL, "true/false", call)

    # ------------------------------------------------------------------------------------------
    # slots

    def user_has_slot(self) -> bool:
        """Whether the user has a slot (``GET /slot/user_has_slot``)."""
        call = Call("GET", "/slot/user_has_slot")
        return self._parse(self._request(call), _BOOL, "true/false", call)

    def assign_slot(self, slot_type: str | None = None) -> None:
        """Ask for a slot (``PUT /slot``); a no-op when the user already has one.

        :param slot_type: e.g. ``"gpu-medium"``; default: the connection's ``slot_type`` extra.
        """
        slot = coerce_name(slot_type, kind="scope", argument="slot_type") or self.config.slot_type or DEFAULT_SLOT_TYPE
        self._request(Call("PUT", "/slot", params={"slot_type": slot})).close()

    def assign_slot_if_none(self, slot_type: str | None = None) -> bool:
        """Assign a slot (``PUT /slot``) when the user has none; return whether one was assigned."""
        if self.user_has_slot():
            return False
        self.log.info("The Candela user has no slot; assigning one of type %s.", slot_type or self.config.slot_type)
        self.assign_slot(slot_type)
        return True

    def get_slot_state(self) -> SlotState:
        """The state of the user's slot (``GET /slot/state``); HOST_READY (3) means sessions can start."""
        call = Call("GET", "/slot/state")
        value = self._parse(self._request(call), _INT, "an integer", call)
        try:
            return SlotState(value)
        except ValueError:
            raise CandelaResponseError(
                f"Candela answered {call.what} with the unknown slot state {value}; known states are "
                + ", ".join(f"{s.value} {s.name}" for s in SlotState),
                status=200,
                method=call.method,
                path=call.path,
                detail=str(value),
            ) from None

    def get_slot_metadata(self) -> SlotData:
        """The user's slot (``GET /slot/metadata``)."""
        call = Call("GET", "/slot/metadata")
        return self._parse(self._request(call), _SLOT_DATA, "a SlotData object", call)

    def dispose_slot(self) -> None:
        """Give the user's slot back (``DELETE /slot``).  Candela answers 400 when there is none."""
        call = Call("DELETE", "/slot")
        resp = self._execute(call, done_statuses=frozenset({400}))
        if resp is None:
            if self.user_has_slot():
                raise CandelaApiError(
                    f"Candela rejected a retried {call.what} (400) and the user still has a slot: dispose it again",
                    status=400,
                    method=call.method,
                    path=call.path,
                )
            return
        resp.close()

    def ensure_slot(self, slot_type: str | None = None, timeout: float = 600.0, poll_interval: float = 1.0) -> SlotData:
        """Make sure the user has a ready slot: assign one when absent, then wait for HOST_READY.

        :param slot_type: the slot type to assign (default: the connection's ``slot_type``).
        :param timeout: seconds to wait for HOST_READY.
        :param poll_interval: seconds between state checks.
        :raises CandelaInputError: ``timeout`` or ``poll_interval`` is not a positive number (no request made).
        :raises CandelaSlotError: the slot went to ERRORED or HOST_GONE.
        :raises CandelaTimeoutError: the slot was not ready within ``timeout``.
        """
        timeout = coerce_positive_seconds(timeout, argument="timeout")
        poll_interval = coerce_positive_seconds(poll_interval, argument="poll_interval")
        began = time.monotonic()
        deadline = began + timeout
        self.assign_slot_if_none(slot_type)
        last: SlotState | None = None
        while True:
            state = self.get_slot_state()
            if state != last:
                self.log.info("Candela slot state: %s", state.label)
                last = state
            if state == SlotState.HOST_READY:
                timing("slot.wait", time.monotonic() - began, {"deferred": "false"})
                return self.get_slot_metadata()
            if state.failed:
                slot_id = "?"
                with contextlib.suppress(CandelaError):
                    slot_id = self.get_slot_metadata().slot_id
                raise CandelaSlotError(state.failure(slot_id))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CandelaTimeoutError(
                    f"The Candela slot was not ready after {timeout:g} s (last state {state.label}): "
                    "raise the timeout, or check the slot type and Candela's capacity"
                )
            self._sleep(min(poll_interval, remaining))


def _same(actual: ObjectId | None, wanted: ObjectId) -> bool:
    """Whether ``actual`` is the object ``wanted`` names (any version when ``wanted`` has none)."""
    if actual is None:
        return False
    if (actual.scope, actual.identifier) != (wanted.scope, wanted.identifier):
        return False
    return wanted.version is None or actual.version in (None, wanted.version)


def _timestamp(value: datetime) -> float:
    return as_utc(value).timestamp()
