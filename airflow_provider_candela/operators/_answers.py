"""Typed answers: Candela's answer validated as a task's ``output_type``, for the prompt and batch operators.

Imported at every DAG parse by the operators: the validators and the standard library only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_candela._validation import coerce_answer, shorten
from airflow_provider_candela.exceptions import CandelaOutputError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["typed", "typed_results"]


def typed(
    value: Any, output_type: type[BaseModel], *, what: str, answer: Any, task_id: str, log: Any
) -> dict[str, Any]:
    """``value`` validated as ``output_type`` (its JSON form); when it does not fit, ``answer`` goes to the log.

    :raises CandelaOutputError: listing the fields that did not fit.
    """
    try:
        return coerce_answer(value, output_type, what=what, task_id=task_id)
    except CandelaOutputError:
        log.error("The answer that did not fit (truncated): %s", shorten(json.dumps(answer, default=str), 2000))
        raise


def typed_results(
    summary: dict[str, Any], output_type: type[BaseModel], *, task_id: str, log: Any, answer_to: str = ""
) -> dict[str, Any]:
    """An agent's summary with each decoded ``result`` event validated as ``output_type``.

    :param answer_to: what the agent answered, for the messages (e.g. ``" to input 3 ('k')"``).
    :raises CandelaOutputError: the agent sent no ``result`` event, or one did not fit.
    """
    if not summary["results"]:
        raise CandelaOutputError(
            f"Task '{task_id}': the agent sent no `result` event{answer_to} to validate as `output_type` "
            f"{output_type.__name__}. Ask for a result in the prompt, or drop `output_type`."
        )
    summary["results"] = [
        typed(
            result,
            output_type,
            what=f"`result` event {i} of the agent{answer_to}",
            answer=result,
            task_id=task_id,
            log=log,
        )
        for i, result in enumerate(summary["results"], 1)
    ]
    return summary
