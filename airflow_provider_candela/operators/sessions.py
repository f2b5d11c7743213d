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

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow.providers.common.compat.sdk import TriggerRule

from airflow_provider_candela._validation import (
    coerce_flag,
    coerce_model,
    coerce_name,
    coerce_object_id,
    coerce_output_type,
    coerce_prompt,
    coerce_session,
    id_json,
)
from airflow_provider_candela.models import CircuitDTO, Directive, ObjectId, ToolModule
from airflow_provider_candela.operators._answers import typed, typed_results
from airflow_provider_candela.operators._base import CandelaOperator
from airflow_provider_candela.operators._review import REVIEW_DEFAULTS, Review, set_review_options
from airflow_provider_candela.operators._session_start import (
    SESSION_DEFAULTS,
    START_DEFAULTS,
    app_start,
    check_app_ids_now,
    may_defer,
    optional_id,
    pick,
    ready_slot,
    resume,
    set_session,
    set_start_options,
    start_on_slot,
)
from airflow_provider_candela.operators._transcript import AgentTranscript
from airflow_provider_candela.operators.stored_sessions import (
    CandelaCleanupSessionsOperator,
    CandelaDeleteSessionOperator,
)

if TYPE_CHECKING:
    from datetime import timedelta

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


class _StartOperatorBase(CandelaOperator):
    """The start options, the slot (deferred or not), the start and its XCom, shared by the two start operators.

    Before starting, the task makes sure the user has a ready slot (``ensure_slot``).  Candela runs at
    most one session per user: when it answers that a session already runs (perhaps one an earlier try
    left), ``if_session_running="stop"`` (the default) stops it and starts again, so a retried start never
    leaves a second session running; ``"fail"`` never stops a session it did not start.  A start Candela
    refused (a mistyped app) stops nothing; a start that failed otherwise (a lost answer, a kill, a
    timeout) stops whatever it may have started, also a session Candela starts after the task stopped
    waiting.  With ``deferrable=True`` the wait for the slot runs in the triggerer; a retried task reuses
    the user's slot, and killing the deferred task on Airflow 3.3 disposes of a slot it assigned that is
    still starting.

    XCom return value: the new session's ``ObjectMetadata`` as a JSON dict,
    ``{"obj_id": {"scope", "identifier", "version"}, "domain", "created_by", "created_at", "description"}``.

    :param scope: scope of the new session (Candela's default is ``"default"``) (templated).
    :param parent_session: the session this one continues, if any (templated).
    :param ensure_slot: assign a slot when the user has none and wait until it is ready (default True).
    :param slot_type: slot type to assign (default: the connection's ``slot_type``, else ``gpu-medium``)
        (templated).
    :param slot_ready_timeout: seconds to wait for the slot to become ready (default 600; ``float("inf")``
        waits without a deadline).
    :param if_session_running: when Candela answers that the user already runs a session: ``"stop"`` it
        and start again (default; makes retries safe, but stops another DAG run's session if it uses the
        same Candela user) or ``"fail"`` (never stop a session this task did not start).
    :param deferrable: wait for the slot in the triggerer instead of a worker (default: the
        ``[operators] default_deferrable`` option); needs ``ensure_slot``.  The task assigns the slot when
        the user has none, checks it once and, while it is not ready, defers to
        :class:`~airflow_provider_candela.triggers.slots.CandelaSlotReadyTrigger`; it resumes to start the
        session as without deferral.
    :param slot_poll_interval: with ``deferrable``: seconds between two checks of the slot's state (default 5).
    :param kwargs: the arguments of :class:`~airflow_provider_candela.operators._base.CandelaOperator`
        (``candela_conn_id``, ``hook_params``) and of ``BaseOperator``.
    """

    # Set and checked by set_start_options:
    scope: Any
    parent_session: Any
    ensure_slot: bool
    slot_type: Any
    slot_ready_timeout: float
    if_session_running: str
    deferrable: bool
    slot_poll_interval: float
    #: Set by :func:`~._session_start.resume`: the trigger saw the slot ready.
    slot_ready: bool

    def __init__(
        self,
        *,
        scope: str | None = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600.0,
        if_session_running: str = "stop",
        deferrable: bool | None = None,
        slot_poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        given = dict(locals())  # the named arguments, before anything else is bound
        super().__init__(**kwargs)
        set_start_options(
            self,
            pick(START_DEFAULTS, given),
        )

    def _run_start(self, start: Callable[[CandelaHook], ObjectMetadata]) -> dict[str, Any]:
        """Ready the slot, ``start(hook)`` on it; the new session's metadata as a JSON dict.

        A task killed once the session started stops it before failing: a killed start leaves nothing running.
        """
        with self._task_hook() as hook:
            ready_slot(self, hook)
            metadata = start(hook)
            if hook.cancelled is not None:
                hook.stop_session_best_effort(f"task '{self.task_id}' was killed after its start")
            return metadata.model_dump(mode="json")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the slot trigger fired: start on the ready slot, or fail naming the slot's state."""
        return resume(self, context, event)


class CandelaStartSessionOperator(_StartOperatorBase):
    """Start a Candela app session (agent or pipeline) and push its ``ObjectMetadata`` to XCom.

    Ids (``app``, ``model``, overrides, ``parent_session``) accept an ``ObjectId``, a dict
    ``{"scope", "identifier", "version"}``, an ``ObjectMetadata`` dict, or the short form
    ``"scope/identifier:version"`` (version optional = latest).

    :param app: the app to run (agent or pipeline) (templated).
    :param model: the model configuration to run it with (templated).
    :param circuit_override: a circuit to use instead of the app's (same scope as the app) (templated).
    :param directive_override: a directive to use instead of the app's (same scope as the app) (templated).
    :param kwargs: the start options of :class:`_StartOperatorBase` (``scope``, ``slot_type``, ``deferrable``,
        ...), ``candela_conn_id`` and ``hook_params`` of
        :class:`~airflow_provider_candela.operators._base.CandelaOperator`, and the arguments of ``BaseOperator``.
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
        check_app_ids_now(self, app, model, circuit_override, directive_override)

    def execute(self, context: Context) -> dict[str, Any]:
        """Ready the slot, start the app session (stopping a running one if asked); return its metadata."""
        return self._run_start(app_start(self, self.app, self.model, self.circuit_override, self.directive_override))


class CandelaStartDevSessionOperator(_StartOperatorBase):
    """Start a Candela dev session from an inline circuit and directive; push its ``ObjectMetadata``.

    ``circuit``, ``directive`` and ``tool_module`` are structures, not templated (a circuit's templates
    must reach Candela untouched); they are validated when the DAG is parsed.

    :param model: the model configuration to run with (ObjectId, dict or ``"scope/identifier:version"``)
        (templated).
    :param circuit: the circuit, a ``CircuitDTO`` or a dict ``{"first": node_id, "nodes": {...}}``.
    :param directive: the directive, a ``Directive`` or a dict (``identity``, ``purpose``, ``style``, ...).
    :param tool_module: optional tool classes: a ``ToolModule``, a dict ``{"content": source}`` or the
        Python source as a string.
    :param kwargs: the start options of :class:`_StartOperatorBase` (``scope``, ``slot_type``, ``deferrable``,
        ...), ``candela_conn_id`` and ``hook_params`` of
        :class:`~airflow_provider_candela.operators._base.CandelaOperator`, and the arguments of ``BaseOperator``.
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
        self._check_id_now(model, "model")
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
        """Ready the slot, start the dev session (stopping a running one if asked); return its metadata."""
        model = coerce_object_id(self.model, argument="model", task_id=self.task_id)
        parent_session = optional_id(self, self.parent_session, "parent_session")
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=self.task_id)

        def start(hook: CandelaHook) -> ObjectMetadata:
            self.log.info(
                "Starting a dev session with model %s (circuit entry %r, %d nodes) in scope %s.",
                model,
                self.circuit.first,
                len(self.circuit.nodes),
                scope or "default",
            )
            return start_on_slot(
                self,
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

        return self._run_start(start)


# --------------------------------------------------------------------------------------------------
# Prompts


class _PromptOperatorBase(CandelaOperator):
    """The session (running, or one of the task's own), the prompt, the typed answer and its review.

    The session comes in one of two forms (anything else fails when the DAG is parsed):

    * a running session: ``session`` (e.g. ``start.output``), or ``session_id`` + ``scope``; it is left
      running (the DAG's stop teardown stops it), unless the task is killed or times out mid-prompt;
    * a one-task session: ``app`` + ``model`` (and the start options): the task waits for the slot (in
      the triggerer with ``deferrable=True``), starts the session, sends the prompt and stops the
      session, whether the prompt succeeded, failed or timed out, or the task was killed.  Once the
      answer arrived, a failed stop is a warning: a retry never sends an answered prompt again.

    Every argument is a named parameter: the DAG's ``default_args`` fill any of them, ``.partial()`` takes any
    of them and ``.expand()`` maps over the templated ones.  Beside a running session, start options and
    ``app`` / ``model`` that came from ``default_args`` are ignored (set on the task itself, they are an
    error), and so are review options without ``require_approval``.

    :param prompt: the prompt text (templated).
    :param session: the session: ``start.output`` (an ``ObjectMetadata`` dict), an ``ObjectId``, a dict
        or ``"scope/identifier"`` (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param app: instead of ``session``: the app of a one-task session (templated).
    :param model: with ``app``: the model configuration to run it with (templated).
    :param circuit_override: with ``app``: a circuit to use instead of the app's (templated).
    :param directive_override: with ``app``: a directive to use instead of the app's (templated).
    :param output_type: a pydantic model class: the answer is validated into it and its JSON form (by
        alias) is returned; an answer that does not fit fails the task at once (no retry), listing the
        fields that did not fit (the answer itself goes to the task log, truncated).
    :param scope: with ``session_id``: the session's scope (default ``"default"``); with ``app``: the
        scope of the new session (templated).
    :param parent_session: with ``app``: the session the new one continues, if any (templated).
    :param ensure_slot: with ``app``: assign a slot when the user has none and wait until it is ready
        (default True).
    :param slot_type: with ``app``: slot type to assign (default: the connection's ``slot_type``, else
        ``gpu-medium``) (templated).
    :param slot_ready_timeout: with ``app``: seconds to wait for the slot to become ready (default 600;
        ``float("inf")`` waits without a deadline).
    :param if_session_running: with ``app``: when Candela answers that the user already runs a session:
        ``"stop"`` it and start again (default) or ``"fail"``.
    :param deferrable: with ``app``: wait for the slot in the triggerer instead of a worker (default: the
        ``[operators] default_deferrable`` option); needs ``ensure_slot``.
    :param slot_poll_interval: with ``deferrable``: seconds between two checks of the slot's state (default 5).
    :param require_approval: a person approves (or rejects) Candela's answer on Airflow's Required Actions page
        before the task returns it (Airflow 3.1+; default False).  A one-task session is stopped before the
        review opens; the task waits without a worker slot.
    :param allow_modifications: with ``require_approval``: the reviewer may edit the answer (the JSON; with
        ``output_type`` the model's JSON form; for an agent ``response`` and ``results``) before approving;
        the edit is validated like Candela's answer.
    :param approval_timeout: with ``require_approval``: how long to wait for a reviewer (a ``timedelta``;
        default: no limit).
    :param on_approval_timeout: with ``approval_timeout``: ``"fail"`` the task (default), or ``"approve"`` /
        ``"reject"`` the answer as if a reviewer had.
    :param approval_notifiers: with ``require_approval``: notifiers called when the review opens (one that
        raises is logged; the review stays open).
    :param approval_assigned_users: with ``require_approval``: the only users who may answer the review, as
        ``{"id": ..., "name": ...}`` dicts (default: anyone allowed to review in Airflow).
    :param kwargs: ``candela_conn_id`` and ``hook_params`` of
        :class:`~airflow_provider_candela.operators._base.CandelaOperator`, and the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session", "session_id", "prompt", *_APP_START_FIELDS)
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json", **_APP_START_RENDERERS}

    # Set and checked by set_session and set_start_options:
    session: Any
    session_id: Any
    app: Any
    model: Any
    circuit_override: Any
    directive_override: Any
    scope: Any
    parent_session: Any
    ensure_slot: bool
    slot_type: Any
    slot_ready_timeout: float
    if_session_running: str
    deferrable: bool
    slot_poll_interval: float
    #: Set by :func:`~._session_start.resume`: the trigger saw the slot ready.
    slot_ready: bool
    # Set and checked by set_review_options:
    require_approval: bool
    allow_modifications: bool
    approval_timeout: timedelta | None
    on_approval_timeout: str
    approval_notifiers: list[Callable[..., Any]]
    approval_assigned_users: list[dict[str, str]]

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
        scope: str | None = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600.0,
        if_session_running: str = "stop",
        deferrable: bool | None = None,
        slot_poll_interval: float = 5.0,
        require_approval: bool = False,
        allow_modifications: bool = False,
        approval_timeout: timedelta | None = None,
        on_approval_timeout: str = "fail",
        approval_notifiers: Sequence[Callable[..., Any]] | Callable[..., Any] = (),
        approval_assigned_users: list[dict[str, str]] | dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        given = dict(locals())  # the named arguments, before anything else is bound
        default_args = kwargs.get("default_args")
        super().__init__(**kwargs)
        self.prompt = prompt
        self.output_type = coerce_output_type(output_type, task_id=self.task_id)
        self._check_now(prompt, lambda v: coerce_prompt(v, task_id=self.task_id))
        set_session(
            self,
            pick(SESSION_DEFAULTS, given),
            pick(START_DEFAULTS, given),
            default_args=default_args,
        )
        set_review_options(
            self,
            pick(REVIEW_DEFAULTS, given),
            default_args=default_args,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the slot trigger fired: start the one-task session and prompt it, or fail."""
        return resume(self, context, event)

    def execute_review(
        self, context: Context, event: dict[str, Any], answer: dict[str, Any], fingerprint: Any = None
    ) -> Any:
        """Resume after the review (``require_approval``): the answer or the reviewer's edit, or fail."""
        return Review(self, self.prompt_kind).complete(context, event, answer, fingerprint)

    def post_execute(self, context: Any, result: Any = None) -> None:
        """After success: an approved answer kept for a retry is in XCom now, the task state store lets it go.

        Then Airflow's own ``post_execute`` (a ``post_execute=`` callback of the task, lineage on 2.11).
        """
        if self.require_approval:
            Review.forget(context)
        super().post_execute(context, result)

    def _answered(self, context: Context, value: Any, run: Callable[[], Any]) -> Any:
        """``run()`` the prompt and return ``value(answer)``; with ``require_approval``, after a person's review.

        An answer approved on an earlier try for the same prompt is returned without prompting again.  The
        review opens once the prompt's one-task session is stopped, so the wait holds no Candela session and no
        worker slot.
        """
        self._prompt_taken = None
        if not self.require_approval:
            return value(run())
        review = Review(self, self.prompt_kind)
        earlier = review.approved_earlier(context, lambda: self._taken_prompt(context))
        if earlier is not None:
            return earlier
        answer = value(run())
        review.open(context, answer, self.sent_prompt)

    def _prompt_text(self, context: Context) -> str:
        """The prompt to send (the decorators' function returns it instead)."""
        return coerce_prompt(self.prompt, task_id=self.task_id)

    #: This run's prompt, once taken (:meth:`_taken_prompt`).
    _prompt_taken: str | None = None

    def _taken_prompt(self, context: Context) -> str:
        """:meth:`_prompt_text`, taken once per run (the review's check of an earlier approval may take it first)."""
        if self._prompt_taken is None:
            self._prompt_taken = self._prompt_text(context)
        return self._prompt_taken

    def _in_session(self, context: Context, send: Callable[[CandelaHook, ObjectId, str], _R]) -> _R:
        """``send(hook, session, prompt)`` on the running session, or on a session started and stopped here.

        One hook serves the whole run (slot, start, prompt, stop), and the session's lifecycle is the one of
        :mod:`~airflow_provider_candela.hooks._lifecycle`: a one-task session is stopped however the prompt ends
        (once its answer arrived, a failed stop is a warning, so a retry never sends an answered prompt again);
        a running session is left running unless the prompt was abandoned.  The prompt is taken before any
        request, except by a task that may still defer: it takes it once, after resuming.
        """
        from airflow_provider_candela.hooks._lifecycle import own_session, running_session

        owner = f"task '{self.task_id}'"
        if self.app is None:
            prompt = self._taken_prompt(context)
            oid = coerce_session(self.session, session_id=self.session_id, scope=self.scope, task_id=self.task_id)
            with self._task_hook() as hook, running_session(hook, oid, owner=owner) as session:
                return self._prompting(hook, None, None, session, prompt, send=send)
        if not may_defer(self):
            self._taken_prompt(context)
        start = app_start(self, self.app, self.model, self.circuit_override, self.directive_override)
        app = coerce_object_id(self.app, argument="app", task_id=self.task_id)
        model = coerce_object_id(self.model, argument="model", task_id=self.task_id)
        with self._task_hook() as hook:

            def slot() -> None:
                ready_slot(self, hook)  # may defer: the prompt is then taken after resuming
                self._taken_prompt(context)

            with own_session(
                hook, app=app, kind="one-task", owner=owner, start=lambda: start(hook), prepare=slot
            ) as session:
                return self._prompting(hook, app, model, session, self._taken_prompt(context), send=send)

    #: The ``kind`` tag of ``candela.prompt``.
    prompt_kind: ClassVar[str] = "pipeline"
    #: The prompt sent (set by :meth:`_prompting`), for the review.
    sent_prompt: str

    def _prompting(
        self,
        hook: CandelaHook,
        app: ObjectId | None,
        model: ObjectId | None,
        session: ObjectId,
        prompt: str,
        *,
        send: Callable[[CandelaHook, ObjectId, str], _R],
    ) -> _R:
        """``send(hook, session, prompt)``, timed and traced as one prompt (kept as ``sent_prompt`` for the review)."""
        from airflow_provider_candela.hooks._telemetry import prompting

        self.sent_prompt = prompt
        with prompting(
            hook.telemetry, kind=self.prompt_kind, app=app, model=model, session=session, prompt=prompt
        ) as seen:
            seen["answer"] = answer = send(hook, session, prompt)
            return answer


class CandelaSubmitPipelinePromptOperator(_PromptOperatorBase):
    """Submit a prompt to a pipeline session and return the server's JSON answer.

    XCom return value: the JSON object Candela returns, e.g.
    ``{"metadata": {"request_id": ...}, "result": {...}}``; with ``output_type``, the answer's
    ``result`` validated into that model, in its JSON form (by alias), and the request id under the
    XCom key ``request_id``.

    Arguments: those of :class:`_PromptOperatorBase` (the prompt, the session, the start and review options).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt (in a session of its own with ``app``); return the answer (once reviewed)."""
        result: dict[str, Any] = self._answered(
            context, lambda answer: self._value(context, answer), lambda: self._in_session(context, self._submit)
        )
        return result

    def _value(self, context: Context, answer: PipelineAnswer) -> dict[str, Any]:
        """The task's return value: the answer's JSON, or its ``output_type`` form."""
        xcom = answer.to_xcom()
        self.log.info("Pipeline answered (request id %s, keys %s).", answer.request_id, sorted(xcom))
        if self.output_type is None:
            return xcom
        value = typed(
            answer.result,
            self.output_type,
            what="the pipeline's `result`",
            answer=xcom,
            task_id=self.task_id,
            log=self.log,
        )
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="request_id", value=answer.request_id)
        return value

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

    Arguments: those of :class:`_PromptOperatorBase` (the prompt, the session, the start and review options),
    and:

    :param return_events: also return the full event list (can be large: XCom lives in the metadata DB).
    """

    prompt_kind: ClassVar[str] = "agent"

    def __init__(self, *, return_events: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.return_events = coerce_flag(return_events, argument="return_events", task_id=self.task_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt (in a session of its own with ``app``), log each event; return the summary (reviewed)."""
        result: dict[str, Any] = self._answered(context, self._typed, lambda: self._in_session(context, self._submit))
        return result

    def _typed(self, summary: dict[str, Any]) -> dict[str, Any]:
        if self.output_type is not None:
            return typed_results(summary, self.output_type, task_id=self.task_id, log=self.log)
        return summary

    def _submit(self, hook: CandelaHook, session: ObjectId, prompt: str) -> dict[str, Any]:
        self.log.info("Submitting an agent prompt (%d characters) to session %s.", len(prompt), session)
        transcript = AgentTranscript(self.log.info)
        try:
            answer = hook.agent_answer(session, prompt, keep_events=self.return_events, on_event=transcript.add)
        finally:
            transcript.flush()
        summary = answer.summary(id_json(session))
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
    :param hook_params: per-task overrides of the connection's ``timeout`` (seconds, ``(connect, read)`` or
        ``'connect,read'``) and ``max_retries``, e.g. ``{"timeout": (10, 900), "max_retries": 2}``.
    """

    template_fields: Sequence[str] = ("candela_conn_id", "session")
    template_fields_renderers: ClassVar[dict[str, str]] = {"session": "json"}

    def __init__(self, *, session: Any = None, dispose_slot: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.session = session
        self.dispose_slot = coerce_flag(dispose_slot, argument="dispose_slot", task_id=self.task_id)
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
