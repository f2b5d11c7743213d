"""Starting a session from a task: the start operators and the prompt operators' one-task sessions.

:class:`SessionStarter` holds the start options (slot, scope, parent session, what to do when a
session already runs) and starts a session synchronously in ``execute``.  Imported at every DAG
parse: the hook (and ``requests``) are imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from airflow_provider_candela._validation import (
    IF_SESSION_RUNNING,
    coerce_choice,
    coerce_name,
    coerce_object_id,
    coerce_positive_seconds,
    require_flag,
)
from airflow_provider_candela.exceptions import CandelaSessionRunningError
from airflow_provider_candela.operators._base import CandelaOperator

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectId, ObjectMetadata

__all__ = ["START_OPTIONS", "SessionStarter"]

#: The start options every starting task takes (the arguments of :class:`SessionStarter`, ``scope`` aside).
START_OPTIONS: Final = ("parent_session", "ensure_slot", "slot_type", "slot_ready_timeout", "if_session_running")


class SessionStarter(CandelaOperator):
    """The start options and the synchronous start of a session.

    The arguments (``scope``, ``parent_session``, ``ensure_slot``, ``slot_type``, ``slot_ready_timeout``,
    ``if_session_running``) are documented once, on the start operators' base
    :class:`~airflow_provider_candela.operators.sessions._StartOperatorBase`.
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
        tid = self.task_id
        self.if_session_running = coerce_choice(
            if_session_running, IF_SESSION_RUNNING, argument="if_session_running", task_id=tid
        )
        require_flag(ensure_slot, argument="ensure_slot", task_id=tid)
        coerce_positive_seconds(slot_ready_timeout, argument="slot_ready_timeout", task_id=tid)
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

    def _check_app_ids_now(
        self, app: Any, model: Any, circuit_override: Any, directive_override: Any, *, required: bool = True
    ) -> None:
        """Validate the ids of an app session's start at construction (unless templates or XComArgs)."""
        for argument, value, needed in (
            ("app", app, required),
            ("model", model, required),
            ("circuit_override", circuit_override, False),
            ("directive_override", directive_override, False),
        ):
            if value is not None or needed:
                self._check_id_now(value, argument)

    def _app_start(
        self, app: Any, model: Any, circuit_override: Any = None, directive_override: Any = None
    ) -> Callable[[CandelaHook], ObjectMetadata]:
        """The start of an app session on the user's ready slot, its arguments checked now (before any request)."""
        app_id = coerce_object_id(app, argument="app", task_id=self.task_id)
        model_id = coerce_object_id(model, argument="model", task_id=self.task_id)
        circuit_id = self._optional_id(circuit_override, "circuit_override")
        directive_id = self._optional_id(directive_override, "directive_override")
        parent_session = self._optional_id(self.parent_session, "parent_session")
        scope = coerce_name(self.scope, kind="scope", argument="scope", task_id=self.task_id)

        def start(hook: CandelaHook) -> ObjectMetadata:
            self.log.info("Starting app %s with model %s in scope %s.", app_id, model_id, scope or "default")
            return self._start_on_slot(
                hook,
                lambda: hook.start_session(
                    app_id,
                    model_id,
                    scope=scope,
                    parent_session=parent_session,
                    circuit_override=circuit_id,
                    directive_override=directive_id,
                    if_session_running=self.if_session_running,
                ),
            )

        return start

    def _ready_slot(self, hook: CandelaHook) -> None:
        """Make sure the user has a ready slot (unless ``ensure_slot=False``): assign one, wait for it."""
        if not self.ensure_slot:
            return
        slot_type = coerce_name(self.slot_type, kind="scope", argument="slot_type", task_id=self.task_id)
        slot = hook.ensure_slot(slot_type, timeout=float(self.slot_ready_timeout))
        self.log.info("Slot %s (%s) is ready.", slot.slot_id, slot.slot_type)

    def _start_on_slot(self, hook: CandelaHook, start: Callable[[], ObjectMetadata]) -> ObjectMetadata:
        """``start()`` on the user's ready slot (it passes ``if_session_running`` to the hook).

        A start that fails other than by Candela's refusal stops what it may have started
        (:func:`~airflow_provider_candela.hooks._lifecycle.start_cleanly`), a kill or a timeout included.
        """
        from airflow_provider_candela.hooks._lifecycle import start_cleanly

        try:
            metadata = start_cleanly(hook, start, owner=f"task '{self.task_id}'")
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
        return metadata
