"""Starting a session from a task: the start options, the slot (waited for in the worker or the triggerer), the start.

Plain functions over the operator, not a base class: the start operators and the prompt operators'
one-task sessions call them.  The start options are attributes of the operator (so that Airflow
renders the templated ones), taken out of its keyword arguments by :func:`pop_start_options` and set
and checked by :func:`set_start_options`.  Imported at every DAG parse: the hook and the trigger are
imported inside functions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from airflow.providers.common.compat.sdk import conf

from airflow_provider_candela._deferral import backstop, trigger_event
from airflow_provider_candela._validation import (
    IF_SESSION_RUNNING,
    check_session_form,
    coerce_choice,
    coerce_flag,
    coerce_name,
    coerce_object_id,
    coerce_positive_seconds,
    coerce_session,
    is_resolved,
)
from airflow_provider_candela.exceptions import (
    CandelaError,
    CandelaInputError,
    CandelaSessionRunningError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.models import SlotState

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectId, ObjectMetadata

__all__ = [
    "START_OPTIONS",
    "START_OPTION_DOCS",
    "SessionArguments",
    "SessionForm",
    "StartOptions",
    "app_start",
    "check_app_ids_now",
    "may_defer",
    "optional_id",
    "pop_start_options",
    "ready_slot",
    "resume",
    "set_start_options",
    "start_on_slot",
]


class StartOptions:
    """The start options as attributes of an operator that starts sessions (declarations only)."""

    scope: Any
    parent_session: Any
    ensure_slot: bool
    slot_type: Any
    slot_ready_timeout: float
    if_session_running: str
    deferrable: bool
    slot_poll_interval: float
    #: Set by :func:`resume`: the trigger saw the slot ready.
    slot_ready: bool


class SessionArguments:
    """The session arguments as attributes of a prompt or batch operator (declarations; see :class:`SessionForm`)."""

    session: Any
    session_id: Any
    app: Any
    model: Any
    circuit_override: Any
    directive_override: Any


class StartingOperator(Protocol):
    """What the functions below need of an operator: ours (``CandelaOperator``), with the start options."""

    task_id: str
    candela_conn_id: str
    hook_params: dict[str, Any]
    scope: Any
    parent_session: Any
    ensure_slot: bool
    slot_type: Any
    slot_ready_timeout: float
    if_session_running: str
    deferrable: bool
    slot_poll_interval: float
    slot_ready: bool

    @property
    def log(self) -> Any: ...

    def defer(self, *, trigger: Any, method_name: str, timeout: timedelta | None = None) -> Any: ...

    def execute(self, context: Context) -> Any: ...

    def _check_now(self, value: Any, check: Callable[[Any], object]) -> None: ...

    def _check_id_now(self, value: Any, argument: str) -> None: ...


#: The start options and their defaults (``deferrable``'s is read from the configuration when the task is made).
_DEFAULTS: Final[Mapping[str, Any]] = {
    "scope": None,
    "parent_session": None,
    "ensure_slot": True,
    "slot_type": None,
    "slot_ready_timeout": 600.0,
    "if_session_running": "stop",
    "slot_poll_interval": 5.0,
}
#: The start options a one-task session takes (``scope`` aside: it is also a running session's scope).
START_OPTIONS: Final = (*(name for name in _DEFAULTS if name != "scope"), "deferrable")

#: The docs of the start options, appended to the docstring of each operator that takes them.
START_OPTION_DOCS: Final = """
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
"""


def pop_start_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the start options out of an operator's keyword arguments (before ``BaseOperator`` sees them)."""
    options = {**_DEFAULTS, **{name: kwargs.pop(name) for name in (*_DEFAULTS, "deferrable") if name in kwargs}}
    if "deferrable" not in options:
        # The configured default applies where a task can defer: not with ensure_slot=False.
        options["deferrable"] = options["ensure_slot"] is not False and conf.getboolean(
            "operators", "default_deferrable", fallback=False
        )
    return options


@dataclass
class SessionForm:
    """The session arguments of a prompt or batch task: a running session, or ``app`` + ``model`` of its own.

    Taken out of the operator's keyword arguments by :meth:`take` (before ``BaseOperator.__init__``: the start
    options leave them; ``deferrable`` is dropped with a running session, which cannot defer, e.g. when it came
    from ``default_args``), then set on the operator and checked by :meth:`apply`.
    """

    arguments: dict[str, Any]
    options: dict[str, Any]
    #: The start options given (they apply only to a session of the task's own).
    given: list[str]

    @property
    def running(self) -> bool:
        return self.arguments["session"] is not None or bool(self.arguments["session_id"])

    @classmethod
    def take(
        cls,
        kwargs: dict[str, Any],
        *,
        session: Any,
        session_id: Any,
        app: Any,
        model: Any,
        circuit_override: Any,
        directive_override: Any,
    ) -> SessionForm:
        arguments = {
            "session": session,
            "session_id": session_id,
            "app": app,
            "model": model,
            "circuit_override": circuit_override,
            "directive_override": directive_override,
        }
        given = [name for name in START_OPTIONS if name in kwargs and name != "deferrable"]
        given += [name for name in ("circuit_override", "directive_override") if arguments[name] is not None]
        if session is not None or session_id:
            kwargs.pop("deferrable", None)
        return cls(arguments, pop_start_options(kwargs), given)

    def apply(self, op: StartingOperator, *, argument: str = "session") -> None:
        """Set the session arguments and the start options on ``op``; check the form (templated values later)."""
        for name, value in self.arguments.items():
            setattr(op, name, value)
        set_start_options(op, self.options)
        tid = op.task_id
        given = self.arguments
        running = self.running
        check_session_form(
            running=running,
            app=given["app"],
            model=given["model"],
            start_options=self.given,
            task_id=tid,
            argument=argument,
        )
        if running and all(is_resolved(v) for v in (given["session"], given["session_id"], op.scope)):
            coerce_session(given["session"], session_id=given["session_id"], scope=op.scope, task_id=tid)
        if not running:
            check_app_ids_now(op, given["app"], given["model"], given["circuit_override"], given["directive_override"])


def set_start_options(op: StartingOperator, options: Mapping[str, Any]) -> None:
    """Set the start options on ``op`` and check them (templated ones unless still templates or XComArgs)."""
    tid = op.task_id
    op.scope = options["scope"]
    op.parent_session = options["parent_session"]
    op.slot_type = options["slot_type"]
    op.ensure_slot = coerce_flag(options["ensure_slot"], argument="ensure_slot", task_id=tid)
    op.slot_ready_timeout = coerce_positive_seconds(
        options["slot_ready_timeout"], argument="slot_ready_timeout", task_id=tid
    )
    op.if_session_running = coerce_choice(
        options["if_session_running"], IF_SESSION_RUNNING, argument="if_session_running", task_id=tid
    )
    op.deferrable = coerce_flag(options["deferrable"], argument="deferrable", task_id=tid)
    op.slot_poll_interval = coerce_positive_seconds(
        options["slot_poll_interval"], argument="slot_poll_interval", task_id=tid
    )
    op.slot_ready = False  # set by resume(): the trigger saw the slot ready
    if op.deferrable and not op.ensure_slot:
        raise CandelaInputError(
            f"Task '{tid}' has deferrable=True and ensure_slot=False: a task that does not wait for its slot "
            "has nothing to defer. Drop one of them."
        )
    op._check_now(op.scope, lambda v: coerce_name(v, kind="scope", argument="scope", task_id=tid))
    op._check_now(op.slot_type, lambda v: coerce_name(v, kind="scope", argument="slot_type", task_id=tid))
    if op.parent_session is not None:
        op._check_id_now(op.parent_session, "parent_session")


def optional_id(op: StartingOperator, value: Any, argument: str) -> ObjectId | None:
    """An optional id argument, rendered: None when empty."""
    if value is None or value == "":
        return None
    return coerce_object_id(value, argument=argument, task_id=op.task_id)


def check_app_ids_now(
    op: StartingOperator, app: Any, model: Any, circuit_override: Any, directive_override: Any
) -> None:
    """Validate the ids of an app session's start at construction (unless templates or XComArgs)."""
    for argument, value, needed in (
        ("app", app, True),
        ("model", model, True),
        ("circuit_override", circuit_override, False),
        ("directive_override", directive_override, False),
    ):
        if value is not None or needed:
            op._check_id_now(value, argument)


def app_start(
    op: StartingOperator, app: Any, model: Any, circuit_override: Any = None, directive_override: Any = None
) -> Callable[[CandelaHook], ObjectMetadata]:
    """The start of an app session on the user's ready slot, its arguments checked now (before any request)."""
    tid = op.task_id
    app_id = coerce_object_id(app, argument="app", task_id=tid)
    model_id = coerce_object_id(model, argument="model", task_id=tid)
    circuit_id = optional_id(op, circuit_override, "circuit_override")
    directive_id = optional_id(op, directive_override, "directive_override")
    parent_session = optional_id(op, op.parent_session, "parent_session")
    scope = coerce_name(op.scope, kind="scope", argument="scope", task_id=tid)

    def start(hook: CandelaHook) -> ObjectMetadata:
        op.log.info("Starting app %s with model %s in scope %s.", app_id, model_id, scope or "default")
        return start_on_slot(
            op,
            hook,
            lambda: hook.start_session(
                app_id,
                model_id,
                scope=scope,
                parent_session=parent_session,
                circuit_override=circuit_id,
                directive_override=directive_id,
                if_session_running=op.if_session_running,
            ),
        )

    return start


def start_on_slot(op: StartingOperator, hook: CandelaHook, start: Callable[[], ObjectMetadata]) -> ObjectMetadata:
    """``start()`` on the user's ready slot (it passes ``if_session_running`` to the hook).

    A start that fails other than by Candela's refusal stops what it may have started
    (:func:`~airflow_provider_candela.hooks._lifecycle.start_cleanly`), a kill or a timeout included.
    """
    from airflow_provider_candela.hooks._lifecycle import start_cleanly

    try:
        metadata = start_cleanly(hook, start, owner=f"task '{op.task_id}'")
    except CandelaSessionRunningError as err:
        if op.if_session_running == "fail":
            raise err.amended(
                f"Task '{op.task_id}' has if_session_running='fail': wait for the other session to stop "
                "(give the task retries), use another connection (Candela user), or set if_session_running='stop'"
            ) from err
        raise
    op.log.info(
        "Started Candela session %s (domain %s, created by %s at %s).",
        metadata.obj_id,
        metadata.domain,
        metadata.created_by,
        metadata.created_at.isoformat(),
    )
    return metadata


def may_defer(op: StartingOperator) -> bool:
    """Whether the task may still defer to wait for its slot (``deferrable`` and not resumed yet)."""
    return bool(op.deferrable and op.ensure_slot and not op.slot_ready)


def ready_slot(op: StartingOperator, hook: CandelaHook) -> None:
    """Make sure the user has a ready slot (unless ``ensure_slot=False``), waiting here or in the triggerer."""
    if not op.ensure_slot or op.slot_ready:
        return
    slot_type = coerce_name(op.slot_type, kind="scope", argument="slot_type", task_id=op.task_id)
    if not op.deferrable:
        slot = hook.ensure_slot(slot_type, timeout=float(op.slot_ready_timeout))
        op.log.info("Slot %s (%s) is ready.", slot.slot_id, slot.slot_type)
        return
    from airflow_provider_candela.hooks._telemetry import timing
    from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

    waiting_since = time.time()
    assigned = hook.assign_slot_if_none(slot_type)
    state = hook.get_slot_state()
    slot = hook.get_slot_metadata()
    if state == SlotState.HOST_READY:
        op.log.info("Slot %s (%s) is ready; not deferring.", slot.slot_id, slot.slot_type)
        timing("slot.wait", time.time() - waiting_since, {"deferred": "false"})
        return
    failure = state.failure(slot.slot_id)
    if failure is not None:
        raise CandelaSlotError(f"Task '{op.task_id}': {failure}.")
    timeout = float(op.slot_ready_timeout)
    op.log.info(
        "Slot %s (%s) is %s; deferring until it is ready (checked every %g s, for up to %g s).",
        slot.slot_id,
        slot.slot_type,
        state.label,
        op.slot_poll_interval,
        timeout,
    )
    op.defer(
        trigger=CandelaSlotReadyTrigger(
            slot.slot_id,
            assigned=assigned,
            candela_conn_id=op.candela_conn_id,
            hook_params=op.hook_params,
            poll_interval=op.slot_poll_interval,
            timeout=timeout,
            waiting_since=waiting_since,
        ),
        method_name="execute_complete",
        timeout=backstop(timeout),
    )


def resume(op: StartingOperator, context: Context, event: dict[str, Any] | None) -> Any:
    """After the slot trigger fired: ``execute`` again on the ready slot, or fail naming the slot's state."""
    status, message, _ = trigger_event(event, ("success", "failed", "timeout", "error"), task_id=op.task_id)
    if status == "failed":
        raise CandelaSlotError(f"Task '{op.task_id}': {message}.")
    if status == "timeout":
        raise CandelaTimeoutError(f"Task '{op.task_id}': {message}.")
    if status == "error":
        raise CandelaError(
            f"Task '{op.task_id}': {message}. "
            f"Check the connection '{op.candela_conn_id}' and that the Candela API is reachable."
        )
    op.log.info("%s", message)
    op.slot_ready = True
    return op.execute(context)
