"""The base of the Candela operators: the connection id, the task's hook, kill handling, checks at parse.

Imported at every DAG parse: the hook (and ``requests``) are imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_candela._validation import coerce_object_id, is_resolved
from airflow_provider_candela.exceptions import CandelaCancelledError, CandelaInputError

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["DEFAULT_CONN_ID", "CandelaOperator"]

DEFAULT_CONN_ID = "candela_default"


class CandelaOperator(BaseOperator):
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
