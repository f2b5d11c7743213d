"""Starting a session from a task: the start options, the slot (waited for in the worker or the triggerer), the start.

Plain functions over the operator, not a base class: the start operators, the prompt operators' and the
batch operators' sessions call them.  The start options are named arguments of those operators' ``__init__``
(so that ``default_args`` and ``.partial()`` reach them) and attributes of the operator (so that Airflow
renders the templated ones), set and checked by :func:`set_start_options`; a prompt or batch task's session
(a running one, or ``app`` + ``model`` of its own) by :func:`set_session`.  Imported at every DAG parse: the
hook and the trigger are imported inside functions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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
    set_on_task,
    when_resolved,
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
    "SESSION_DEFAULTS",
    "START_DEFAULTS",
    "app_start",
    "check_app_ids_now",
    "may_defer",
    "optional_id",
    "pick",
    "ready_slot",
    "resume",
    "set_session",
    "set_start_options",
    "start_on_slot",
]


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


#: The start options and their defaults, as the operators declare them (``deferrable``: ``None`` is the
#: ``[operators] default_deferrable`` option where a task can defer, i.e. not with ``ensure_slot=False``).
START_DEFAULTS: Final[Mapping[str, Any]] = {
    "scope": None,
    "parent_session": None,
    "ensure_slot": True,
    "slot_type": None,
    "slot_ready_timeout": 600.0,
    "if_session_running": "stop",
    "deferrable": None,
    "slot_poll_interval": 5.0,
}
#: The session arguments of a prompt or batch task and their defaults.
SESSION_DEFAULTS: Final[Mapping[str, Any]] = {
    "session": None,
    "session_id": None,
    "app": None,
    "model": None,
    "circuit_override": None,
    "directive_override": None,
}


def pick(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments named in ``defaults`` out of an ``__init__``'s ``given`` (its ``locals()`` at the start)."""
    return {name: given[name] for name in defaults}


def set_session(
    op: StartingOperator,
    arguments: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    default_args: Mapping[str, Any] | None,
    argument: str = "session",
) -> None:
    """Set a prompt or batch task's session arguments and start options on ``op``; check the form.

    The session is a running one (``session`` or ``session_id``) or one the task starts (``app`` + ``model``,
    and the start options).  Beside a running session, ``app``, ``model`` and the start options that came
    from the DAG's ``default_args`` are ignored (they are meant for the DAG's other tasks), and ``deferrable``
    is off (a running session has no slot to wait for); set on the task itself, they are an error.

    :param arguments: ``session``, ``session_id``, ``app``, ``model``, ``circuit_override``, ``directive_override``.
    :param options: the start options (:data:`START_DEFAULTS`).
    :param default_args: the ``default_args`` the task was made with.
    """
    values = dict(arguments)
    running = values["session"] is not None or bool(values["session_id"])
    own = set(set_on_task(values, SESSION_DEFAULTS, default_args))
    given = [name for name in set_on_task(options, START_DEFAULTS, default_args) if name not in ("deferrable", "scope")]
    given += [name for name in ("circuit_override", "directive_override") if name in own]
    start = dict(options)
    if running:
        for name in ("app", "model", "circuit_override", "directive_override"):
            if name not in own:
                values[name] = None
        start.update({name: START_DEFAULTS[name] for name in START_DEFAULTS if name not in given and name != "scope"})
        start["deferrable"] = False
    for name, value in values.items():
        setattr(op, name, value)
    set_start_options(op, start)
    tid = op.task_id
    check_session_form(
        running=running, app=values["app"], model=values["model"], start_options=given, task_id=tid, argument=argument
    )
    if running and all(is_resolved(v) for v in (values["session"], values["session_id"], op.scope)):
        coerce_session(values["session"], session_id=values["session_id"], scope=op.scope, task_id=tid)
    if not running:
        check_app_ids_now(op, values["app"], values["model"], values["circuit_override"], values["directive_override"])


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
    deferrable = options["deferrable"]
    if deferrable is None:
        deferrable = op.ensure_slot and conf.getboolean("operators", "default_deferrable", fallback=False)
    op.deferrable = coerce_flag(deferrable, argument="deferrable", task_id=tid)
    op.slot_poll_interval = coerce_positive_seconds(
        options["slot_poll_interval"], argument="slot_poll_interval", task_id=tid
    )
    op.slot_ready = False  # set by resume(): the trigger saw the slot ready
    if op.deferrable and not op.ensure_slot:
        raise CandelaInputError(
            f"Task '{tid}' has deferrable=True and ensure_slot=False: a task that does not wait for its slot "
            "has nothing to defer. Drop one of them."
        )
    when_resolved(op.scope, lambda v: coerce_name(v, kind="scope", argument="scope", task_id=tid))
    when_resolved(op.slot_type, lambda v: coerce_name(v, kind="scope", argument="slot_type", task_id=tid))
    if op.parent_session is not None:
        when_resolved(op.parent_session, lambda v: coerce_object_id(v, argument="parent_session", task_id=tid))


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
        if (value is not None or needed) and is_resolved(value):
            coerce_object_id(value, argument=argument, task_id=op.task_id)


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
