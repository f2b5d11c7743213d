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
from airflow_provider_candela.operators.batch import CandelaAgentBatchOperator, CandelaPipelineBatchOperator
from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = [
    "CandelaAgentBatchDecoratedOperator",
    "CandelaAgentDecoratedOperator",
    "CandelaPipelineBatchDecoratedOperator",
    "CandelaPipelineDecoratedOperator",
]


def _fields(returned: str, *classes: type[Any]) -> tuple[str, ...]:
    """The template fields of ``classes``, ``returned`` aside (the function returns it, untemplated)."""
    return tuple(name for cls in classes for name in cls.template_fields if name != returned)


class _ReturningFunction(DecoratedOperator):
    """A decorated function that returns one argument of a Candela operator (mixed in before it)."""

    custom_operator_name: str = "@task.candela"
    #: The operator argument the function returns.
    returns: ClassVar[str] = "prompt"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs[self.returns] = SET_DURING_EXECUTION  # set by _call when the task runs
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    def _call(self, context: Context) -> Any:
        """The function's return value, called with its TaskFlow arguments (once per task run)."""
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        return self.python_callable(*self.op_args, **kwargs)


class _PromptFunction(_ReturningFunction):
    """The function returns the prompt of a Candela prompt operator."""

    def _prompt_text(self, context: Context) -> str:
        """The function's prompt, checked.

        Called once per task run: before any request, or, for a one-task session that may defer, once the
        slot is ready (after the resume), so the function runs once even when the task defers.
        """
        return coerce_returned_prompt(self._call(context), decorator=self.custom_operator_name, task_id=self.task_id)


class _InputsFunction(_ReturningFunction):
    """The function returns the inputs of a Candela batch operator (checked as ``prompts``)."""

    returns: ClassVar[str] = "prompts"

    def _batch_inputs(self, context: Context) -> Any:
        """The function's inputs; taken once per task run, as :meth:`_PromptFunction._prompt_text`."""
        return self._call(context)


class CandelaPipelineDecoratedOperator(_PromptFunction, CandelaSubmitPipelinePromptOperator):
    """The operator behind ``@task.candela_pipeline``."""

    template_fields: Sequence[str] = _fields("prompt", DecoratedOperator, CandelaSubmitPipelinePromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitPipelinePromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_pipeline"


class CandelaAgentDecoratedOperator(_PromptFunction, CandelaSubmitAgentPromptOperator):
    """The operator behind ``@task.candela_agent``."""

    template_fields: Sequence[str] = _fields("prompt", DecoratedOperator, CandelaSubmitAgentPromptOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaSubmitAgentPromptOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_agent"


class CandelaPipelineBatchDecoratedOperator(_InputsFunction, CandelaPipelineBatchOperator):
    """The operator behind ``@task.candela_pipeline_batch``."""

    template_fields: Sequence[str] = _fields("prompts", DecoratedOperator, CandelaPipelineBatchOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaPipelineBatchOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_pipeline_batch"


class CandelaAgentBatchDecoratedOperator(_InputsFunction, CandelaAgentBatchOperator):
    """The operator behind ``@task.candela_agent_batch``."""

    template_fields: Sequence[str] = _fields("prompts", DecoratedOperator, CandelaAgentBatchOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **CandelaAgentBatchOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.candela_agent_batch"
