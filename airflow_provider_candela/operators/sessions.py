"""Candela session operators: start a session, prompt it, stop it.

Each operator is thin: arguments -> one or two :class:`~airflow_provider_candela.hooks.candela.CandelaHook`
calls -> a JSON-safe XCom value.  The start operators push the new session's ``ObjectMetadata`` as a
dict; the prompt, stop and delete operators take that dict as ``session`` (typically
``start.output``).  The agent transcript (log lines and XCom summary) is in ``_transcript``; the
operators for stored sessions (delete, clean up) are in ``stored_sessions``, importable from here too.

This module is imported at every DAG parse: the hook (and ``requests``) are imported inside
methods only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow.providers.common.compat.sdk import TriggerRule

from airflow_provider_candela._validation import (
    check_session_form,
    coerce_answer,
    coerce_model,
    coerce_name,
    coerce_object_id,
    coerce_output_type,
    coerce_session,
    is_resolved,
    require_flag,
    require_prompt,
    session_ids,
    shorten,
)
from airflow_provider_candela.exceptions import CandelaApiError, CandelaError, CandelaOutputError
from airflow_provider_candela.models import CircuitDTO, Directive, ObjectId, ToolModule
from airflow_provider_candela.operators._base import CandelaOperator
from airflow_provider_candela.operators._deferred_start import DeferrableStarter
from airflow_provider_candela.operators._start import START_OPTIONS
from airflow_provider_candela.operators._transcript import AgentTranscript
from airflow_provider_candela.operators.stored_sessions import (
    CandelaCleanupSessionsOperator,
    CandelaDeleteSessionOperator,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from pydantic import BaseModel

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectMetadata, PipelineAnswer

__all__ = [
    "CandelaCleanupSessionsOperator",
    "CandelaDeleteSessionOperator",
    "CandelaStartDevSessionOperator",
    "CandelaStartSessionOperator",
    "CandelaStopSessionOperator",
    "CandelaSubmitAgentPromptOperator",
    "CandelaSubmitPipelinePromptOperator",
]

_R = TypeVar("_R")

#: The templated arguments of an app session's start (start operator, one-task sessions), and their renderers.
_APP_START_FIELDS = ("app", "model", "scope", "circuit_override", "directive_override", "parent_session", "slot_type")
_APP_START_RENDERERS = {
    name: "json" for name in ("app", "model", "circuit_override", "directive_override", "parent_session")
}

# --------------------------------------------------------------------------------------------------
# Start


class _StartOperatorBase(DeferrableStarter):
    """Slot handling, retry safety and ``on_kill`` shared by the two start operators.

    Retry safety: Candela runs at most one session per user.  The operator starts; when Candela
    answers that a session already runs (perhaps one an earlier try left), ``if_session_running="stop"``
    (the default) stops it and starts again, so a retried start never leaves a second session
    running, while ``"fail"`` never stops a session it did not start (the task fails saying so; with
    ``retries`` it waits for the slot).  A refused app or model stops nothing.  If the start call itself
    fails ambiguously, the operator stops whatever that call may have started before re-raising.
    The start itself is :class:`~airflow_provider_candela.operators._start.SessionStarter`'s, shared with
    the prompt operators' one-task sessions.

    Deferrable (``deferrable=True``): bringing a slot up can take minutes.  The task assigns the slot
    when the user has none and checks it once; when it is not ready, the task defers to
    :class:`~airflow_provider_candela.triggers.slots.CandelaSlotReadyTrigger` and frees its worker slot
    while the triggerer polls the slot's state (every ``slot_poll_interval`` s, until ``slot_ready_timeout``
    after the deferral, a deadline kept across triggerer restarts).  Once the slot is ready the task
    resumes and starts the session exactly as without deferral (same XCom).  ``ERRORED`` (or
    ``HOST_GONE``), the deadline and failing checks fail the task naming the slot and its last state.
    A retried task reuses the user's slot (it never assigns a second one).  Killing the deferred task
    (mark failed / clear) on Airflow 3.3+ disposes of the slot if the task assigned it and it is still
    starting; Airflow 2 does not tell triggers about kills, so the slot keeps starting there.

    :param scope: scope of the new session (Candela's default is ``"default"``).
    :param parent_session: the session this one continues, if any.
    :param ensure_slot: assign a slot when the user has none and wait until it is ready.
    :param slot_type: slot type to assign (default: the connection's ``slot_type``, else ``gpu-medium``).
    :param slot_ready_timeout: seconds to wait for the slot to become ready.
    :param if_session_running: when Candela answers that the user already runs a session: ``"stop"``
        it and start again (default; makes retries safe, but stops another DAG run's session if it
        uses the same Candela user) or ``"fail"`` (never stop a session this task did not start).
    :param deferrable: wait for the slot in the triggerer instead of a worker (default: the
        ``[operators] default_deferrable`` option); needs ``ensure_slot``.
    :param slot_poll_interval: with ``deferrable``: seconds between two checks of the slot's state.
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    """

    def _run_start(self, start: Callable[[CandelaHook], ObjectMetadata]) -> dict[str, Any]:
        """Ready the slot, ``start(hook)`` on it; the new session's metadata as a JSON dict.

        A task killed once the session started stops it before failing: a killed start leaves nothing running.
        """
        with self._task_hook() as hook:
            self._ready_slot(hook)
            metadata = start(hook)
            if hook.cancelled is not None:
                hook.stop_session_best_effort(f"task '{self.task_id}' was killed after its start")
            return metadata.model_dump(mode="json")


class CandelaStartSessionOperator(_StartOperatorBase):
    """Start a Candela app session (agent or pipeline) and push its ``ObjectMetadata`` to XCom.

    Ids (``app``, ``model``, overrides, ``parent_session``) accept an ``ObjectId``, a dict
    ``{"scope", "identifier", "version"}``, an ``ObjectMetadata`` dict, or the short form
    ``"scope/identifier:version"`` (version optional = latest).  Before starting, the operator makes
    sure the user has a ready slot (``ensure_slot``) and stops the user's running session, if any:
    Candela runs one session per user, and this makes a retried start safe.

    XCom return value: the new session's ``ObjectMetadata`` as a JSON dict,
    ``{"obj_id": {"scope", "identifier", "version"}, "domain", "created_by", "created_at", "description"}``.

    :param app: the app to run (agent or pipeline).
    :param model: the model configuration to run it with.
    :param circuit_override: a circuit to use instead of the app's (same scope as the app).
    :param directive_override: a directive to use instead of the app's (same scope as the app).

    The slot, retry, deferral and connection arguments (``scope``, ``parent_session``, ``ensure_slot``,
    ``slot_type``, ``slot_ready_timeout``, ``if_session_running``, ``deferrable``, ``slot_poll_interval``,
    ``candela_conn_id``) are those of :class:`_StartOperatorBase`.
    """

    template_fields: Sequence[str] = ("candela_conn_id", *_APP_START_FIELDS)
    template_fields_renderers: ClassVar[dict[str, str]] = dict(_APP_START_RENDERERS)

    def __init__(
        self, *, app: Any, model: Any, circuit_override: Any = None, directive_override: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.model = model
        self.circuit_override = circuit_override
        self.directive_override = directive_override
        self._check_app_ids_now(app, model, circuit_override, directive_override)

    def execute(self, context: Context) -> dict[str, Any]:
        """Ensure a slot, stop the user's running session, start the app session; return its metadata."""
        return self._run_start(self._app_start(self.app, self.model, self.circuit_override, self.directive_override))


class CandelaStartDevSessionOperator(_StartOperatorBase):
    """Start a Candela dev session from an inline circuit and directive; push its ``ObjectMetadata``.

    Same slot handling, retry safety and XCom value as :class:`CandelaStartSessionOperator`.
    ``circuit``, ``directive`` and ``tool_module`` are structures, not templated (a circuit's
    templates must reach Candela untouched); they are validated when the DAG is parsed.

    :param model: the model configuration to run with (ObjectId, dict or ``"scope/identifier:version"``).
    :param circuit: the circuit, a ``CircuitDTO`` or a dict ``{"first": node_id, "nodes": {...}}``.
    :param directive: the directive, a ``Directive`` or a dict (``identity``, ``purpose``, ``style``, ...).
    :param tool_module: optional tool classes: a ``ToolModule``, a dict ``{"content": source}`` or the
        Python source as a string.

    The slot, retry, deferral and connection arguments are those of :class:`_StartOperatorBase`.
    """

    template_fields: Sequence[str] = ("candela_conn_id", "model", "scope", "parent_session", "slot_type")
    template_fields_renderers: ClassVar[dict[str, str]] = {"model": "json", "parent_session": "json"}

    def __init__(
        self,
        *,
        model: Any,
        circuit: CircuitDTO | Mapping[str, Any],
        directive: Directive | Mapping[str, Any],
        tool_module: ToolModule | Mapping[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._check_now(model, lambda v: coerce_object_id(v, argument="model", task_id=self.task_id))
        tid = self.task_id
        example = "{'first': 'n1', 'nodes': {'n1': {...}}}"
        self.circuit = coerce_model(circuit, CircuitDTO, argument="circuit", task_id=tid, example=example)
        example = "{'identity': ..., 'purpose': ...}"
        self.directive = coerce_model(directive, Directive, argument="directive", task_id=tid, example=example)
        self.tool_module: ToolModule | None = None
        if tool_module is not None:
            source = {"content": tool_module} if isinstance(tool_module, str) else tool_module
            self.tool_module = coerce_model(source, ToolModule, argument="tool_module", task_id=tid)

    def execute(self, context: Context) -> dict[str, Any]:
        """Ensure a slot, stop the user's running session, start the dev session; return its metadata."""
        model = coerce_object_id(self.model, argument="model", task_id=self.task_id)
        parent_session = self._optional_id(self.parent_session, "parent_session")
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=self.task_id)
        self.log.info(
            "Starting a dev session with model %s (circuit entry %r, %d nodes) in scope %s.",
            model,
            self.circuit.first,
            len(self.circuit.nodes),
            scope or "default",
        )
        return self._run_start(
            lambda hook: self._start_on_slot(
                hook,
                lambda: hook.start_dev_session(
                    model,
                    self.circuit,
                    self.directive,
                    scope=scope,
                    parent_session=parent_session,
                    tool_module=self.tool_module,
                    if_session_running=self.if_session_running,
                ),
            )
        )


# --------------------------------------------------------------------------------------------------
# Prompts


class _PromptOperatorBase(DeferrableStarter):
    """The session, the prompt and the typed answer of the prompt operators.

    The session comes in one of two forms (anything else fails when the DAG is parsed):

    * a running session: ``session`` (e.g. ``start.output``), or ``session_id`` + ``scope``;
    * a one-task session: ``app`` + ``model`` (and the start options): the task starts the session
      as :class:`CandelaStartSessionOperator` does, sends the prompt and stops the session before it
      returns, whether the prompt succeeded, failed or timed out, or the task was killed.  Nothing is
      left running, and a retry starts afresh.  With ``deferrable=True`` the wait for the slot runs in
      the triggerer, as for the start operators; the task resumes, starts the session and prompts it
      (``deferrable`` and ``slot_poll_interval`` are ignored with a running session: there is no wait).

    :param prompt: the prompt text (templated).
    :param session: the session: ``start.output`` (an ``ObjectMetadata`` dict), an ``ObjectId``, a dict
        or ``"scope/identifier"`` (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param scope: with ``session_id``: the session scope, default ``"default"``; with ``app``: the
        scope of the new session (templated).
    :param app: instead of ``session``: the app of a one-task session (templated).
    :param model: with ``app``: the model configuration to run it with (templated).
    :param circuit_override: with ``app``: a circuit to use instead of the app's (templated).
    :param directive_override: with ``app``: a directive to use instead of the app's (templated).
    :param output_type: a pydantic model class: the answer is validated into it and its JSON form
        (``model_dump(mode="json")``) is returned; an answer that does not fit fails the task, listing
        the fields that did not fit (the answer itself goes to the task log, truncated).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).

    The start options of a one-task session (``parent_session``, ``ensure_slot``, ``slot_type``,
    ``slot_ready_timeout``, ``if_session_running``, ``deferrable``, ``slot_poll_interval``) are those of
    :class:`_StartOperatorBase`.
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session", "session_id", "prompt", *_APP_START_FIELDS)
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json", **_APP_START_RENDERERS}

    def __init__(
        self,
        *,
        prompt: str,
        session: Any = None,
        session_id: str | None = None,
        app: Any = None,
        model: Any = None,
        circuit_override: Any = None,
        directive_override: Any = None,
        output_type: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> None:
        start_options: list[str] = [name for name in START_OPTIONS if name in kwargs]
        overrides = {"circuit_override": circuit_override, "directive_override": directive_override}
        start_options += [name for name, value in overrides.items() if value is not None]
        super().__init__(**kwargs)
        self.prompt = prompt
        self.session = session
        self.session_id = session_id
        self.app = app
        self.model = model
        self.circuit_override = circuit_override
        self.directive_override = directive_override
        tid = self.task_id
        self.output_type = coerce_output_type(output_type, task_id=tid)
        self._check_now(prompt, lambda v: require_prompt(v, task_id=self.task_id))
        running = session is not None or bool(session_id)
        check_session_form(running=running, app=app, model=model, start_options=start_options, task_id=tid)
        if running and all(is_resolved(v) for v in (session, session_id, self.scope)):
            coerce_session(session, session_id=session_id, scope=self.scope, task_id=tid)
        if not running:
            self._check_app_ids_now(app, model, circuit_override, directive_override)

    def _in_session(self, send: Callable[[CandelaHook, ObjectId, str], _R]) -> _R:
        """``send(hook, session, prompt)`` on the running session, or on a session started and stopped here.

        One hook serves the whole run (slot, start, prompt, stop).  A one-task session is stopped however
        the prompt ends (:func:`~airflow_provider_candela.hooks._lifecycle.owned_session`); once its answer
        arrived, a failed stop is a warning, so a retry never sends an answered prompt again.
        """
        from airflow_provider_candela.hooks._lifecycle import owned_session

        prompt = require_prompt(self.prompt, task_id=self.task_id)
        if self.app is None:
            oid = coerce_session(self.session, session_id=self.session_id, scope=self.scope, task_id=self.task_id)
            with self._task_hook() as hook:
                return self._on_running(hook, oid, lambda: send(hook, oid, prompt))
        start = self._app_start(self.app, self.model, self.circuit_override, self.directive_override)
        with self._task_hook() as hook:
            self._ready_slot(hook)
            metadata = start(hook)
            with owned_session(hook, metadata, owner=f"task '{self.task_id}'") as session:
                return send(hook, session, prompt)

    def _on_running(self, hook: CandelaHook, session: ObjectId, send: Callable[[], _R]) -> _R:
        """``send()`` to the DAG's running session: left running, unless the task is killed or times out.

        A killed prompt stops the session, or Candela would go on working on the abandoned prompt.
        """
        from airflow_provider_candela.hooks._lifecycle import explain_lost_session

        try:
            return send()
        except CandelaApiError as err:
            explained = explain_lost_session(hook, err, session)
            if explained is err:
                raise
            raise explained from err
        except BaseException as exc:
            if hook.cancelled is not None or not isinstance(exc, CandelaError):
                hook.stop_session_best_effort(f"task '{self.task_id}' was stopped during its prompt")
            raise

    def _typed(self, value: Any, *, what: str, answer: Any) -> dict[str, Any]:
        """``value`` validated as ``output_type``; when it does not fit, the raw ``answer`` goes to the log."""
        assert self.output_type is not None
        try:
            return coerce_answer(value, self.output_type, what=what, task_id=self.task_id)
        except CandelaOutputError:
            self.log.error("The answer (truncated): %s", shorten(json.dumps(answer, default=str), 2000))
            raise


class CandelaSubmitPipelinePromptOperator(_PromptOperatorBase):
    """Submit a prompt to a pipeline session and return the server's JSON answer.

    XCom return value: the JSON object Candela returns, e.g.
    ``{"metadata": {"request_id": ...}, "result": {...}}``; with ``output_type``, the answer's
    ``result`` validated into that model, in its JSON form.

    The arguments (``prompt``, ``session`` or ``session_id`` + ``scope``, or ``app`` + ``model`` and the
    start options for a one-task session, ``output_type``, ``candela_conn_id``) are those of
    :class:`_PromptOperatorBase`.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt (in a session of its own with ``app``); return the answer."""
        answer = self._in_session(self._submit)
        xcom = answer.to_xcom()
        self.log.info("Pipeline answered (request id %s, keys %s).", answer.request_id, sorted(xcom))
        if self.output_type is None:
            return xcom
        return self._typed(answer.result, what="the pipeline's `result`", answer=xcom)

    def _submit(self, hook: CandelaHook, session: ObjectId, prompt: str) -> PipelineAnswer:
        self.log.info("Submitting a pipeline prompt (%d characters) to session %s.", len(prompt), session)
        return hook.submit_pipeline_prompt(session, prompt)


class CandelaSubmitAgentPromptOperator(_PromptOperatorBase):
    """Submit a prompt to an agent session, log the streamed events as they arrive, return a summary.

    The task log shows the assistant's text as readable lines (chat fragments joined, a line flushed
    at a newline or a sentence end) and the other events labelled, e.g. ``[info] ...``,
    ``[result] table (3 rows)``.

    XCom return value (small by default)::

        {"session": {"scope", "identifier", "version"},
         "response": "<the chat fragments joined>",
         "results": [<each result event's content, JSON-decoded>],
         "event_counts": {"user": 1, "chat": 12, "result": 1},
         "events": [{"event_type", "content"}, ...]}   # only with return_events=True

    With ``output_type``, each decoded ``result`` event (``{"content_type": ..., "content": ...}``) is
    validated into that model and ``results`` holds their JSON forms; an answer without a ``result``
    event fails the task.

    :param return_events: also return the full event list (can be large: XCom lives in the metadata DB).

    The other arguments (``prompt``, ``session`` or ``session_id`` + ``scope``, or ``app`` + ``model``
    and the start options for a one-task session, ``output_type``, ``candela_conn_id``) are those of
    :class:`_PromptOperatorBase`.
    """

    def __init__(self, *, return_events: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.return_events = require_flag(return_events, argument="return_events", task_id=self.task_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt (in a session of its own with ``app``), log each event; return the summary."""
        summary = self._in_session(self._submit)
        if self.output_type is not None:
            if not summary["results"]:
                raise CandelaOutputError(
                    f"Task '{self.task_id}': the agent sent no `result` event to validate as `output_type` "
                    f"{self.output_type.__name__}. Ask for a result in the prompt, or drop `output_type`."
                )
            summary["results"] = [
                self._typed(result, what=f"`result` event {i} of the agent", answer=result)
                for i, result in enumerate(summary["results"], 1)
            ]
        return summary

    def _submit(self, hook: CandelaHook, session: ObjectId, prompt: str) -> dict[str, Any]:
        self.log.info("Submitting an agent prompt (%d characters) to session %s.", len(prompt), session)
        transcript = AgentTranscript(self.log.info, keep_events=self.return_events)
        try:
            with hook.submit_prompt_to_agent(session, prompt) as stream:
                transcript.consume(stream)
        finally:
            transcript.flush()
        summary = transcript.summary(session_ids(session))
        counts = ", ".join(f"{k}={v}" for k, v in sorted(summary["event_counts"].items())) or "none"
        self.log.info(
            "Agent stream ended: %d events (%s), %d characters of response, %d result(s).",
            sum(summary["event_counts"].values()),
            counts,
            len(summary["response"]),
            len(summary["results"]),
        )
        return summary


# --------------------------------------------------------------------------------------------------
# Stop, delete, clean up


class CandelaStopSessionOperator(CandelaOperator):
    """Stop the running session of the connection's user (idempotent: nothing running is fine).

    Candela's stop call has no arguments: it stops whatever session runs on the user's slot.
    Meant as the teardown of a start task, so it runs even when the tasks in between fail::

        stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
        start >> prompt >> stop.as_teardown(setups=start)

    Without ``as_teardown`` its default ``trigger_rule`` is ``all_done`` (it runs whatever happened
    upstream).  Returns nothing.

    :param session: optional, the session being stopped (``start.output``), only for the log and to
        tie the task to the start task's XCom (templated).
    :param dispose_slot: also give the user's slot back (the next start will wait for a new slot).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session")
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json"}

    def __init__(self, *, session: Any = None, dispose_slot: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.session = session
        self.dispose_slot = require_flag(dispose_slot, argument="dispose_slot", task_id=self.task_id)
        if session is not None:
            self._check_id_now(session, "session")

    def execute(self, context: Context) -> None:
        """Stop the user's running session (and dispose of the slot if asked)."""
        label = "the user's running session"
        if self.session is not None and self.session != "":
            label = f"session {coerce_object_id(self.session, argument='session', task_id=self.task_id)}"
        with self._task_hook() as hook:
            hook.stop_session()
            self.log.info("Stopped %s (if it was still running).", label)
            if self.dispose_slot:
                if hook.user_has_slot():
                    hook.dispose_slot()
                    self.log.info("Disposed of the user's slot.")
                else:
                    self.log.info("The user has no slot to dispose of.")
