"""CandelaSlotReadyTrigger: wait for the user's Candela slot to be ready without holding a worker slot.

A deferrable start operator assigns the slot (when the user has none), checks it once and, when it is
not ready yet, defers to this trigger; the task resumes to start its session once the slot is
``HOST_READY``.  The hook calls run in worker threads with one hook per connection shared by the
triggers of the process (see :mod:`airflow_provider_candela.triggers._shared`).  Only the slot id, a
flag, the connection id and the timing are serialized; never credentials.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_candela._deferral import end_time as deadline
from airflow_provider_candela._validation import DEFAULT_CONN_ID
from airflow_provider_candela.hooks._telemetry import timing
from airflow_provider_candela.models import SlotState
from airflow_provider_candela.triggers._shared import event, poll_until, with_hook

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaSlotReadyTrigger"]


class CandelaSlotReadyTrigger(BaseTrigger):
    """Poll the state of the user's slot until it is ``HOST_READY``, then fire one event.

    Events (``TriggerEvent.payload``; ``state`` is the last state seen, e.g. ``"HOST_STARTING"``, or
    ``None`` when none was read):

    * ``{"status": "success", "message": ..., "slot_id": ..., "state": "HOST_READY"}``
    * ``{"status": "failed", "message": ..., "slot_id": ..., "state": "ERRORED"}`` (or ``HOST_GONE``)
    * ``{"status": "timeout", "message": ..., "slot_id": ..., "state": ...}``
    * ``{"status": "error", "message": ..., "slot_id": ..., "state": ...}`` (the checks failed)

    On Airflow 3.3+, when the user kills the deferred task (mark failed, clear, ...), the triggerer calls
    :meth:`on_kill`: a slot this task assigned and that is still starting is disposed of, so that a
    killed start leaves nothing running.

    :param slot_id: the slot being waited for (for messages and to recognise it in ``on_kill``).
    :param assigned: whether the deferring task assigned the slot (``on_kill`` disposes of only such a slot).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    :param hook_params: the task's ``hook_params`` (``timeout``, ``max_retries``), used by the trigger's hook.
    :param poll_interval: seconds between two state checks.
    :param timeout: seconds to wait before firing a ``timeout`` event (``None``, ``float("inf")`` or beyond
        a century: no limit).  Turned into an absolute ``end_time`` so that a trigger moved to another
        triggerer keeps its deadline.
    :param end_time: absolute deadline (seconds since the epoch); wins over ``timeout``.
    :param waiting_since: when the task began waiting for the slot (seconds since the epoch; default now),
        for the ``candela.slot.wait`` timer this trigger records when the slot is ready.
    """

    def __init__(
        self,
        slot_id: str,
        *,
        assigned: bool = False,
        candela_conn_id: str = DEFAULT_CONN_ID,
        hook_params: dict[str, Any] | None = None,
        poll_interval: float = 5.0,
        timeout: float | None = None,
        end_time: float | None = None,
        waiting_since: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.waiting_since = time.time() if waiting_since is None else float(waiting_since)
        self.slot_id = slot_id
        self.assigned = bool(assigned)
        self.candela_conn_id = candela_conn_id
        self.hook_params = dict(hook_params or {})
        self.poll_interval = float(poll_interval)
        self.end_time = deadline(timeout, end_time)
        self._last: SlotState | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs: slot id, flag, conn id, hook params and timing only (no credentials)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "slot_id": self.slot_id,
                "assigned": self.assigned,
                "candela_conn_id": self.candela_conn_id,
                "hook_params": self.hook_params,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "waiting_since": self.waiting_since,
            },
        )

    @property
    def _last_label(self) -> str:
        return "unknown" if self._last is None else self._last.label

    def _payload(self, status: str, message: str) -> dict[str, Any]:
        last = None if self._last is None else self._last.name
        return {"status": status, "message": message, "slot_id": self.slot_id, "state": last}

    def _check(self, hook: CandelaHook, checks: int) -> dict[str, Any] | None:
        """One state check: the event payload when the wait is over, else None."""
        state = hook.get_slot_state()
        if state != self._last:
            self.log.info("Candela slot %s: %s (check %d).", self.slot_id, state.label, checks)
            self._last = state
        if state == SlotState.HOST_READY:
            timing("slot.wait", max(time.time() - self.waiting_since, 0.0), {"deferred": "true"})
            return self._payload("success", f"The Candela slot {self.slot_id} is ready (check {checks}).")
        failure = state.failure(self.slot_id)
        return None if failure is None else self._payload("failed", failure)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check every ``poll_interval`` seconds until the slot is ready, failed, or ``end_time`` passes."""
        yield event(
            await poll_until(
                self.candela_conn_id,
                self._check,
                poll_interval=self.poll_interval,
                end_time=self.end_time,
                on_timeout=lambda checks: self._payload(
                    "timeout",
                    f"The Candela slot {self.slot_id} was not ready before the deadline "
                    f"(last state {self._last_label}, {checks} checks "
                    f"every {self.poll_interval:g} s): raise slot_ready_timeout, or check the slot type and "
                    "Candela's capacity",
                ),
                hook_params=self.hook_params,
                on_error=lambda err: self._payload(
                    "error",
                    f"Checking the Candela slot {self.slot_id} failed "
                    f"(last state {self._last_label}): "
                    f"{type(err).__name__}: {err}",
                ),
            )
        )

    async def on_kill(self) -> None:
        """The deferred task was killed: dispose of the slot if this task assigned it and it is still starting."""
        if not self.assigned:
            self.log.info("Task killed; the Candela slot %s was not assigned by it and stays.", self.slot_id)
            return
        self.log.info(
            "Task killed: %s", await with_hook(self.candela_conn_id, self._dispose_if_starting, self.hook_params)
        )

    def _dispose_if_starting(self, hook: CandelaHook) -> str:
        if not hook.user_has_slot():
            return "the user has no slot any more"
        slot = hook.get_slot_metadata()
        if slot.slot_id != self.slot_id:
            return f"the user's slot is now {slot.slot_id}, not {self.slot_id}; left as it is"
        state = hook.get_slot_state()
        if state == SlotState.HOST_READY:
            return f"the Candela slot {self.slot_id} is ready (sessions may use it); left as it is"
        hook.dispose_slot()
        return f"disposed of the Candela slot {self.slot_id} it had assigned (it was {state.label})"
