"""Deployment test DAG: 200 tasks wait in the triggerer on a Candela that never answers.

``wait`` is mapped 200 times, more than the threads of the triggerer loop's default executor can ever be
(at most 32).  Each mapped task starts in the triggerer (``start_from_trigger``): the scheduler defers it
straight to a ``CandelaSessionExistsTrigger`` on ``candela_silent`` built with the task's ``hook_params``
(read for 600 s, no retry), and no worker runs it first.  A first check on a worker would block a Celery
worker on the silent Candela, and 200 task starts on the test's two workers would take minutes.  The
deployment test points ``candela_silent`` at a loopback server that accepts connections and never answers,
and runs ``candela_deploy_to_thread_probe`` while all 200 wait; it then marks the run failed.  A trigger
that fires resumes its task in ``execute_complete``, which fails: on this Candela, none should.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, BaseOperator
from airflow.triggers.base import StartTriggerArgs

from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

WAITERS = 200
CONN_ID = "candela_silent"
# The connection says "read for 1 s, retry 3 times": the task's own settings must win in the trigger's hook.
HOOK_PARAMS = {"timeout": [5, 600], "max_retries": 0}


def session_exists_trigger(hook_params: dict[str, Any]) -> StartTriggerArgs:
    """Start in the triggerer with a ``CandelaSessionExistsTrigger`` (as it serializes itself) and ``hook_params``."""
    classpath, kwargs = CandelaSessionExistsTrigger(
        "default", "never-started", candela_conn_id=CONN_ID, hook_params=hook_params, poll_interval=60
    ).serialize()  # no timeout: the kwargs (and so the DAG) are the same at every parse
    return StartTriggerArgs(
        trigger_cls=classpath, trigger_kwargs=kwargs, next_method="execute_complete", next_kwargs=None, timeout=None
    )


class WaitOnSilentCandela(BaseOperator):
    """A task that starts in the triggerer, waiting for a session on ``candela_silent`` with ``HOOK_PARAMS``.

    Mapped tasks take ``start_from_trigger`` and ``start_trigger_args`` from their class only (``.partial()``
    refuses them), so the task's trigger and its ``hook_params`` are set here.  It fails if the trigger fires.
    """

    start_from_trigger = True
    start_trigger_args = session_exists_trigger(HOOK_PARAMS)
    template_fields = ()  # nothing of the task is rendered into the trigger's kwargs

    def __init__(self, *, waiter: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.waiter = waiter

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        raise RuntimeError(f"waiter {self.waiter}: the trigger fired on a Candela that never answers: {event!r}")


with DAG(
    dag_id="candela_deploy_silent_candela",
    description="Deployment test: 200 Candela triggers wait on a Candela that never answers.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["candela", "deployment-test"],
) as dag:
    WaitOnSilentCandela.partial(task_id="wait").expand(waiter=list(range(WAITERS)))
