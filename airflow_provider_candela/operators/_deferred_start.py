"""A start that waits for its slot in the triggerer (``deferrable=True``) instead of in a worker.

:class:`DeferrableStarter` adds ``deferrable`` to :class:`~airflow_provider_candela.operators._start.SessionStarter`:
the task assigns the slot when the user has none, checks it once and, when it is not ready, defers to
:class:`~airflow_provider_candela.triggers.slots.CandelaSlotReadyTrigger`; ``execute_complete`` then
runs ``execute`` again, which starts the session on the ready slot exactly as the non-deferred path
does.  Imported at every DAG parse: the hook and the trigger are imported inside methods only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf

from airflow_provider_candela._validation import coerce_name, coerce_positive_seconds, require_flag
from airflow_provider_candela.exceptions import CandelaError, CandelaSlotError, CandelaTimeoutError
from airflow_provider_candela.models import SlotState
from airflow_provider_candela.operators._start import SessionStarter

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["DeferrableStarter"]

_EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error"})


class DeferrableStarter(SessionStarter):
    """The synchronous start plus ``deferrable`` and ``slot_poll_interval`` (documented on the operators' base)."""

    #: Set by ``execute_complete``: the trigger saw the slot ready, ``execute`` starts without checking it again.
    _slot_ready_event = False

    def __init__(
        self,
        *,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        slot_poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = require_flag(deferrable, argument="deferrable", task_id=self.task_id)
        self.slot_poll_interval = coerce_positive_seconds(
            slot_poll_interval, argument="slot_poll_interval", task_id=self.task_id
        )

    def _ready_slot(self, hook: CandelaHook) -> None:
        """As :meth:`SessionStarter._ready_slot`, but a slot that is not ready defers the task (``deferrable``)."""
        if not (self.deferrable and self.ensure_slot):
            super()._ready_slot(hook)
        elif not self._slot_ready_event:
            self._defer_unless_slot_ready(hook)

    def _defer_unless_slot_ready(self, hook: CandelaHook) -> None:
        """Assign a slot when the user has none and check it once; defer when it is not ready yet."""
        from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger, slot_failure

        slot_type = coerce_name(self.slot_type, kind="scope", argument="slot_type", task_id=self.task_id)
        assigned = hook.assign_slot_if_none(slot_type)
        state = hook.get_slot_state()
        slot = hook.get_slot_metadata()
        if state == SlotState.HOST_READY:
            self.log.info("Slot %s (%s) is ready; not deferring.", slot.slot_id, slot.slot_type)
            return
        failure = slot_failure(slot.slot_id, state)
        if failure is not None:
            raise CandelaSlotError(f"Task '{self.task_id}': {failure}.")
        timeout = float(self.slot_ready_timeout)
        self.log.info(
            "Slot %s (%s) is %s; deferring until it is ready (checked every %g s, for up to %g s).",
            slot.slot_id,
            slot.slot_type,
            state.label,
            self.slot_poll_interval,
            timeout,
        )
        self.defer(
            trigger=CandelaSlotReadyTrigger(
                slot.slot_id,
                assigned=assigned,
                candela_conn_id=self.candela_conn_id,
                poll_interval=self.slot_poll_interval,
                timeout=timeout,
            ),
            method_name="execute_complete",
            # A little later than the trigger's own deadline, so that its clear timeout event wins.
            timeout=timedelta(seconds=timeout + max(60.0, timeout * 0.1)),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: start the session on the ready slot, or fail naming the slot's state."""
        if not isinstance(event, dict) or event.get("status") not in _EVENT_STATUSES:
            raise CandelaError(
                f"Task '{self.task_id}' resumed with an unexpected trigger event {event!r}; "
                f"expected a dict with status {', '.join(sorted(_EVENT_STATUSES))}."
            )
        status, message = event["status"], str(event.get("message") or "")
        if status == "failed":
            raise CandelaSlotError(f"Task '{self.task_id}': {message}.")
        if status == "timeout":
            raise CandelaTimeoutError(f"Task '{self.task_id}': {message}.")
        if status == "error":
            raise CandelaError(
                f"Task '{self.task_id}': {message}. "
                f"Check the connection '{self.candela_conn_id}' and that the Candela API is reachable."
            )
        self.log.info("%s", message)
        self._slot_ready_event = True
        return self.execute(context)
