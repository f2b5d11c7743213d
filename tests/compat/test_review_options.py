"""The review options when the DAG is parsed, and what the reviewer is shown; on Airflow 3.3 and 2.11.

``require_approval=True`` needs Airflow 3.1's human-in-the-loop: on 2.11 it is an error when the DAG is
parsed, naming the version needed.  The review body is a pure function (no Airflow): tested here directly,
the review itself over an api-server in ``tests/review``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS
from pydantic import BaseModel

from airflow_provider_candela.exceptions import CandelaInputError
from airflow_provider_candela.operators._review import MAX_BODY_BYTES, cut, review_body
from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
APP = {"app": "default/demo-pipeline", "model": "default/demo-model", "prompt": "p"}


class Summary(BaseModel):
    answer: str
    word_count: int


def _dag() -> DAG:
    return DAG("review_options", schedule=None, start_date=START)


@pytest.mark.skipif(AIRFLOW_V_3_1_PLUS, reason="the error of an Airflow without human-in-the-loop")
@pytest.mark.parametrize("kind", ["pipeline operator", "agent operator", "pipeline decorator", "agent decorator"])
def test_require_approval_before_airflow_3_1_fails_at_parse_naming_the_version(kind: str) -> None:
    from airflow import __version__

    with _dag(), pytest.raises(CandelaInputError) as err:
        if kind == "pipeline operator":
            CandelaSubmitPipelinePromptOperator(task_id="t", require_approval=True, **APP)
        elif kind == "agent operator":
            CandelaSubmitAgentPromptOperator(task_id="t", require_approval=True, **APP)
        else:
            decorator = task.candela_pipeline if kind.startswith("pipeline") else task.candela_agent

            @decorator(app="default/demo-pipeline", model="default/demo-model", require_approval=True)
            def t() -> str:
                return "p"

            t()
    message = str(err.value)
    assert "Task 't' has require_approval=True, which needs Airflow 3.1 or newer" in message
    assert f"this is Airflow {__version__}" in message


def test_without_require_approval_nothing_changes_on_any_airflow() -> None:
    with _dag():
        op = CandelaSubmitPipelinePromptOperator(task_id="t", **APP)
    assert op.require_approval is False


@pytest.mark.skipif(not AIRFLOW_V_3_1_PLUS, reason="require_approval needs Airflow 3.1+")
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"allow_modifications": True}, "sets `allow_modifications` without require_approval=True"),
        (
            {"require_approval": True, "approval_timeout": 60},
            "Invalid `approval_timeout` for task 't': expected a positive datetime.timedelta",
        ),
        (
            {"require_approval": True, "on_approval_timeout": "approve"},
            "on_approval_timeout='approve' without `approval_timeout`",
        ),
        (
            {"require_approval": True, "approval_timeout": dt.timedelta(1), "on_approval_timeout": "skip"},
            "Invalid `on_approval_timeout`",
        ),
        ({"require_approval": True, "approval_assigned_users": [{"id": "1"}]}, "Invalid `approval_assigned_users`"),
        ({"require_approval": True, "approval_notifiers": ["not callable"]}, "Invalid `approval_notifiers`"),
    ],
)
def test_malformed_review_options_fail_at_parse(kwargs: dict[str, Any], expected: str) -> None:
    with _dag(), pytest.raises(CandelaInputError) as err:
        CandelaSubmitPipelinePromptOperator(task_id="t", **APP, **kwargs)
    assert expected in str(err.value)


@pytest.mark.skipif(not AIRFLOW_V_3_1_PLUS, reason="require_approval needs Airflow 3.1+")
def test_review_options_are_set_with_common_ais_names() -> None:
    with _dag():
        op = CandelaSubmitPipelinePromptOperator(
            task_id="t",
            **APP,
            require_approval=True,
            allow_modifications=True,
            approval_timeout=dt.timedelta(hours=4),
            on_approval_timeout="reject",
            approval_assigned_users={"id": "7", "name": "ana"},
        )
    assert (op.require_approval, op.allow_modifications, op.on_approval_timeout) == (True, True, "reject")
    assert op.approval_timeout == dt.timedelta(hours=4)
    assert op.approval_assigned_users == [{"id": "7", "name": "ana"}]


# ------------------------------------------------------------------------------------------------
# what the reviewer sees


def test_pipeline_body_shows_task_prompt_fields_and_json() -> None:
    body = review_body(
        task="d.t",
        prompt="Summarise\nthe day",
        kind="pipeline",
        answer={"answer": "a | b", "word_count": 2},
        output_type=Summary,
        editable=True,
    )
    assert body.startswith("**Task** `d.t` asks Candela (pipeline)")
    assert "> Summarise\\\n> the day" in body, "the prompt's lines stay lines (a hard line break)"
    assert "**Answer** as `Summary`:" in body
    assert "| answer | a \\| b |" in body, "a pipe in a cell is escaped"
    assert '```json\n{\n  "answer": "a | b",\n  "word_count": 2\n}\n```' in body
    assert "You may edit the answer" in body


def test_agent_body_renders_results_as_markdown_tables() -> None:
    table = {"content_type": "table", "content": {"data": "a,b\n1,2\n3,4\n"}}
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "Here it is.", "results": [table, {"content_type": "text", "content": "x"}]},
        output_type=None,
        editable=False,
    )
    assert "**Answer** (the agent's chat):\n\nHere it is\\." in body, "the chat as text (its markup escaped)"
    assert "**Result 1**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |" in body
    assert "**Result 2**\n\n```json" in body
    assert "edit" not in body


def test_a_long_answer_is_cut_with_a_note_at_a_character_boundary_and_its_code_block_closed() -> None:
    answer = {"text": "€" * 40_000}  # 3 bytes each: 120,000 bytes
    body = review_body(task="d.t", prompt="p", kind="pipeline", answer=answer, output_type=None, editable=False)
    data = body.encode()
    assert len(data) <= MAX_BODY_BYTES
    data.decode("utf-8")  # whole characters only
    assert "_(The answer is cut here:" in body and f"{MAX_BODY_BYTES:,} shown" in body
    fences = [line for line in body.splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0, "the open code block is closed before the note"


@pytest.mark.parametrize("limit", range(200, 240))
def test_cut_never_splits_a_multibyte_character(limit: int) -> None:
    text = "ab" + "日本語😀" * 100
    out = cut(text, limit)
    assert len(out.encode()) <= limit
    assert out.startswith("ab")
    assert "\ufffd" not in out


def test_a_short_text_is_not_cut() -> None:
    assert cut("short", 100) == "short"
