"""``@task.candela_pipeline`` and ``@task.candela_agent``: a function returns the prompt, Candela answers.

The decorated function is an ordinary TaskFlow function (its arguments are XCom values and context
variables); it runs when the task runs and returns the prompt, which is sent as returned (it is not
rendered again as a template).  The decorator's keyword arguments are those of the matching operator
(:class:`~airflow_provider_candela.operators.sessions.CandelaSubmitPipelinePromptOperator` or
:class:`~airflow_provider_candela.operators.sessions.CandelaSubmitAgentPromptOperator`), ``prompt``
aside: ``session=`` a running session, or ``app=`` + ``model=`` for a session of the task's own;
``output_type=`` a pydantic model class.  The task's return value (XCom) is the operator's.

Registered under ``task-decorators`` in the provider info, so that ``task.candela_pipeline`` works
after ``from airflow.sdk import task`` (Airflow 3) or ``from airflow.decorators import task`` (Airflow 2).
Imported at every DAG parse that uses them: no hook and no ``requests`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    SET_DURING_EXECUTION,
    DecoratedOperator,
    TaskDecorator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from airflow_provider_candela._validation import require_returned_prompt
from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["candela_agent_task", "candela_pipeline_task"]


def _fields(*classes: type[Any]) -> tuple[str, ...]:
    """The template fields of ``classes``, ``prompt`` aside (the function returns it, untemplated)."""
    return tuple(name for cls in classes for name in cls.template_fields if name != "prompt")


class _PromptFunction(DecoratedOperator):
    """A decorated function that returns the prompt of a Candela prompt operator (mixed in before it)."""

    custom_operator_name: str = "@task.candela"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            prompt=SET_DURING_EXECUTION,
            **kwargs,
        )

    def _returned_prompt(self, context: Context) -> str:
        """Call the function with its TaskFlow arguments; its return value is the prompt."""
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        value = self.python_callable(*self.op_args, **kwargs)
        return require_returned_prompt(value, decorator=self.custom_operator_name, task_id=self.task_id)


class _CandelaPipelineDecoratedOperator(_PromptFunction, CandelaSubmitPipelinePromptOperator):
    """The operator behind ``@task.candela_pipeline``."""

    template_fields: Sequence[str] = _fields(DecoratedOperator, CandelaSubmitPipelinePromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitPipelinePromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_pipeline"

    def execute(self, context: Context) -> dict[str, Any]:
        """Call the function for the prompt, then submit it as the pipeline operator does."""
        self.prompt = self._returned_prompt(context)
        return CandelaSubmitPipelinePromptOperator.execute(self, context)


class _CandelaAgentDecoratedOperator(_PromptFunction, CandelaSubmitAgentPromptOperator):
    """The operator behind ``@task.candela_agent``."""

    template_fields: Sequence[str] = _fields(DecoratedOperator, CandelaSubmitAgentPromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitAgentPromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_agent"

    def execute(self, context: Context) -> dict[str, Any]:
        """Call the function for the prompt, then submit it as the agent operator does."""
        self.prompt = self._returned_prompt(context)
        return CandelaSubmitAgentPromptOperator.execute(self, context)


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
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_CandelaPipelineDecoratedOperator, **kwargs
    )


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
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_CandelaAgentDecoratedOperator, **kwargs
    )
