"""``@task.candela_pipeline`` and ``@task.candela_agent`` (a function returns the prompt) and their batches.

``@task.candela_pipeline_batch`` and ``@task.candela_agent_batch``: the function returns the inputs of
:class:`~airflow_provider_candela.operators.batch.CandelaPipelineBatchOperator` /
:class:`~airflow_provider_candela.operators.batch.CandelaAgentBatchOperator`.


The decorated function is an ordinary TaskFlow function (its arguments are XCom values and context
variables); it runs when the task runs and returns the prompt, which is sent as returned (it is not
rendered again as a template).  The decorator's keyword arguments are those of the matching operator
(:class:`~airflow_provider_candela.operators.sessions.CandelaSubmitPipelinePromptOperator` or
:class:`~airflow_provider_candela.operators.sessions.CandelaSubmitAgentPromptOperator`), ``prompt``
aside: ``session=`` a running session, or ``app=`` + ``model=`` for a session of the task's own;
``output_type=`` a pydantic model class.  The task's return value (XCom) is the operator's.

Registered under ``task-decorators`` in the provider info, so that ``task.candela_pipeline`` works
after ``from airflow.sdk import task`` (Airflow 3) or ``from airflow.decorators import task`` (Airflow 2).
Imported at every DAG parse that uses them, so it imports nothing at module level: the operators
behind the decorators (``_operators``, with Airflow's decorator base) are imported when a decorator
is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import TaskDecorator

__all__ = ["candela_agent_batch_task", "candela_agent_task", "candela_pipeline_batch_task", "candela_pipeline_task"]


def candela_pipeline_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.candela_pipeline``: the function returns the prompt; the task returns the pipeline's answer.

    In one task (the session started and stopped by the task)::

        @task.candela_pipeline(app="default/demo-pipeline", model="default/demo-model", output_type=Summary)
        def summarise(ds=None):
            return f"Summarise trades for {ds}"

    :param python_callable: the decorated function.
    :param kwargs: the arguments of
        :class:`~airflow_provider_candela.operators.sessions.CandelaSubmitPipelinePromptOperator`
        (``prompt`` aside) and of ``BaseOperator``.
    """
    return _decorator("CandelaPipelineDecoratedOperator", python_callable, kwargs)


def candela_agent_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.candela_agent``: the function returns the prompt; the task returns the agent's summary.

    On a running session (e.g. a start task's output)::

        @task.candela_agent(session=start.output)
        def ask(table: str):
            return f"Which rows of {table} look wrong?"

    :param python_callable: the decorated function.
    :param kwargs: the arguments of
        :class:`~airflow_provider_candela.operators.sessions.CandelaSubmitAgentPromptOperator`
        (``prompt`` aside) and of ``BaseOperator``.
    """
    return _decorator("CandelaAgentDecoratedOperator", python_callable, kwargs)


def candela_pipeline_batch_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.candela_pipeline_batch``: the function returns the inputs; the task returns one record per input.

    ::

        @task.candela_pipeline_batch(app="default/demo-pipeline", model="default/demo-model", output_type=Verdict)
        def classify(breaks: list[dict]):
            return [{"key": b["id"], "prompt": f"Classify this trade break: {b}"} for b in breaks]

    :param python_callable: the decorated function.
    :param kwargs: the arguments of :class:`~airflow_provider_candela.operators.batch.CandelaPipelineBatchOperator`
        (``prompts`` aside) and of ``BaseOperator``.
    """
    return _decorator("CandelaPipelineBatchDecoratedOperator", python_callable, kwargs)


def candela_agent_batch_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.candela_agent_batch``: the function returns the inputs; the task returns one summary per input.

    :param python_callable: the decorated function.
    :param kwargs: the arguments of :class:`~airflow_provider_candela.operators.batch.CandelaAgentBatchOperator`
        (``prompts`` aside) and of ``BaseOperator``.
    """
    return _decorator("CandelaAgentBatchDecoratedOperator", python_callable, kwargs)


def _decorator(operator: str, python_callable: Callable[..., Any] | None, kwargs: dict[str, Any]) -> TaskDecorator:
    """Airflow's task decorator for the operator named ``operator`` of ``_operators`` (imported now)."""
    from airflow.providers.common.compat.sdk import task_decorator_factory

    from airflow_provider_candela.decorators import _operators

    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=getattr(_operators, operator), **kwargs
    )
