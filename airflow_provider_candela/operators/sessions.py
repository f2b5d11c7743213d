"""Candela session operators: start a session, prompt it, stop it, delete it.

Each operator is thin: arguments -> one or two :class:`~airflow_provider_candela.hooks.candela.CandelaHook`
calls -> a JSON-safe XCom value.  The start operators push the new session's ``ObjectMetadata`` as a
dict; the prompt, stop and delete operators take that dict as ``session`` (typically
``start.output``).

This module is imported at every DAG parse: the hook (and ``requests``) are imported inside
methods only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, TriggerRule

from airflow_provider_candela._validation import (
    IF_SESSION_RUNNING,
    coerce_bool,
    coerce_model,
    coerce_name,
    coerce_object_id,
    coerce_older_than,
    coerce_optional_name,
    coerce_session,
    is_resolved,
    require_prompt,
    session_ids,
)
from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaCancelledError,
    CandelaError,
    CandelaInputError,
    CandelaSessionRunningError,
)
from airflow_provider_candela.models import CircuitDTO, Directive, ObjectId, ObjectMetadata, ToolModule
from airflow_provider_candela.operators._transcript import AgentTranscript

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = [
    "CandelaDeleteSessionOperator",
    "CandelaStartDevSessionOperator",
    "CandelaStartSessionOperator",
    "CandelaStopSessionOperator",
    "CandelaSubmitAgentPromptOperator",
    "CandelaSubmitPipelinePromptOperator",
]

DEFAULT_CONN_ID = "candela_default"


class _CandelaOperator(BaseOperator):
    """Common plumbing: the connection id, a lazily created hook, best-effort session stop.

    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, candela_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(candela_conn_id, str) or not candela_conn_id.strip():
            raise CandelaInputError(
                f"Invalid `candela_conn_id` for task '{self.task_id}': expected a connection id such as "
                f"'candela_default', got {candela_conn_id!r}."
            )
        self.candela_conn_id = candela_conn_id

    @cached_property
    def hook(self) -> CandelaHook:
        """The hook used by ``execute`` (created on first use, one per task run)."""
        return self._new_hook()

    def _new_hook(self) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        return CandelaHook(candela_conn_id=self.candela_conn_id)

    def _close_hook(self) -> None:
        hook = self.__dict__.pop("hook", None)
        if hook is not None:
            try:
                hook.close()
            except Exception as err:  # closing is best effort
                self.log.debug("Closing the Candela hook failed: %s", err)

    @contextmanager
    def _task_hook(self) -> Iterator[CandelaHook]:
        """The task's hook for one ``execute``: closed afterwards; a kill meanwhile fails the task.

        ``on_kill`` cancels the hook (a blocked read returns at once and raises); when the work finished
        anyway, the task still fails: a killed task never ends as a success.
        """
        hook = self.hook
        try:
            yield hook
        finally:
            self._close_hook()
        if hook.cancelled is not None:
            raise CandelaCancelledError(f"Task '{self.task_id}' was killed ({hook.cancelled}); its result is discarded")

    def on_kill(self) -> None:
        """Abort the task's calls in flight at once (``execute`` then raises)."""
        hook = self.__dict__.get("hook")
        if hook is not None:
            hook.cancel(f"task '{self.task_id}' was killed")

    def _stop_session_best_effort(self, reason: str) -> None:
        """Stop the running session of the connection's user; log (never raise) on failure.

        A fresh hook is used: ``on_kill`` runs while ``execute`` may be inside a call of the task's hook.
        """
        try:
            hook = self._new_hook()
            try:
                hook.stop_session()
            finally:
                hook.close()
        except Exception as err:
            self.log.warning("Could not stop the Candela session (%s): %s", reason, err)
        else:
            self.log.info("Stopped the Candela session (%s).", reason)

    def _check_id_now(self, value: Any, argument: str) -> None:
        """Validate an id argument at construction unless it is still a template or an XComArg."""
        if is_resolved(value):
            coerce_object_id(value, argument=argument, task_id=self.task_id)

    def _check_now(self, value: Any, check: Callable[[Any], object]) -> None:
        """Validate a value at construction unless it is still a template or an XComArg."""
        if is_resolved(value):
            check(value)


# --------------------------------------------------------------------------------------------------
# Start


class _StartOperatorBase(_CandelaOperator):
    """Slot handling, retry safety and ``on_kill`` shared by the two start operators.

    Retry safety: Candela runs at most one session per user.  With ``if_session_running="stop"``
    (the default, as candela-kit does) the operator stops the user's running session before
    starting, so a retried start (after a worker crash or a lost response) never leaves a second
    session running; if the start call itself fails ambiguously, the operator stops whatever that
    call may have started before re-raising.  With ``if_session_running="fail"`` it never stops a
    session it did not start: Candela refuses the start while another session runs, and the task
    fails with a message saying so (with ``retries``, the task then waits for the slot).
    """

    def __init__(
        self,
        *,
        scope: str | None = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600,
        if_session_running: str = "stop",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scope = scope
        self.parent_session = parent_session
        self.ensure_slot = ensure_slot
        self.slot_type = slot_type
        self.slot_ready_timeout = slot_ready_timeout
        if if_session_running not in IF_SESSION_RUNNING:
            raise CandelaInputError(
                f"Invalid `if_session_running` for task '{self.task_id}': expected 'stop' (stop the user's running "
                f"session, then start) or 'fail' (never stop a session this task did not start), "
                f"got {if_session_running!r}."
            )
        self.if_session_running = if_session_running
        if not isinstance(ensure_slot, bool):
            raise CandelaInputError(
                f"Invalid `ensure_slot` for task '{self.task_id}': expected True or False, got {ensure_slot!r}."
            )
        if (
            isinstance(slot_ready_timeout, bool)
            or not isinstance(slot_ready_timeout, int | float)
            or slot_ready_timeout <= 0
        ):
            raise CandelaInputError(
                f"Invalid `slot_ready_timeout` for task '{self.task_id}': expected a positive number of seconds, "
                f"got {slot_ready_timeout!r}."
            )
        self._check_now(scope, lambda v: coerce_name(v, kind="scope", argument="scope", task_id=self.task_id))
        self._check_now(slot_type, lambda v: coerce_name(v, kind="scope", argument="slot_type", task_id=self.task_id))
        if parent_session is not None:
            self._check_now(
                parent_session, lambda v: coerce_object_id(v, argument="parent_session", task_id=self.task_id)
            )

    def _optional_id(self, value: Any, argument: str) -> ObjectId | None:
        if value is None or value == "":
            return None
        return coerce_object_id(value, argument=argument, task_id=self.task_id)

    def _start(self, start: Callable[[CandelaHook], ObjectMetadata]) -> dict[str, Any]:
        """Ensure the slot, then start (``start`` passes ``if_session_running`` to the hook)."""
        with self._task_hook() as hook:
            if self.ensure_slot:
                slot_type = coerce_name(self.slot_type, kind="scope", argument="slot_type", task_id=self.task_id)
                slot = hook.ensure_slot(slot_type, timeout=float(self.slot_ready_timeout))
                self.log.info("Slot %s (%s) is ready.", slot.slot_id, slot.slot_type)
            try:
                metadata = self._start_once(hook, start)
            except CandelaSessionRunningError as err:
                if self.if_session_running == "fail":
                    raise err.amended(
                        f"Task '{self.task_id}' has if_session_running='fail': wait for the other session to stop "
                        "(give the task retries), use another connection (Candela user), or set "
                        "if_session_running='stop'"
                    ) from err
                raise
            self.log.info(
                "Started Candela session %s (domain %s, created by %s at %s).",
                metadata.obj_id,
                metadata.domain,
                metadata.created_by,
                metadata.created_at.isoformat(),
            )
            return metadata.model_dump(mode="json")

    def _start_once(self, hook: CandelaHook, start: Callable[[CandelaHook], ObjectMetadata]) -> ObjectMetadata:
        try:
            return start(hook)
        except CandelaApiError as err:
            if err.status is not None and 400 <= err.status < 500:
                raise  # Candela answered and refused: nothing was started
            self._stop_session_best_effort("the start call failed")
            raise
        except CandelaCancelledError:
            raise  # on_kill stops the session
        except BaseException:
            # The start may have happened server-side (lost response): leave nothing running.
            self._stop_session_best_effort("the start call failed")
            raise

    def on_kill(self) -> None:
        """Abort the start and stop the session (best effort): a killed start must not leave a session running."""
        super().on_kill()
        self._stop_session_best_effort(f"task '{self.task_id}' was killed")


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
    :param scope: scope of the new session (Candela's default is ``"default"``).
    :param circuit_override: a circuit to use instead of the app's (same scope as the app).
    :param directive_override: a directive to use instead of the app's (same scope as the app).
    :param parent_session: the session this one continues, if any.
    :param ensure_slot: assign a slot when the user has none and wait until it is ready.
    :param slot_type: slot type to assign (default: the connection's ``slot_type``, else ``gpu-medium``).
    :param slot_ready_timeout: seconds to wait for the slot to become ready.
    :param if_session_running: what to do when the user already runs a session: ``"stop"`` it first
        (default; makes retries safe, but stops another DAG run's session if it uses the same Candela
        user) or ``"fail"`` (never stop a session this task did not start).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    template_fields: Sequence[str] = (
        "app",
        "model",
        "scope",
        "circuit_override",
        "directive_override",
        "parent_session",
        "slot_type",
    )

    def __init__(
        self,
        *,
        app: Any,
        model: Any,
        scope: str | None = None,
        circuit_override: Any = None,
        directive_override: Any = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600,
        if_session_running: str = "stop",
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope=scope,
            parent_session=parent_session,
            ensure_slot=ensure_slot,
            slot_type=slot_type,
            slot_ready_timeout=slot_ready_timeout,
            if_session_running=if_session_running,
            candela_conn_id=candela_conn_id,
            **kwargs,
        )
        self.app = app
        self.model = model
        self.circuit_override = circuit_override
        self.directive_override = directive_override
        for argument, value, required in (
            ("app", app, True),
            ("model", model, True),
            ("circuit_override", circuit_override, False),
            ("directive_override", directive_override, False),
        ):
            if value is not None or required:
                self._check_id_now(value, argument)

    def execute(self, context: Context) -> dict[str, Any]:
        """Ensure a slot, stop the user's running session, start the app session; return its metadata."""
        app = coerce_object_id(self.app, argument="app", task_id=self.task_id)
        model = coerce_object_id(self.model, argument="model", task_id=self.task_id)
        circuit_override = self._optional_id(self.circuit_override, "circuit_override")
        directive_override = self._optional_id(self.directive_override, "directive_override")
        parent_session = self._optional_id(self.parent_session, "parent_session")
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=self.task_id)
        self.log.info("Starting app %s with model %s in scope %s.", app, model, scope or "default")
        return self._start(
            lambda hook: hook.start_session(
                app,
                model,
                scope=scope,
                parent_session=parent_session,
                circuit_override=circuit_override,
                directive_override=directive_override,
                if_session_running=self.if_session_running,
            ),
        )


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
    :param scope: scope of the new session (Candela's default is ``"default"``).
    :param parent_session: the session this one continues, if any.
    :param ensure_slot: assign a slot when the user has none and wait until it is ready.
    :param slot_type: slot type to assign (default: the connection's ``slot_type``, else ``gpu-medium``).
    :param slot_ready_timeout: seconds to wait for the slot to become ready.
    :param if_session_running: what to do when the user already runs a session: ``"stop"`` it first
        (default; makes retries safe, but stops another DAG run's session if it uses the same Candela
        user) or ``"fail"`` (never stop a session this task did not start).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    template_fields: Sequence[str] = ("model", "scope", "parent_session", "slot_type")

    def __init__(
        self,
        *,
        model: Any,
        circuit: CircuitDTO | Mapping[str, Any],
        directive: Directive | Mapping[str, Any],
        tool_module: ToolModule | Mapping[str, Any] | str | None = None,
        scope: str | None = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600,
        if_session_running: str = "stop",
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope=scope,
            parent_session=parent_session,
            ensure_slot=ensure_slot,
            slot_type=slot_type,
            slot_ready_timeout=slot_ready_timeout,
            if_session_running=if_session_running,
            candela_conn_id=candela_conn_id,
            **kwargs,
        )
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
        return self._start(
            lambda hook: hook.start_dev_session(
                model,
                self.circuit,
                self.directive,
                scope=scope,
                parent_session=parent_session,
                tool_module=self.tool_module,
                if_session_running=self.if_session_running,
            ),
        )


# --------------------------------------------------------------------------------------------------
# Prompts


class _PromptOperatorBase(_CandelaOperator):
    """``session`` / ``session_id`` + ``scope`` and ``prompt`` handling of the prompt operators."""

    template_fields: Sequence[str] = ("session", "session_id", "scope", "prompt")

    def __init__(
        self,
        *,
        prompt: str,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.session = session
        self.session_id = session_id
        self.scope = scope
        self._check_now(prompt, lambda v: require_prompt(v, task_id=self.task_id))
        if all(is_resolved(v) for v in (session, session_id, scope)):
            coerce_session(session, session_id=session_id, scope=scope, task_id=self.task_id)

    def _session_and_prompt(self) -> tuple[ObjectId, str]:
        oid = coerce_session(self.session, session_id=self.session_id, scope=self.scope, task_id=self.task_id)
        prompt = require_prompt(self.prompt, task_id=self.task_id)
        return oid, prompt

    def on_kill(self) -> None:
        """Abort the prompt in flight (``execute`` raises) and stop the session (best effort)."""
        super().on_kill()
        self._stop_session_best_effort(f"task '{self.task_id}' was killed")


class CandelaSubmitPipelinePromptOperator(_PromptOperatorBase):
    """Submit a prompt to a pipeline session and return the server's JSON answer.

    XCom return value: the JSON object Candela returns, e.g.
    ``{"metadata": {"request_id": ...}, "result": {...}}``.

    :param prompt: the prompt text (templated).
    :param session: the session: ``start.output`` (an ``ObjectMetadata`` dict), an ``ObjectId``, a dict
        or ``"scope/identifier"`` (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param scope: with ``session_id``: the session scope, default ``"default"`` (templated).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    def __init__(
        self,
        *,
        prompt: str,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            prompt=prompt,
            session=session,
            session_id=session_id,
            scope=scope,
            candela_conn_id=candela_conn_id,
            **kwargs,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt; return the server's JSON object."""
        oid, prompt = self._session_and_prompt()
        self.log.info("Submitting a pipeline prompt (%d characters) to session %s.", len(prompt), oid)
        with self._task_hook() as hook:
            answer = hook.submit_pipeline_prompt(oid, prompt)
        xcom = answer.to_xcom()
        self.log.info("Pipeline answered (request id %s, keys %s).", answer.request_id, sorted(xcom))
        return xcom


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

    :param prompt: the prompt text (templated).
    :param session: the session: ``start.output`` (an ``ObjectMetadata`` dict), an ``ObjectId``, a dict
        or ``"scope/identifier"`` (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param scope: with ``session_id``: the session scope, default ``"default"`` (templated).
    :param return_events: also return the full event list (can be large: XCom lives in the metadata DB).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    def __init__(
        self,
        *,
        prompt: str,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        return_events: bool = False,
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            prompt=prompt,
            session=session,
            session_id=session_id,
            scope=scope,
            candela_conn_id=candela_conn_id,
            **kwargs,
        )
        if not isinstance(return_events, bool):
            raise CandelaInputError(
                f"Invalid `return_events` for task '{self.task_id}': expected True or False, got {return_events!r}."
            )
        self.return_events = return_events

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the prompt, log each event as it arrives; return the compact summary."""
        oid, prompt = self._session_and_prompt()
        self.log.info("Submitting an agent prompt (%d characters) to session %s.", len(prompt), oid)
        transcript = AgentTranscript(self.log.info, keep_events=self.return_events)
        try:
            with (
                self._task_hook() as hook,
                hook.submit_prompt_to_agent(oid, prompt) as stream,
            ):
                transcript.consume(stream)
        finally:
            transcript.flush()
        summary = transcript.summary(session_ids(oid))
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
# Stop and delete


class CandelaStopSessionOperator(_CandelaOperator):
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
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    template_fields: Sequence[str] = ("session",)

    def __init__(
        self,
        *,
        session: Any = None,
        dispose_slot: bool = False,
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(candela_conn_id=candela_conn_id, **kwargs)
        self.session = session
        if not isinstance(dispose_slot, bool):
            raise CandelaInputError(
                f"Invalid `dispose_slot` for task '{self.task_id}': expected True or False, got {dispose_slot!r}."
            )
        self.dispose_slot = dispose_slot
        if session is not None:
            self._check_now(session, lambda v: coerce_object_id(v, argument="session", task_id=self.task_id))

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


class CandelaDeleteSessionOperator(_CandelaOperator):
    """Delete one stored session, or (cleanup mode) every stored session matching filters.

    Given sessions: pass ``session`` (``start.output``, an ``ObjectId``, dict or
    ``"scope/identifier:version"``, or a list of those) or ``session_id`` (+ ``scope``, ``version``).
    A session that does not exist is logged and skipped.

    Cleanup mode (no session given): lists every stored session version and deletes those matching
    all the given filters; at least one filter is required.  ``older_than=0`` matches everything.
    Note that cleanup may delete a session another DAG is still using if it matches the filters.

    XCom return value: the list of deleted (with ``dry_run``: that would be deleted) ``ObjectMetadata``
    dicts.

    :param session: the session to delete, or a list of sessions (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param scope: with ``session_id``: the session scope (default ``"default"``); in cleanup mode a filter
        (templated).
    :param version: with ``session_id``: only this version (default: all versions) (templated).
    :param older_than: cleanup filter: sessions created longer ago than this: a ``timedelta``, a number
        of seconds, or ``"7d"``/``"12h"``/``"30m"``/``"45s"`` (templated).
    :param created_by: cleanup filter: sessions created by this user (templated).
    :param identifier_prefix: cleanup filter: sessions whose identifier starts with this (templated).
    :param dry_run: only list (and log) what would be deleted: a bool, or ``"true"``/``"false"`` from a
        template (templated, as the attribute ``dry_run_flag``: ``BaseOperator.dry_run`` is a method).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    """

    template_fields: Sequence[str] = (
        "session",
        "session_id",
        "scope",
        "version",
        "older_than",
        "created_by",
        "identifier_prefix",
        "dry_run_flag",
    )

    def __init__(
        self,
        *,
        session: Any = None,
        session_id: str | None = None,
        scope: str | None = None,
        version: str | None = None,
        older_than: timedelta | float | str | None = None,
        created_by: str | None = None,
        identifier_prefix: str | None = None,
        dry_run: bool | str = False,
        candela_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(candela_conn_id=candela_conn_id, **kwargs)
        self.is_dry_run = False
        self.session = session
        self.session_id = session_id
        self.scope = scope
        self.version = version
        self.older_than = older_than
        self.created_by = created_by
        self.identifier_prefix = identifier_prefix
        # Stored under another name: ``BaseOperator.dry_run`` is a method.
        self.dry_run_flag = dry_run
        self._check_now(dry_run, lambda v: coerce_bool(v, argument="dry_run", task_id=self.task_id))
        if all(
            is_resolved(v) for v in (session, session_id, scope, version, older_than, created_by, identifier_prefix)
        ):
            self._plan()

    def _plan(self) -> tuple[list[ObjectId] | None, dict[str, Any]]:
        """The sessions to delete, or None and the cleanup filters; validates every argument."""
        tid = self.task_id
        filters = {
            "older_than": coerce_older_than(self.older_than, task_id=tid),
            "created_by": coerce_optional_name(self.created_by, argument="created_by", task_id=tid),
            "identifier_prefix": coerce_optional_name(
                self.identifier_prefix, argument="identifier_prefix", task_id=tid
            ),
        }
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=tid)
        version = coerce_name(self.version, kind="version", argument="version", task_id=tid)
        has_session = (self.session is not None and self.session != "") or bool(self.session_id)
        if has_session:
            used = [name for name, value in filters.items() if value is not None]
            if used:
                raise CandelaInputError(
                    f"Task '{tid}' got a session to delete and the cleanup filter(s) {used}: pass either "
                    "`session`/`session_id` (delete given sessions) or filters (cleanup mode), not both."
                )
            session = self.session if self.session != "" else None
            if isinstance(session, list | tuple):
                if self.session_id or version:
                    raise CandelaInputError(
                        f"Task '{tid}': with a list of sessions in `session`, do not pass `session_id` or `version`."
                    )
                return [
                    coerce_session(item, session_id=None, scope=scope, task_id=tid, argument=f"session[{i}]")
                    for i, item in enumerate(session)
                ], {}
            oid = coerce_session(session, session_id=self.session_id, scope=scope, task_id=tid)
            if version:
                if oid.version and oid.version != version:
                    raise CandelaInputError(
                        f"Task '{tid}': `version`={version!r} contradicts the version of `session` ({oid.version!r})."
                    )
                oid = ObjectId.checked(oid.scope, oid.identifier, version)
            return [oid], {}
        if version:
            raise CandelaInputError(
                f"Task '{tid}': `version` needs `session_id` (or `session`); in cleanup mode use the filters."
            )
        filters["scope"] = scope
        if all(value is None for value in filters.values()):
            raise CandelaInputError(
                f"Task '{tid}' has nothing to delete: pass `session=start.output` (or `session_id=`), or at least "
                "one cleanup filter (`older_than`, `scope`, `created_by`, `identifier_prefix`; `older_than=0` "
                "matches every session)."
            )
        return None, filters

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Delete the given sessions or the matching sessions; return their metadata."""
        oids, filters = self._plan()
        self.is_dry_run = coerce_bool(self.dry_run_flag, argument="dry_run", task_id=self.task_id)
        with self._task_hook():
            if oids is not None:
                return [meta for oid in oids for meta in self._delete_one(oid)]
            return self._cleanup(filters)

    def _delete_one(self, oid: ObjectId) -> list[dict[str, Any]]:
        hook = self.hook
        if not hook.session_exists(oid):
            self.log.warning("Session %s does not exist; nothing to delete.", oid)
            return []
        if self.is_dry_run:
            if oid.version:
                found = [hook.get_session_metadata(oid)]
            else:
                found = [m for m in hook.list_sessions(all_versions=True) if _same_session(m.obj_id, oid)]
            for meta in found:
                self.log.info("[dry run] Would delete session %s (created %s).", meta.obj_id, meta.created_at)
            return [m.model_dump(mode="json") for m in found]
        deleted = hook.delete_session(oid)
        for meta in deleted:
            self.log.info("Deleted session %s (created %s by %s).", meta.obj_id, meta.created_at, meta.created_by)
        return [m.model_dump(mode="json") for m in deleted]

    def _cleanup(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        hook = self.hook
        now = datetime.now(UTC)
        described = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
        candidates = [m for m in hook.list_sessions(all_versions=True) if _matches(m, filters, now)]
        self.log.info(
            "%s %d stored session version(s) matching %s.",
            "[dry run] Would delete" if self.is_dry_run else "Deleting",
            len(candidates),
            described,
        )
        out: list[dict[str, Any]] = []
        failures: list[str] = []
        for meta in candidates:
            if self.is_dry_run:
                self.log.info(
                    "[dry run] Would delete session %s (created %s by %s).",
                    meta.obj_id,
                    meta.created_at,
                    meta.created_by,
                )
                out.append(meta.model_dump(mode="json"))
                continue
            try:
                deleted = hook.delete_session(meta.obj_id)
            except CandelaCancelledError:
                raise
            except CandelaError as err:
                self.log.error("Could not delete session %s: %s", meta.obj_id, err)
                failures.append(f"{meta.obj_id}: {err}")
                continue
            for gone in deleted:
                self.log.info("Deleted session %s (created %s by %s).", gone.obj_id, gone.created_at, gone.created_by)
                out.append(gone.model_dump(mode="json"))
        if failures:
            raise CandelaError(
                f"Task '{self.task_id}' deleted {len(out)} session version(s) but failed on {len(failures)}: "
                + "; ".join(failures[:5])
                + (" ..." if len(failures) > 5 else "")
            )
        return out


def _same_session(candidate: ObjectId, wanted: ObjectId) -> bool:
    return candidate.scope == wanted.scope and candidate.identifier == wanted.identifier


def _matches(meta: ObjectMetadata, filters: Mapping[str, Any], now: datetime) -> bool:
    scope = filters.get("scope")
    if scope is not None and meta.obj_id.scope != scope:
        return False
    created_by = filters.get("created_by")
    if created_by is not None and meta.created_by != created_by:
        return False
    prefix = filters.get("identifier_prefix")
    if prefix is not None and not meta.obj_id.identifier.startswith(prefix):
        return False
    older_than: timedelta | None = filters.get("older_than")
    if older_than is not None:
        created = meta.created_at if meta.created_at.tzinfo else meta.created_at.replace(tzinfo=UTC)
        if now - created < older_than:
            return False
    return True
