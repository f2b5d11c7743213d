"""CandelaSessionExistsTrigger: wait for a session to exist without holding a worker slot.

The hook calls run in worker threads with one hook per connection shared by the triggers of the
process (see :mod:`airflow_provider_candela.triggers._shared`).  Only identifiers, the connection id
and the timing are serialized; never credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_candela._deferral import end_time as deadline
from airflow_provider_candela._validation import DEFAULT_CONN_ID
from airflow_provider_candela.models import ObjectId
from airflow_provider_candela.triggers._shared import event, poll_until

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaSessionExistsTrigger"]


class CandelaSessionExistsTrigger(BaseTrigger):
    """Poll Candela until a session exists, then fire one event.

    Events (``TriggerEvent.payload``):

    * ``{"status": "success", "message": ..., "session": <ObjectMetadata dict>}``
    * ``{"status": "timeout", "message": ..., "session": {"scope", "identifier", "version"}}``
    * ``{"status": "error", "message": ..., "session": {"scope", "identifier", "version"}}``

    :param scope: scope of the awaited session.
    :param identifier: identifier of the awaited session.
    :param version: version of the awaited session (``None``: any version).
    :param candela_conn_id: the Airflow connection of type ``candela`` to use.
    :param hook_params: the task's ``hook_params`` (``timeout``, ``max_retries``), used by the trigger's hook.
    :param poll_interval: seconds between two checks.
    :param timeout: seconds to wait before firing a ``timeout`` event (``None`` or ``float("inf")``: no limit).  Turned
        into an absolute ``end_time`` so that a trigger moved to another triggerer keeps its deadline.
    :param end_time: absolute deadline (seconds since the epoch); wins over ``timeout``.
    """

    def __init__(
        self,
        scope: str,
        identifier: str,
        version: str | None = None,
        *,
        candela_conn_id: str = DEFAULT_CONN_ID,
        hook_params: dict[str, Any] | None = None,
        poll_interval: float = 60.0,
        timeout: float | None = None,
        end_time: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.scope = scope
        self.identifier = identifier
        self.version = version
        self.candela_conn_id = candela_conn_id
        self.hook_params = dict(hook_params or {})
        self.poll_interval = float(poll_interval)
        self.end_time = deadline(timeout, end_time)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs: ids, conn id, hook params and timing only (no credentials)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "scope": self.scope,
                "identifier": self.identifier,
                "version": self.version,
                "candela_conn_id": self.candela_conn_id,
                "hook_params": self.hook_params,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
            },
        )

    @property
    def _session_id(self) -> ObjectId:
        return ObjectId(scope=self.scope, identifier=self.identifier, version=self.version)

    @staticmethod
    def _metadata(hook: CandelaHook, oid: ObjectId) -> dict[str, Any]:
        """The session's ObjectMetadata dict, or its ids when the metadata call fails."""
        try:
            found: dict[str, Any] = hook.get_session_metadata(oid).model_dump(mode="json")
        except Exception:
            return oid.model_dump(mode="json")
        return found

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check every ``poll_interval`` seconds until the session exists or ``end_time`` passes."""
        oid = self._session_id
        ids = oid.model_dump(mode="json")

        def check(hook: CandelaHook, checks: int) -> dict[str, Any] | None:
            if not hook.session_exists(oid):
                self.log.debug("Candela session %s does not exist yet (check %d).", oid, checks)
                return None
            self.log.info("Candela session %s exists (check %d).", oid, checks)
            return {
                "status": "success",
                "message": f"Candela session {oid} exists.",
                "session": self._metadata(hook, oid),
            }

        yield event(
            await poll_until(
                self.candela_conn_id,
                check,
                poll_interval=self.poll_interval,
                end_time=self.end_time,
                on_timeout=lambda checks: {
                    "status": "timeout",
                    "message": f"Candela session {oid} did not appear before the deadline "
                    f"({checks} checks, every {self.poll_interval:g} s).",
                    "session": ids,
                },
                hook_params=self.hook_params,
                on_error=lambda err: {
                    "status": "error",
                    "message": f"Checking Candela session {oid} failed: {type(err).__name__}: {err}",
                    "session": ids,
                },
            )
        )
