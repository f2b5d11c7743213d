"""A person reviews Candela's answer before the task returns it (Airflow 3.1+ human-in-the-loop).

The review options are named arguments and attributes of the prompt operators (and so of the prompt decorators),
set and checked at parse by :func:`set_review_options`; the names are common-ai's (``require_approval``,
``allow_modifications``, ``approval_timeout``, ...).

At run time (:class:`Review`) the answer is shown on Airflow's Required Actions page: the task, the prompt and
the answer rendered for a person (:func:`review_body`).  The task then waits without a worker slot
(``awaiting_input`` on Airflow 3.3+, deferred to the standard provider's ``HITLTrigger`` on 3.1 and 3.2) and
resumes in ``execute_review``: approved, the answer (or the reviewer's edit, validated like Candela's answer)
is the task's XCom; rejected or timed out, the task fails (a retry prompts Candela again, with a new review).

Imported at every DAG parse by the prompt operators: the standard library and the validators only; Airflow's
human-in-the-loop modules are imported when a review opens.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NoReturn

from airflow_provider_candela._validation import coerce_answer, coerce_choice, coerce_flag, set_on_task, shorten
from airflow_provider_candela.exceptions import CandelaInputError, CandelaOutputError, CandelaReviewError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from pydantic import BaseModel

__all__ = [
    "ON_APPROVAL_TIMEOUT",
    "REVIEW_DEFAULTS",
    "Review",
    "literal",
    "review_body",
    "set_review_options",
]

APPROVE: Final = "Approve"
REJECT: Final = "Reject"
ON_APPROVAL_TIMEOUT: Final = ("fail", "approve", "reject")
#: The review options and their defaults, as the prompt operators declare them.
REVIEW_DEFAULTS: Final[Mapping[str, Any]] = {
    "require_approval": False,
    "allow_modifications": False,
    "approval_timeout": None,
    "on_approval_timeout": "fail",
    "approval_notifiers": (),
    "approval_assigned_users": None,
}
#: The XCom key of the review's record (the return value is the approved answer).
REVIEW_XCOM_KEY: Final = "review"
#: The task state store key of an approved answer (Airflow 3.3): a retry returns it without a second review.
_APPROVED_KEY: Final = "candela.review.approved"
#: The name of the editable answer on the review form.
_PARAM: Final = "answer"
#: The review's Markdown body at most (UTF-8 bytes): within a MySQL TEXT column (65,535 bytes) with room to spare.
MAX_BODY_BYTES: Final = 60_000
#: The prompt shown at most (characters); the rest of the body is the answer's.
_PROMPT_CHARS: Final = 2_000
#: Rows of a result table shown at most.
_TABLE_ROWS: Final = 50


def set_review_options(op: Any, options: Mapping[str, Any], *, default_args: Mapping[str, Any] | None) -> None:
    """Set the review options on ``op`` and check them (none is templated).

    Review options other than ``require_approval`` that came from the DAG's ``default_args`` apply to the
    tasks that require approval, and are ignored by the others.

    :raises CandelaInputError: a malformed option, a review option set on a task without
        ``require_approval=True``, or ``require_approval=True`` on an Airflow older than 3.1.
    """
    tid = op.task_id
    op.require_approval = coerce_flag(options["require_approval"], argument="require_approval", task_id=tid)
    op.allow_modifications = coerce_flag(options["allow_modifications"], argument="allow_modifications", task_id=tid)
    timeout = options["approval_timeout"]
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise CandelaInputError(
            f"Invalid `approval_timeout` for task '{tid}': expected a positive datetime.timedelta or None, "
            f"got {timeout!r}. E.g. approval_timeout=timedelta(hours=4)."
        )
    op.approval_timeout = timeout
    op.on_approval_timeout = coerce_choice(
        options["on_approval_timeout"], ON_APPROVAL_TIMEOUT, argument="on_approval_timeout", task_id=tid
    )
    op.approval_notifiers = _notifiers(options["approval_notifiers"], task_id=tid)
    op.approval_assigned_users = _users(options["approval_assigned_users"], task_id=tid)
    if not op.require_approval:
        given = [name for name in set_on_task(options, REVIEW_DEFAULTS, default_args) if name != "require_approval"]
        if given:
            raise CandelaInputError(
                f"Task '{tid}' sets {', '.join(f'`{name}`' for name in given)} without require_approval=True: "
                "they would have no effect. Add require_approval=True, or drop them."
            )
        return
    from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_VERSION

    if not AIRFLOW_V_3_1_PLUS:
        raise CandelaInputError(
            f"Task '{tid}' has require_approval=True, which needs Airflow 3.1 or newer (its human-in-the-loop "
            f"review); this is Airflow {AIRFLOW_VERSION}. Upgrade Airflow, or drop require_approval."
        )
    if options["on_approval_timeout"] != "fail" and timeout is None:
        raise CandelaInputError(
            f"Task '{tid}' sets on_approval_timeout={options['on_approval_timeout']!r} without `approval_timeout`: "
            "with no timeout it would never apply. Add approval_timeout=timedelta(...), or drop it."
        )


def _notifiers(value: Any, *, task_id: str) -> list[Callable[..., Any]]:
    notifiers = [value] if callable(value) else list(value) if isinstance(value, list | tuple) else None
    if notifiers is None or not all(callable(n) for n in notifiers):
        raise CandelaInputError(
            f"Invalid `approval_notifiers` for task '{task_id}': expected a notifier (e.g. a BaseNotifier) or a "
            f"list of them, got {shorten(repr(value))}."
        )
    return notifiers


def _users(value: Any, *, task_id: str) -> list[dict[str, str]]:
    users = [] if value is None else [value] if isinstance(value, dict) else value
    if not isinstance(users, list | tuple) or not all(
        isinstance(u, dict) and set(u) == {"id", "name"} and all(isinstance(v, str) and v for v in u.values())
        for u in users
    ):
        raise CandelaInputError(
            f"Invalid `approval_assigned_users` for task '{task_id}': expected a {{'id': str, 'name': str}} dict "
            f"or a list of them, got {shorten(repr(value))}."
        )
    return [dict(u) for u in users]


# --------------------------------------------------------------------------------------------------
# What the reviewer sees
#
# Airflow's Required Actions page renders the body with react-markdown and remark-gfm (raw HTML dropped,
# images loaded, links and bare web addresses made links).  Everything from Candela or the prompt goes
# through `literal` (text) or `_code` (a code block): it shows as written, never as markup.

#: The characters CommonMark and GFM read as markup (emphasis, code, links, images, HTML, entities, tables,
#: strikethrough, headings, lists, block quotes, setext and thematic breaks): escaped in untrusted text.
_MARKUP: Final = "\\`*_{}[]()#+-.!|<>~&="
_ESCAPED: Final = str.maketrans({c: "\\" + c for c in _MARKUP})


def literal(text: str) -> str:
    """Untrusted ``text`` (from Candela or the prompt) as Markdown that shows exactly that text.

    Every character Markdown reads as markup is backslash-escaped, so no image, link, HTML, emphasis, table or
    code block can start (or end one of ours); a line's leading blanks become no-break spaces (no indented code
    block); lines stay lines (hard line breaks, a blank line between paragraphs).  A bare web address may
    still become a link whose text is exactly its address (the page's GFM links addresses in text); its
    ``://`` is escaped so that the link is made from the text as shown, not from the escaped source.
    """
    lines = []
    for line in text.splitlines():
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)].replace("\t", "    ").replace(" ", "\u00a0")
        lines.append(indent + body.translate(_ESCAPED).replace("://", "\\://") if body else "")
    return "\n".join(
        line + "\\" if line and i + 1 < len(lines) and lines[i + 1] else line for i, line in enumerate(lines)
    )


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(re.escape(char) + "+", text)), default=0)


def _code(value: Any) -> list[str]:
    """``value`` as a fenced code block (JSON unless a string), its fence longer than any backtick run inside."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    return [fence + ("" if isinstance(value, str) else "json"), text, fence]


def _code_span(text: str) -> str:
    """``text`` as inline code: delimited by more backticks than any run inside (padded where it needs to be)."""
    ticks = "`" * (_longest_run(text, "`") + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{ticks}{pad}{' '.join(text.splitlines())}{pad}{ticks}"


def review_body(
    *,
    task: str,
    prompt: str,
    kind: str,
    answer: Mapping[str, Any],
    output_type: type[BaseModel] | None,
    editable: bool,
    limit: int = MAX_BODY_BYTES,
) -> str:
    """The review's Markdown: the task, the prompt and the answer rendered for a person, at most ``limit`` bytes.

    Untrusted text (the prompt, Candela's answer) shows literally: as escaped text (:func:`literal`) or in
    code blocks that no value can close.

    :param answer: what the task would return: a pipeline's JSON (or its ``output_type`` form), an agent's summary.
    """
    parts = [f"**Task** {_code_span(task)} asks Candela ({kind})", "", "**Prompt**", "", _quote(prompt), ""]
    if kind == "agent":
        parts += _agent_answer(answer, output_type)
    else:
        parts += _pipeline_answer(answer, output_type)
    if editable:
        parts += ["", "You may edit the answer below before approving it; the edit is checked like Candela's answer."]
    return cut(("\n".join(parts)).rstrip() + "\n", limit)


def _quote(text: str) -> str:
    shown = literal(text[:_PROMPT_CHARS])
    if len(text) > _PROMPT_CHARS:
        shown += f" _(and {len(text) - _PROMPT_CHARS:,} more characters)_"
    return "\n".join("> " + line if line else ">" for line in shown.split("\n"))


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return literal(shorten(" ".join(text.splitlines()), 200)) or " "


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    width = max([len(header), *(len(row) for row in rows[:_TABLE_ROWS])])
    header = [*header, *[""] * (width - len(header))]  # a longer row's cells would not show under a short header
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[:_TABLE_ROWS]]
    if len(rows) > _TABLE_ROWS:
        lines.append(f"\n({len(rows) - _TABLE_ROWS:,} more rows not shown)")
    return lines


def _fields(value: Mapping[str, Any], output_type: type[BaseModel]) -> list[str]:
    return [
        f"**Answer** as {_code_span(output_type.__name__)}:",
        "",
        *_table(["field", "value"], list(value.items())),
        "",
    ]


def _pipeline_answer(answer: Mapping[str, Any], output_type: type[BaseModel] | None) -> list[str]:
    if output_type is not None:
        return [*_fields(answer, output_type), "As JSON:", "", *_code(answer)]
    return ["**Answer** (the pipeline's JSON):", "", *_code(answer)]


def _agent_answer(summary: Mapping[str, Any], output_type: type[BaseModel] | None) -> list[str]:
    response = summary.get("response")
    chat = literal(response) if isinstance(response, str) and response.strip() else "_(no chat text)_"
    lines = ["**Answer** (the agent's chat):", "", chat, ""]
    for i, result in enumerate(summary.get("results") or [], 1):
        lines += [f"**Result {i}**", ""]
        if output_type is not None and isinstance(result, Mapping):
            lines += [*_fields(result, output_type), *_code(result), ""]
            continue
        table = _csv_table(result)
        lines += [*(table if table is not None else _code(result)), ""]
    return lines


def _csv_table(result: Any) -> list[str] | None:
    """A ``table`` result (``{"content_type": "table", "content": {"data": "<CSV>"}}``) as a Markdown table."""
    if not (isinstance(result, Mapping) and result.get("content_type") == "table"):
        return None
    content = result.get("content")
    data = content.get("data") if isinstance(content, Mapping) else None
    if not isinstance(data, str):
        return None
    rows = list(csv.reader(io.StringIO(data)))
    if not rows:
        return ["_(an empty table)_"]
    return _table(rows[0], rows[1:])


#: A line opening a fenced code block (up to 3 spaces, then 3 or more backticks or tildes).
_FENCE: Final = re.compile(r" {0,3}(`{3,}|~{3,})")


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes: cut at a character boundary, an open code block closed, a note."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f"\n\n_(The answer is cut here: {len(data):,} bytes in all, {limit:,} shown. The task log has all of it.)_\n"
    room = max(0, limit - len(note.encode()))
    reserve = 0  # for the closing fence of a code block left open by the cut
    while True:
        kept = data[: max(0, room - reserve)].decode("utf-8", errors="ignore")
        fence = _open_fence(kept)
        if fence is None:
            return kept + note
        if len(fence) + 1 <= reserve:
            return kept + "\n" + fence + note
        reserve = len(fence) + 1


def _open_fence(text: str) -> str | None:
    """The fence of the code block still open at the end of ``text`` (Markdown as :func:`review_body` writes it)."""
    fence: str | None = None
    for line in text.split("\n"):
        if fence is None:
            opening = _FENCE.match(line)
            fence = opening.group(1) if opening else None
        elif re.fullmatch(f" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", line):
            fence = None
    return fence


# --------------------------------------------------------------------------------------------------
# The review at run time


@dataclass
class Review:
    """One review of one task run: opened after Candela answered, answered by a person (or the timeout)."""

    op: Any
    kind: str

    @property
    def task_id(self) -> str:
        return str(self.op.task_id)

    # -- before prompting

    def approved_earlier(self, context: Context, prompt: Callable[[], str]) -> Any | None:
        """The answer approved on an earlier try of this task (Airflow 3.3's task state store), else ``None``.

        Set when a review is approved and removed when the task succeeds, so a try that failed after the
        approval (a killed worker, a failed XCom write) returns it without prompting or reviewing again; but only
        for the same prompt, app, model, session, overrides and ``output_type`` (:meth:`fingerprint`): a task
        cleared after its upstream changed the prompt is prompted and reviewed again.

        :param prompt: takes this try's prompt (called only when an approved answer is kept).
        """
        store = context.get("task_state_store")
        record = store.get(_APPROVED_KEY) if store is not None else None
        if store is None or not isinstance(record, Mapping) or "answer" not in record:
            return None
        kept, now = record.get("fingerprint"), self.fingerprint(prompt())
        if kept != now:
            changed = [part for part in now if not isinstance(kept, Mapping) or kept.get(part) != now[part]]
            self.op.log.info(
                "An answer was approved on an earlier try, but %s: prompting Candela again for a new review.",
                f"for another {', '.join(changed)}" if isinstance(kept, Mapping) else "not bound to its prompt",
            )
            store.delete(_APPROVED_KEY)
            return None
        review = record.get("review")
        review = review if isinstance(review, Mapping) else {}
        self.op.log.info(
            "The answer was approved on an earlier try (%s) for the same prompt: returning it without prompting "
            "Candela again.",
            _describe(review),
        )
        _push(context, dict(review))
        return record["answer"]

    def fingerprint(self, prompt: str) -> dict[str, str]:
        """What an approved answer belongs to: a SHA-256 each of the prompt, app, model, session, overrides, type."""
        op = self.op
        output_type = op.output_type
        parts: dict[str, Any] = {
            "prompt": prompt,
            "app": op.app,
            "model": op.model,
            "session": [getattr(op, name, None) for name in ("session", "session_id", "scope")],
            "overrides": [op.circuit_override, op.directive_override],
            "output_type": None
            if output_type is None
            else [
                f"{output_type.__module__}.{output_type.__qualname__}",
                {name: repr(field.annotation) for name, field in output_type.model_fields.items()},
            ],
        }
        return {
            part: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
            for part, value in parts.items()
        }

    @staticmethod
    def forget(context: Context) -> None:
        """The task succeeded: the approved answer is in XCom, the state store need not keep it."""
        store = context.get("task_state_store")
        if store is not None and store.get(_APPROVED_KEY) is not None:
            store.delete(_APPROVED_KEY)

    # -- opening the review

    def open(self, context: Context, answer: dict[str, Any], prompt: str) -> NoReturn:
        """Show ``answer`` (what the task would return) for review and wait: never returns.

        The task waits in ``awaiting_input`` (Airflow 3.3+) or deferred (3.1, 3.2) and resumes in
        ``execute_review`` (with the answer and its :meth:`fingerprint`).  Called after a one-task session was
        stopped: the wait holds nothing.  A notifier that fails is logged; the review stays open (failing the
        task would cost a second prompt on retry).
        """
        from airflow_provider_candela._compat import AIRFLOW_V_3_3_PLUS

        op = self.op
        ti = context["task_instance"]
        body = review_body(
            task=f"{ti.dag_id}.{ti.task_id}",
            prompt=prompt,
            kind=self.kind,
            answer=answer,
            output_type=op.output_type,
            editable=op.allow_modifications,
        )
        subject = f"Review Candela's answer of task {ti.task_id}"
        params: dict[str, Any] = {}
        if op.allow_modifications:
            params[_PARAM] = {
                "value": self.editable(answer),
                "description": "Edit Candela's answer before approving it (optional).",
                "schema": {"type": "object"},
            }
        defaults = {"approve": [APPROVE], "reject": [REJECT]}.get(op.on_approval_timeout)
        request = {
            "options": [APPROVE, REJECT],
            "subject": subject,
            "body": body,
            "defaults": defaults,
            "multiple": False,
            "params": params,
            "assigned_users": op.approval_assigned_users,
        }
        _upsert_fresh(ti.id, request, task_id=self.task_id)
        op.subject, op.body = subject, body  # for the notifiers' templates: {{ task.subject }}, {{ task.body }}
        for notifier in op.approval_notifiers:
            try:
                notifier(context)
            except Exception as err:
                op.log.warning(
                    "The approval notifier %s failed (%s: %s); the review is open all the same.",
                    _notifier_name(notifier),
                    type(err).__name__,
                    err,
                )
        limit = f"within {op.approval_timeout}" if op.approval_timeout else "with no time limit"
        op.log.info(
            "Candela's answer waits for a review on the Required Actions page (%s; on timeout: %s).",
            limit,
            op.on_approval_timeout,
        )
        continuation = {"answer": answer, "fingerprint": self.fingerprint(prompt)}
        if AIRFLOW_V_3_3_PLUS:
            from airflow.sdk.exceptions import TaskAwaitingInput

            raise TaskAwaitingInput(method_name="execute_review", kwargs=continuation, timeout=op.approval_timeout)
        from airflow.providers.standard.triggers.hitl import HITLTrigger
        from airflow.sdk.timezone import utcnow

        op.defer(
            trigger=HITLTrigger(
                ti_id=ti.id,
                options=[APPROVE, REJECT],
                defaults=defaults,
                params=params,
                multiple=False,
                timeout_datetime=utcnow() + op.approval_timeout if op.approval_timeout else None,
            ),
            method_name="execute_review",
            kwargs=continuation,
        )
        raise AssertionError("defer() returned")  # pragma: no cover - defer always raises

    def editable(self, answer: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``answer`` a reviewer may edit: all of a pipeline's; an agent's ``response`` and ``results``."""
        if self.kind == "agent":
            return {"response": answer.get("response", ""), "results": list(answer.get("results") or [])}
        return dict(answer)

    # -- the reviewer answered

    def complete(
        self, context: Context, event: Mapping[str, Any], answer: dict[str, Any], fingerprint: Any = None
    ) -> Any:
        """The task's return value after the review: the answer, or the reviewer's edit.

        :param fingerprint: what the answer belongs to (:meth:`fingerprint` when the review opened), kept with
            the approved answer for a retry.

        :raises CandelaReviewError: rejected, or nobody answered within ``approval_timeout`` (``"fail"``).
        :raises CandelaOutputError: the edit does not fit (``output_type``, or the answer's form).
        """
        op, tid = self.op, self.task_id
        if not isinstance(event, Mapping):
            raise CandelaReviewError(f"Task '{tid}': the review resumed with an unexpected event {event!r}.")
        if "error" in event:
            timed_out = event.get("error_type") == "timeout"
            _push(context, _record("timed_out" if timed_out else "failed", False, None, None))
            if timed_out:
                raise CandelaReviewError(
                    f"Task '{tid}': nobody reviewed Candela's answer within approval_timeout ({op.approval_timeout}); "
                    "on_approval_timeout='fail'. Downstream tasks do not run; a retry prompts Candela again and "
                    "asks for a new review."
                )
            raise CandelaReviewError(f"Task '{tid}': the review failed: {event.get('error')}.")
        chosen = list(event.get("chosen_options") or [])
        timed_out = bool(event.get("timedout"))
        user = event.get("responded_by_user")
        at = event.get("responded_at")
        if APPROVE not in chosen:
            _push(context, _record("rejected_on_timeout" if timed_out else "rejected", False, user, at))
            who = (
                f"approval_timeout ({op.approval_timeout}) passed with on_approval_timeout='reject'"
                if timed_out
                else f"the reviewer {_name(user)} rejected Candela's answer"
            )
            raise CandelaReviewError(
                f"Task '{tid}': {who}. Downstream tasks do not run; a retry prompts Candela again and asks for "
                "a new review."
            )
        params = {} if timed_out else dict(event.get("params_input") or {})
        value, edited = answer, False
        if op.allow_modifications and _PARAM in params:
            value, edited = self._edit(answer, params[_PARAM])
        review = _record("approved_on_timeout" if timed_out else "approved", edited, user, at)
        op.log.info("Candela's answer was %s.", _describe(review))
        store = context.get("task_state_store")
        if store is not None:
            store.set(_APPROVED_KEY, {"answer": value, "review": review, "fingerprint": fingerprint})
        _push(context, review)
        return value

    def _edit(self, answer: dict[str, Any], edit: Any) -> tuple[dict[str, Any], bool]:
        """``answer`` with the reviewer's edit, validated like Candela's answer; and whether it changed."""
        op, tid = self.op, self.task_id
        original = self.editable(answer)
        if isinstance(edit, str):
            try:
                edit = json.loads(edit)
            except ValueError as err:
                raise CandelaOutputError(
                    f"Task '{tid}': the reviewer's edit is not JSON ({err}). The edit is in the task log; "
                    "clear the task to prompt Candela again and review the new answer."
                ) from None
        edit = _kept_exact(original, edit)
        if _exact(edit) == _exact(original):
            return answer, False
        op.log.info("The reviewer's edit (truncated): %s", shorten(json.dumps(edit, default=str), 2000))
        what = "the reviewer's edit"
        if not isinstance(edit, dict):
            raise CandelaOutputError(
                f"Task '{tid}': {what} is not a JSON object (got {type(edit).__name__}). Clear the task to "
                "prompt Candela again and review the new answer."
            )
        if self.kind == "agent":
            unknown = sorted(set(edit) - {"response", "results"})
            response, results = edit.get("response", ""), edit.get("results", [])
            if unknown or not isinstance(response, str) or not isinstance(results, list):
                raise CandelaOutputError(
                    f"Task '{tid}': {what} must be {{'response': text, 'results': [...]}}"
                    + (f"; unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "")
                    + ". Clear the task to prompt Candela again and review the new answer."
                )
            if op.output_type is not None:
                results = [
                    coerce_answer(r, op.output_type, what=f"result {i} of {what}", task_id=tid, advice=_ADVICE)
                    for i, r in enumerate(results, 1)
                ]
            return {**answer, "response": response, "results": results}, True
        if op.output_type is not None:
            return coerce_answer(edit, op.output_type, what=what, task_id=tid, advice=_ADVICE), True
        return edit, True


_ADVICE: Final = "Clear the task to prompt Candela again and review the new answer."


def _upsert_fresh(ti_id: Any, request: Mapping[str, Any], *, task_id: str) -> None:
    """Open the review of the task instance ``ti_id`` with ``request``, and make sure the page shows this one.

    Airflow 3.4 replaces the request part of a task instance's review on every try.  Airflow 3.1 to 3.3 keep
    the first try's subject, body and form and only reset the response: a retried (or cleared) task's reviewer
    would read, and could approve, an earlier try's answer, and an untouched form would read as an edit back
    to it.  There the review is opened through the supervisor's answer, which carries what Airflow stored:
    when that is not this try's review, the task fails at once, before anyone is asked.

    :raises CandelaStaleReviewError: Airflow kept an earlier try's review (3.1 to 3.3).
    """
    from airflow_provider_candela._compat import AIRFLOW_V_3_4_PLUS, AIRFLOW_VERSION

    if AIRFLOW_V_3_4_PLUS:
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        upsert_hitl_detail(ti_id=ti_id, **request)
        return
    from airflow.sdk.execution_time.comms import CreateHITLDetailPayload
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    stored = SUPERVISOR_COMMS.send(CreateHITLDetailPayload.model_validate({"ti_id": ti_id, **request}))
    shown = (getattr(stored, "subject", None), getattr(stored, "body", None))
    if stored is not None and shown != (request["subject"], request["body"]):
        from airflow_provider_candela.exceptions import CandelaStaleReviewError

        raise CandelaStaleReviewError(
            f"Task '{task_id}': Airflow {AIRFLOW_VERSION} keeps the first review of a task instance, so the Required "
            "Actions page would show an earlier try's answer instead of this one, and an approval could not be "
            "trusted (Candela's new answer is in the task log). Airflow 3.4 shows each try's review: upgrade, or "
            "give reviewed tasks no retries and rerun them in a new DAG run."
        )


def _as_javascript(value: Any) -> Any:
    """``value`` with every number a float, as a browser's ``JSON.parse`` reads it (booleans kept apart)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return ("bool", value) if isinstance(value, bool) else value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _as_javascript(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_javascript(v) for v in value]
    return value


def _exact(value: Any) -> str:
    """``value`` compared exactly (``1``, ``1.0`` and ``True`` differ; the order of an object's keys does not)."""
    return json.dumps(value, sort_keys=True, default=str)


def _kept_exact(original: Any, edit: Any) -> Any:
    """The reviewer's ``edit`` with every value they did not change exactly as in ``original`` (Candela's).

    The review form carries the answer through the browser's JSON numbers (doubles): an integer above 2**53
    comes back rounded although the reviewer never touched it.  So wherever the edit equals the original as
    JavaScript reads it, the original is kept: objects key by key, lists item by item (a list the reviewer
    made longer or shorter is matched by content, a changed item to the original it has most in common with).
    A value the reviewer changed is theirs, as the browser sent it.
    """
    if _as_javascript(edit) == _as_javascript(original):
        return original
    if isinstance(edit, Mapping) and isinstance(original, Mapping):
        return {k: _kept_exact(original[k], v) if k in original else v for k, v in edit.items()}
    if isinstance(edit, list) and isinstance(original, list):
        if len(edit) == len(original):
            return [_kept_exact(o, e) for o, e in zip(original, edit, strict=True)]
        return _kept_exact_items(original, edit)
    return edit


def _kept_exact_items(original: list[Any], edit: list[Any]) -> list[Any]:
    """:func:`_kept_exact` for a list whose length the reviewer changed: items matched by content."""
    from difflib import SequenceMatcher

    merged = list(edit)
    shown = [_exact(_as_javascript(item)) for item in original]
    sent = [_exact(_as_javascript(item)) for item in edit]
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, shown, sent, autojunk=False).get_opcodes():
        if tag == "equal":
            merged[j1:j2] = original[i1:i2]
        elif tag == "replace":
            free = list(range(i1, i2))
            for j in range(j1, j2):
                scores = [(len(_leaves(original[i]) & _leaves(edit[j])), -i) for i in free]
                if scores and max(scores)[0] > 0:
                    i = -max(scores)[1]
                    free.remove(i)
                    merged[j] = _kept_exact(original[i], edit[j])
    return merged


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """The scalar values of ``value`` with their paths, as JavaScript reads them (to match a changed item)."""
    if isinstance(value, Mapping):
        return set().union(*(_leaves(v, (*path, str(k))) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_leaves(v, (*path, i)) for i, v in enumerate(value)))
    return {(*path, _exact(_as_javascript(value)))}


def _notifier_name(notifier: Any) -> str:
    return str(getattr(notifier, "__name__", None) or type(notifier).__name__)


def _record(decision: str, edited: bool, user: Any, at: Any) -> dict[str, Any]:
    """The ``review`` XCom: ``{"decision", "edited", "responded_by", "responded_at"}``."""
    responded_at = at.isoformat() if isinstance(at, datetime) else at
    by = {"id": str(user.get("id")), "name": str(user.get("name"))} if isinstance(user, Mapping) else None
    return {"decision": decision, "edited": edited, "responded_by": by, "responded_at": responded_at}


def _name(user: Any) -> str:
    if isinstance(user, Mapping):
        return f"'{user.get('name')}' (id {user.get('id')})"
    return "(unknown)"


def _describe(review: Mapping[str, Any]) -> str:
    decision = str(review.get("decision", "approved")).replace("_", " ")
    by = review.get("responded_by")
    who = f" by {_name(by)}" if by else ""
    return f"{decision}{' with edits' if review.get('edited') else ''}{who} at {review.get('responded_at')}"


def _push(context: Context, review: Any) -> None:
    ti = context.get("ti")
    if ti is not None and review is not None:
        ti.xcom_push(key=REVIEW_XCOM_KEY, value=review)
