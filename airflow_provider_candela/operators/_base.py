"""The base of the Candela operators: the connection id, the task's hook, kill handling, checks at parse.

Imported at every DAG parse: the hook (and ``requests``) are imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_candela._validation import (
    DEFAULT_CONN_ID,
    coerce_conn_id,
    coerce_hook_params,
    coerce_object_id,
    when_resolved,
)
from airflow_provider_candela.exceptions import CandelaCancelledError

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook

__all__ = ["CandelaOperator"]


class CandelaOperator(BaseOperator):
    """Common plumbing: the connection id, the task's one hook, kill handling, checks at parse.

    :param candela_conn_id: the Airflow connection of type ``candela`` to use (templated).
    :param hook_params: per-task overrides of the connection's ``timeout`` (seconds, ``(connect, read)`` or
        ``'connect,read'``) and ``max_retries``, e.g. ``{"timeout": (10, 900), "max_retries": 2}``.
    """

    ui_color = "#e8f0fe"

    def __init__(
        self, *, candela_conn_id: str = DEFAULT_CONN_ID, hook_params: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.candela_conn_id = candela_conn_id
        self._check_now(candela_conn_id, lambda v: coerce_conn_id(v, task_id=self.task_id))
        self.hook_params = coerce_hook_params(hook_params, task_id=self.task_id)

    #: Set by ``on_kill``: why the task was killed (a hook created afterwards starts cancelled).
    _killed: str | None = None

    @cached_property
    def hook(self) -> CandelaHook:
        """The hook used by ``execute`` (created on first use, one per task run)."""
        hook = self._new_hook()
        if self._killed is not None:
            hook.cancel(self._killed)
        return hook

    def _new_hook(self) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        conn_id = coerce_conn_id(self.candela_conn_id, task_id=self.task_id)  # as rendered
        return CandelaHook(conn_id, **self.hook_params)

    def _close_hook(self) -> None:
        hook = self.__dict__.pop("hook", None)
        if hook is not None:
            try:
                hook.close()
            except Exception as err:  # closing is best effort
                self.log.debug("Closing the Candela hook failed: %s", err)

    @contextmanager
    def _task_hook(self) -> Iterator[CandelaHook]:
        """The task's one hook for this run: nested blocks share it; closed when the outermost block ends.

        ``on_kill`` cancels the hook (a blocked read returns at once and raises; cleanups still run, see
        :meth:`~airflow_provider_candela.hooks.candela.CandelaHook.stop_session_best_effort`); when the work
        finished anyway, the task still fails: a killed task never ends as a success.
        """
        hook = self.hook
        self._hook_users = getattr(self, "_hook_users", 0) + 1
        try:
            yield hook
        finally:
            self._hook_users -= 1
            if not self._hook_users:
                self._close_hook()
        if not self._hook_users and hook.cancelled is not None:
            raise CandelaCancelledError(f"Task '{self.task_id}' was killed ({hook.cancelled}); its result is discarded")

    def on_kill(self) -> None:
        """Abort the task's calls in flight at once; ``execute`` then cleans up (stops what it started) and raises.

        Only the hook's cancellation runs here (safe in a signal handler): the stop of a session happens in
        ``execute`` as the error unwinds it, through the task's own hook, within
        :data:`~airflow_provider_candela.hooks.candela.CLEANUP_BUDGET` seconds.
        """
        self._killed = f"task '{self.task_id}' was killed"
        hook = self.__dict__.get("hook")
        if hook is not None:
            hook.cancel(self._killed)
        super().on_kill()

    def _check_id_now(self, value: Any, argument: str) -> None:
        """Validate an id argument at construction unless it is still a template or an XComArg."""
        when_resolved(value, lambda v: coerce_object_id(v, argument=argument, task_id=self.task_id))

    def _check_now(self, value: Any, check: Callable[[Any], object]) -> None:
        """Validate a value at construction unless it is still a template or an XComArg."""
        when_resolved(value, check)
