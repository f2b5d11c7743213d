"""Batch operators: many prompts in one session, one outcome per input, resumable after a retry.

:class:`CandelaPipelineBatchOperator` and :class:`CandelaAgentBatchOperator` send every input of
``prompts`` to one session: a running one (``session=``), or one the task starts and stops (``app=`` +
``model=``), on one connection or on several at once (``candela_conn_ids=``, a session per Candela
user, inputs handed out from one queue).  Each input ends ``succeeded``, ``failed``, ``invalid_output``
or ``ambiguous``; a retried task sends only those that did not succeed (never an ambiguous one unless
``resend_ambiguous=True``).  The engine is :mod:`airflow_provider_candela.operators._batch`, imported
when the task runs: this module stays cheap to import at DAG parse.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_candela._validation import (
    coerce_batch_inputs,
    coerce_choice,
    coerce_conn_ids,
    coerce_flag,
    coerce_name,
    coerce_object_id,
    coerce_output_type,
    coerce_session,
    id_json,
    is_resolved,
    set_on_task,
    shorten,
)
from airflow_provider_candela.exceptions import CandelaError, CandelaInputError
from airflow_provider_candela.operators._answers import typed, typed_results
from airflow_provider_candela.operators._base import CandelaOperator
from airflow_provider_candela.operators._session_start import (
    SESSION_DEFAULTS,
    START_DEFAULTS,
    app_start,
    may_defer,
    pick,
    ready_slot,
    resume,
    set_session,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from pydantic import BaseModel

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectId
    from airflow_provider_candela.operators._batch import BatchInput

__all__ = ["CandelaAgentBatchOperator", "CandelaPipelineBatchOperator"]

_APP_START_FIELDS = ("app", "model", "scope", "circuit_override", "directive_override", "parent_session", "slot_type")
_CHANGED_INPUTS = ("fail", "restart")
#: Inputs named in the error of a partial batch (the others are counted).
_NAMED = 10


class _BatchOperatorBase(CandelaOperator):
    """The inputs, the sessions (one per connection), the state and the results of the batch operators.

    XCom return value, without ``result_path``: a list in input order, one record per input,
    ``{"index", "key", "status", "answer", "error", "request_id"}`` (``status`` one of ``succeeded``,
    ``failed``, ``invalid_output``, ``ambiguous``).  With ``result_path``: the same records in that file,
    and XCom ``{"counts": {status: n}, "result_uri": ..., "inputs": n}``.

    Resuming: the outcome of each input is kept as it ends (beside ``result_path``, else in Airflow 3.3's
    task state store), keyed on the task instance (DAG, task, run, map index) with a fingerprint of the
    inputs; a retried task sends only the inputs that did not succeed.  Without either (Airflow 2.11 and
    no ``result_path``) a retry starts over.

    Every argument is a named parameter (``default_args``, ``.partial()``, ``.expand()`` over the templated
    ones); beside a running session, start options that came from ``default_args`` are ignored, and so is
    ``deferrable`` from there for a fan-out (which waits for its slots in the worker).

    :param prompts: the inputs: a sequence (a list, an XCom such as ``upstream.output``, or the outputs of a
        mapped task) of prompt strings or dicts ``{"prompt": str, "key": str}`` (``key`` defaults to the
        input's index and must be unique) (templated).
    :param session: a running session to send every input to: ``start.output`` (an ``ObjectMetadata``
        dict), an ``ObjectId``, a dict or ``"scope/identifier"`` (templated).
    :param session_id: instead of ``session``: the session identifier (templated).
    :param app: instead of ``session``: the app of a session the task starts (one per connection) and stops,
        also on failure, timeout and kill (templated).
    :param model: with ``app``: the model configuration to run it with (templated).
    :param circuit_override: with ``app``: a circuit to use instead of the app's (templated).
    :param directive_override: with ``app``: a directive to use instead of the app's (templated).
    :param output_type: a pydantic model class each answer is validated into; an answer that does not fit
        makes its input ``invalid_output`` (the fields listed), the others go on.
    :param candela_conn_ids: instead of ``candela_conn_id``, with ``app``: several connections (Candela
        users), a session each at the same time, the inputs handed out from one queue.  A connection that
        cannot authenticate or whose slot or session is gone drops out with a warning (its input goes back to
        the queue); the task fails only when none is left (templated).
    :param result_path: where to write the records as JSON Lines (``file:///...`` or any URL Airflow's
        ``ObjectStoragePath`` supports, e.g. ``s3://...``); XCom then holds a manifest.  The batch's state
        is kept beside it, so a retry resumes on any Airflow version.  Required above 1,000 inputs
        (templated).
    :param fail_on_partial_error: after every input was tried and the results written, fail the task naming
        the inputs that did not succeed (default True); ``False``: succeed, the XCom says what failed.
    :param resend_ambiguous: on a retry, send again the inputs whose answer was lost (Candela may have acted
        on them); default False.
    :param on_changed_inputs: when a retry finds other inputs than an earlier try: ``"fail"`` (default) or
        ``"restart"`` (forget the earlier tries' outcomes).
    :param scope: with ``session_id``: the session's scope (default ``"default"``); with ``app``: the
        scope of the new session (templated).
    :param parent_session: with ``app``: the session the new one continues, if any (templated).
    :param ensure_slot: with ``app``: assign a slot when the user has none and wait until it is ready
        (default True).
    :param slot_type: with ``app``: slot type to assign (default: the connection's ``slot_type``, else
        ``gpu-medium``) (templated).
    :param slot_ready_timeout: with ``app``: seconds to wait for the slot to become ready (default 600;
        ``float("inf")`` waits without a deadline).
    :param if_session_running: with ``app``: when Candela answers that the user already runs a session:
        ``"stop"`` it and start again (default) or ``"fail"``.
    :param deferrable: with ``app`` and one connection: wait for the slot in the triggerer instead of a worker
        (default: the ``[operators] default_deferrable`` option); needs ``ensure_slot``.
    :param slot_poll_interval: with ``deferrable``: seconds between two checks of the slot's state (default 5).
    :param kwargs: ``candela_conn_id`` and ``hook_params`` of
        :class:`~airflow_provider_candela.operators._base.CandelaOperator`, and the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "candela_conn_id",
        "candela_conn_ids",
        "prompts",
        "session",
        "session_id",
        "result_path",
        *_APP_START_FIELDS,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"prompts": "json", "session": "json"}

    # Set and checked by set_session and set_start_options:
    session: Any
    session_id: Any
    app: Any
    model: Any
    circuit_override: Any
    directive_override: Any
    scope: Any
    parent_session: Any
    ensure_slot: bool
    slot_type: Any
    slot_ready_timeout: float
    if_session_running: str
    deferrable: bool
    slot_poll_interval: float
    #: Set by :func:`~._session_start.resume`: the trigger saw the slot ready.
    slot_ready: bool

    def __init__(
        self,
        *,
        prompts: Any,
        session: Any = None,
        session_id: str | None = None,
        app: Any = None,
        model: Any = None,
        circuit_override: Any = None,
        directive_override: Any = None,
        output_type: type[BaseModel] | None = None,
        candela_conn_ids: Any = None,
        result_path: Any = None,
        fail_on_partial_error: bool = True,
        resend_ambiguous: bool = False,
        on_changed_inputs: str = "fail",
        scope: str | None = None,
        parent_session: Any = None,
        ensure_slot: bool = True,
        slot_type: str | None = None,
        slot_ready_timeout: float = 600.0,
        if_session_running: str = "stop",
        deferrable: bool | None = None,
        slot_poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        given = dict(locals())  # the named arguments, before anything else is bound
        default_args = kwargs.get("default_args")
        both_conns = candela_conn_ids is not None and "candela_conn_id" in kwargs
        fan_out = candela_conn_ids is not None
        if fan_out and not set_on_task({"deferrable": deferrable}, {"deferrable": None}, default_args):
            given["deferrable"] = False  # a fan-out waits for its slots in the worker (the configured default aside)
        super().__init__(**kwargs)
        tid = self.task_id
        self.prompts = prompts
        self.candela_conn_ids = candela_conn_ids
        self.result_path = result_path
        self.output_type = coerce_output_type(output_type, task_id=tid)
        self.fail_on_partial_error = coerce_flag(fail_on_partial_error, argument="fail_on_partial_error", task_id=tid)
        self.resend_ambiguous = coerce_flag(resend_ambiguous, argument="resend_ambiguous", task_id=tid)
        self.on_changed_inputs = coerce_choice(
            on_changed_inputs, _CHANGED_INPUTS, argument="on_changed_inputs", task_id=tid
        )
        set_session(
            self,
            pick(SESSION_DEFAULTS, given),
            pick(START_DEFAULTS, given),
            default_args=default_args,
        )
        if both_conns:
            raise CandelaInputError(
                f"Task '{tid}' got both `candela_conn_id` and `candela_conn_ids`: pass `candela_conn_ids` to "
                "spread the inputs over several connections, or `candela_conn_id` for one."
            )
        if fan_out and self.app is None:
            raise CandelaInputError(
                f"Task '{tid}' got `candela_conn_ids` with a running session: a session belongs to one "
                "Candela user. Pass `app=` and `model=` (a session per connection) or one `candela_conn_id`."
            )
        if fan_out and self.deferrable:
            raise CandelaInputError(
                f"Task '{tid}' got `candela_conn_ids` with deferrable=True: a fan-out waits for its slots in "
                "the worker. Drop one of them."
            )
        self._check_now(candela_conn_ids, lambda v: v is None or coerce_conn_ids(v, task_id=tid))
        self._check_now(prompts, self._check_prompts)
        self._check_now(result_path, self._result_path)

    # -- arguments -----------------------------------------------------------------------------

    def _check_prompts(self, value: Any) -> list[tuple[str, str]]:
        """The inputs as ``(key, prompt)`` pairs, checked (their number too, against ``result_path``)."""
        from airflow_provider_candela.operators._batch import MAX_INLINE_INPUTS

        pairs = coerce_batch_inputs(value, task_id=self.task_id)
        if len(pairs) > MAX_INLINE_INPUTS and is_resolved(self.result_path) and not self.result_path:
            raise CandelaInputError(
                f"Task '{self.task_id}' has {len(pairs):,} inputs: above {MAX_INLINE_INPUTS:,} the records are too "
                "many for XCom. Pass `result_path=` (e.g. 'file:///data/batch.jsonl' or 's3://bucket/batch.jsonl'): "
                "the records go there and XCom holds a manifest."
            )
        return pairs

    def _result_path(self, value: Any) -> Any:
        """``result_path`` as an ``ObjectStoragePath`` (None without one)."""
        if value is None or value == "":
            return None
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        if isinstance(value, ObjectStoragePath):
            return value
        if not isinstance(value, str):
            raise CandelaInputError(
                f"Invalid `result_path` for task '{self.task_id}': expected a URL such as 'file:///data/batch.jsonl' "
                f"or 's3://bucket/batch.jsonl', got {type(value).__name__}."
            )
        if value.strip().endswith("/"):
            raise CandelaInputError(
                f"Invalid `result_path` for task '{self.task_id}': {value.strip()!r} ends with '/', a folder. Name "
                f"the file the records go to, e.g. '{value.strip()}batch.jsonl'."
            )
        try:
            return ObjectStoragePath(value.strip())
        except Exception as err:  # each storage backend raises its own errors
            raise CandelaInputError(
                f"Invalid `result_path` for task '{self.task_id}': {value!r} is not a location Airflow can write "
                f"({type(err).__name__}: {err}). Use e.g. 'file:///data/batch.jsonl' or 's3://bucket/batch.jsonl'."
            ) from None

    def _conn_ids(self) -> list[str]:
        if self.candela_conn_ids is None:
            return [self.candela_conn_id]
        return coerce_conn_ids(self.candela_conn_ids, task_id=self.task_id)

    def _batch_inputs(self, context: Context) -> Any:
        """The inputs as given (the decorators' function returns them instead)."""
        return self.prompts

    def _take_inputs(self, context: Context) -> list[BatchInput]:
        """The inputs, taken once per task run (the decorators call their function here) and checked."""
        from airflow_provider_candela.operators._batch import BatchInput

        pairs = self._check_prompts(self._batch_inputs(context))
        return [BatchInput(index, key, prompt) for index, (key, prompt) in enumerate(pairs)]

    # -- running -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        """Send every input not answered by an earlier try; return the records (or the manifest).

        One connection: the task's one hook (its slot waited for here or, ``deferrable``, in the triggerer;
        the inputs are taken once the slot is ready).  Several: a hook and a session each, at the same time.
        """
        from airflow_provider_candela.operators._batch import check_writable

        result_path = self._result_path(self.result_path)
        if result_path is not None:
            check_writable(result_path, context["ti"], task_id=self.task_id)
        if self.candela_conn_ids is not None:
            inputs = self._take_inputs(context)
            conn_ids = coerce_conn_ids(self.candela_conn_ids, task_id=self.task_id)
            self._batch_hooks = [self._connection_hook(conn_id) for conn_id in conn_ids]
            try:
                return self._run(context, inputs, result_path, self._batch_hooks, slot_ready=False)
            finally:
                for hook in self.__dict__.pop("_batch_hooks"):
                    hook.close()
        early = None if self.app is not None and may_defer(self) else self._take_inputs(context)
        with self._task_hook() as hook:
            if self.app is not None and (early is None or early):
                ready_slot(self, hook)
            inputs = early if early is not None else self._take_inputs(context)
            return self._run(context, inputs, result_path, [hook], slot_ready=True)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the slot trigger fired: run the batch on the ready slot, or fail."""
        return resume(self, context, event)

    def _run(
        self,
        context: Context,
        inputs: list[BatchInput],
        result_path: Any,
        hooks: list[CandelaHook],
        *,
        slot_ready: bool,
    ) -> Any:
        from airflow_provider_candela.operators import _batch

        tid = self.task_id
        total = len(inputs)
        if not inputs:
            self.log.info("The batch has no inputs: nothing to send.")
            return self._output(context, [], {}, result_path, 0, state=None)
        state = _batch.open_state(
            context,
            result_path,
            _batch.fingerprint(inputs),
            inputs=total,
            restart=self.on_changed_inputs == "restart",
            task_id=tid,
        )
        records: dict[int, dict[str, Any]] = {}
        keep = result_path is None  # with result_path the records live beside it, not in memory
        pending: list[BatchInput] = []
        counts: Counter[str] = Counter()
        earlier = state.load(total)
        for item in inputs:
            found = earlier.get(item.index)
            status = None if found is None else found.get("status")
            if status == "sending" and not self.resend_ambiguous:
                found = _batch.record(
                    item,
                    "ambiguous",
                    error="sent by an earlier try of the task, whose answer was lost (it was stopped)",
                )
                state.save(found)
                status = "ambiguous"
            if status == "succeeded" or (status == "ambiguous" and not self.resend_ambiguous):
                assert found is not None
                counts[status] += 1
                if keep:
                    records[item.index] = found
            else:
                pending.append(item)
        if len(pending) < total:
            self.log.info(
                "Resuming the batch (state: %s): %d of %d inputs done by an earlier try (%s); sending %d.",
                state.where,
                total - len(pending),
                total,
                ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
                len(pending),
            )
        else:
            self.log.info(
                "Sending %d inputs through %s (state: %s).",
                total,
                ", ".join(repr(h.candela_conn_id) for h in hooks),
                state.where,
            )
        progress = _batch.Progress(total, self.log.info, done=total - len(pending))

        def on_outcome(outcome: dict[str, Any]) -> None:
            counts[outcome["status"]] += 1
            if keep:
                records[outcome["index"]] = outcome

        workers = [
            _batch.Worker(h.candela_conn_id, h, lambda h: self._session(h, slot_ready=slot_ready)) for h in hooks
        ]
        if pending:
            _batch.run_batch(
                workers,
                pending,
                send=self._traced,
                state=state,
                progress=progress,
                log=self.log,
                on_outcome=on_outcome,
            )
        if pending:
            self.log.info("Batch done: %s.", progress.summary())
        ordered = [records[item.index] for item in inputs] if keep else []
        return self._output(context, ordered, counts, result_path, total, state=state, inputs=inputs)

    def _connection_hook(self, conn_id: str) -> CandelaHook:
        from airflow_provider_candela.hooks.candela import CandelaHook

        hook = CandelaHook(conn_id, **self.hook_params)
        if self._killed is not None:
            hook.cancel(self._killed)
        return hook

    def on_kill(self) -> None:
        """Abort every connection's call in flight; each worker then stops the session it started."""
        super().on_kill()
        for hook in list(getattr(self, "_batch_hooks", ())):
            hook.cancel(self._killed or "killed")

    @contextmanager
    def _session(self, hook: CandelaHook, *, slot_ready: bool) -> Iterator[ObjectId]:
        """The session a worker prompts: the DAG's running one, or one it starts (and stops when done)."""
        from airflow_provider_candela.hooks._lifecycle import own_session, running_session

        owner = f"task '{self.task_id}' (connection {hook.candela_conn_id!r})"
        if self.app is None:
            oid = coerce_session(self.session, session_id=self.session_id, scope=self.scope, task_id=self.task_id)
            with running_session(hook, oid, owner=owner) as session:
                yield session
            return
        app, _ = self._prompt_ids
        assert app is not None

        def slot() -> None:
            if self.ensure_slot and not slot_ready:
                slot_type = coerce_name(self.slot_type, kind="scope", argument="slot_type", task_id=self.task_id)
                hook.ensure_slot(slot_type, timeout=float(self.slot_ready_timeout))

        start = app_start(self, self.app, self.model, self.circuit_override, self.directive_override)
        with own_session(hook, app=app, kind="batch", owner=owner, start=lambda: start(hook), prepare=slot) as session:
            yield session

    #: The ``kind`` tag of ``candela.prompt``.
    prompt_kind: ClassVar[str] = "pipeline"

    @cached_property
    def _prompt_ids(self) -> tuple[ObjectId | None, ObjectId | None]:
        """The app and model of the task's own sessions (None with a running session), for the prompt spans."""
        tid = self.task_id
        app = None if self.app is None else coerce_object_id(self.app, argument="app", task_id=tid)
        model = None if self.model is None else coerce_object_id(self.model, argument="model", task_id=tid)
        return app, model

    def _traced(self, hook: CandelaHook, session: ObjectId, item: BatchInput) -> dict[str, Any]:
        """One input sent (:meth:`_send`), timed and traced as one prompt."""
        from airflow_provider_candela.hooks._telemetry import prompting

        app, model = self._prompt_ids
        with prompting(
            hook.telemetry, kind=self.prompt_kind, app=app, model=model, session=session, prompt=item.prompt
        ) as seen:
            seen["answer"] = outcome = self._send(hook, session, item)
            return outcome

    def _send(self, hook: CandelaHook, session: ObjectId, item: BatchInput) -> dict[str, Any]:
        """Send one input; its record (``succeeded``), or raise (the engine sorts the error)."""
        raise NotImplementedError

    # -- results -------------------------------------------------------------------------------

    def _output(
        self,
        context: Context,
        records: list[dict[str, Any]],
        counts: Counter[str] | dict[str, int],
        result_path: Any,
        total: int,
        *,
        state: Any,
        inputs: list[BatchInput] | None = None,
    ) -> Any:
        from airflow_provider_candela.operators._batch import MAX_INLINE_BYTES, STATUSES

        tid = self.task_id
        if result_path is not None:
            try:
                written, problems, failing = self._write(result_path, state, inputs or [])
            except Exception as err:  # any storage backend's error
                raise CandelaError(
                    f"Task '{tid}': could not write the records of its {total} inputs to `result_path` "
                    f"{result_path} ({type(err).__name__}: {err}). Every outcome is kept ({state.where}): make "
                    "the location writable and retry the task; the retry writes them without sending any input again"
                ) from err
            value: Any = {
                "counts": {s: int(counts.get(s, 0)) for s in STATUSES},
                "result_uri": str(result_path),
                "inputs": total,
            }
            self.log.info("Wrote %d records to %s.", written, result_path)
        else:
            value = records
            size = len(json.dumps(records, default=str))
            if size > MAX_INLINE_BYTES:
                kept = state is not None and state.keeps
                raise CandelaInputError(
                    f"Task '{tid}': the records of its {total} inputs are {size:,} bytes, more than the "
                    f"{MAX_INLINE_BYTES:,} XCom takes. Pass `result_path=` and retry the task: "
                    + (
                        "the retry takes over the outcomes kept in Airflow's task state store and writes them "
                        "there, sending only the inputs that did not succeed."
                        if kept
                        else "the records go there (this Airflow version keeps no outcome without "
                        "result_path, so the retry sends every input again)."
                    )
                )
            problems = [r for r in records if r["status"] != "succeeded"]
            failing = len(problems)
        if problems and self.fail_on_partial_error:
            ti = context.get("ti")
            if ti is not None:
                ti.xcom_push(key="return_value", value=value)
            named = "; ".join(
                f"input {r['index']} ({r['key']!r}): {r['status']}, {shorten(str(r.get('error') or ''), 160)}"
                for r in problems[:_NAMED]
            )
            more = f" and {failing - _NAMED} more" if failing > _NAMED else ""
            raise CandelaError(
                f"Task '{tid}': {failing} of {total} inputs did not succeed: {named}{more}. The results "
                "are written (XCom or result_path); a retry sends only the inputs that did not succeed"
                f"{'' if self.resend_ambiguous else ' (not the ambiguous ones: resend_ambiguous=True)'}, or pass "
                "fail_on_partial_error=False to accept a partial batch"
            )
        return value

    def _write(self, result_path: Any, state: Any, inputs: list[BatchInput]) -> tuple[int, list[dict[str, Any]], int]:
        """Every input's record, in input order, as JSON Lines at ``result_path`` (streamed: memory stays flat).

        :return: the records written, the first of those that did not succeed, and how many did not.
        """
        result_path.parent.mkdir(parents=True, exist_ok=True)
        written, failing = 0, 0
        problems: list[dict[str, Any]] = []
        with result_path.open("w") as out:
            for item in inputs:
                found = state.record(item.index)
                if found is None:
                    continue
                out.write(json.dumps(found, default=str) + "\n")
                written += 1
                if found.get("status") != "succeeded":
                    failing += 1
                    if len(problems) < _NAMED:
                        problems.append(found)
        return written, problems, failing


class CandelaPipelineBatchOperator(_BatchOperatorBase):
    """Send many prompts to a pipeline, in one session per connection; one record per input.

    Each record's ``answer`` is Candela's JSON answer (with ``output_type``, its ``result`` as that model's
    JSON form, by alias), its ``request_id`` Candela's request id.

    Arguments, XCom and resuming: as :class:`_BatchOperatorBase` says.
    """

    def _send(self, hook: CandelaHook, session: ObjectId, item: BatchInput) -> dict[str, Any]:
        from airflow_provider_candela.operators._batch import record

        answer = hook.submit_pipeline_prompt(session, item.prompt)
        xcom = answer.to_xcom()
        if self.output_type is not None:
            what = f"the `result` of input {item.index} ({item.key!r})"
            xcom = typed(answer.result, self.output_type, what=what, answer=xcom, task_id=self.task_id, log=self.log)
        return record(item, "succeeded", answer=xcom, request_id=answer.request_id)


class CandelaAgentBatchOperator(_BatchOperatorBase):
    """Send many prompts to an agent, in one session per connection; one record per input.

    Each record's ``answer`` is the agent's compact summary (``session``, ``response``, ``results``,
    ``event_counts``; with ``output_type``, ``results`` validated into it).  The task log has the batch's
    progress, not every event of every answer (``log_answers=True`` writes each answer as the agent
    operator does).

    Arguments, XCom and resuming: as :class:`_BatchOperatorBase` says, and:

    :param log_answers: write each answer's events into the task log as they arrive (default False).
    """

    prompt_kind: ClassVar[str] = "agent"

    def __init__(self, *, log_answers: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_answers = coerce_flag(log_answers, argument="log_answers", task_id=self.task_id)

    def _send(self, hook: CandelaHook, session: ObjectId, item: BatchInput) -> dict[str, Any]:
        from airflow_provider_candela.operators._batch import record
        from airflow_provider_candela.operators._transcript import AgentTranscript

        transcript = None
        if self.log_answers:
            self.log.info("[input %d %r]", item.index, item.key)
            transcript = AgentTranscript(self.log.info)
        try:
            answer = hook.agent_answer(session, item.prompt, on_event=None if transcript is None else transcript.add)
        finally:
            if transcript is not None:
                transcript.flush()
        summary = answer.summary(id_json(session))
        if self.output_type is not None:
            answer_to = f" to input {item.index} ({item.key!r})"
            typed_results(summary, self.output_type, task_id=self.task_id, log=self.log, answer_to=answer_to)
        return record(item, "succeeded", answer=summary)
