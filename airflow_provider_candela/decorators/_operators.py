"""The operators behind ``@task.candela_pipeline`` and ``@task.candela_agent`` (see ``decorators.sessions``).

Imported when a DAG first uses one of the decorators: Airflow's decorator base is not part of the
cost of importing ``decorators.sessions``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    SET_DURING_EXECUTION,
    DecoratedOperator,
    context_merge,
    determine_kwargs,
)

from airflow_provider_candela._validation import coerce_returned_prompt
from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["CandelaAgentDecoratedOperator", "CandelaPipelineDecoratedOperator"]


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

    def _prompt_text(self, context: Context) -> str:
        """Call the function with its TaskFlow arguments; its return value is the prompt.

        Called once per task run: before any request, or, for a one-task session that may defer, once the
        slot is ready (after the resume), so the function runs once even when the task defers.
        """
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        value = self.python_callable(*self.op_args, **kwargs)
        return coerce_returned_prompt(value, decorator=self.custom_operator_name, task_id=self.task_id)


class CandelaPipelineDecoratedOperator(_PromptFunction, CandelaSubmitPipelinePromptOperator):
    """The operator behind ``@task.candela_pipeline``."""

    template_fields: Sequence[str] = _fields(DecoratedOperator, CandelaSubmitPipelinePromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitPipelinePromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_pipeline"


class CandelaAgentDecoratedOperator(_PromptFunction, CandelaSubmitAgentPromptOperator):
    """The operator behind ``@task.candela_agent``."""

    template_fields: Sequence[str] = _fields(DecoratedOperator, CandelaSubmitAgentPromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitAgentPromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_agent"
