"""The batch engine: many prompts in one session per Candela user, each input's outcome kept, resumable.

Imported when a batch task runs (not at DAG parse).  The pieces:

* :class:`BatchInput` and :func:`fingerprint`: the inputs, checked, and what identifies them across tries;
* the state (:func:`open_state`): what each input came to, kept as each one ends, so that a retried task
  sends only what did not succeed.  Beside the results with ``result_path`` (any Airflow version), else in
  Airflow 3.3's task state store, else nowhere (a retry starts over).  An input is marked ``sending``
  before it is sent: one found so after a kill is ``ambiguous`` (Candela may have acted on it);
* :class:`Progress`: the task log, a line every few seconds, never a line per input of a large batch;
* :func:`run_batch`: one worker per connection (a session each), all taking inputs from one queue; a
  connection that cannot work (credentials, slot, its session replaced or refusing what another connection
  answers) drops out and its input goes back to the queue.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote
from uuid import UUID

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_candela.exceptions import (
    CandelaAmbiguousError,
    CandelaApiError,
    CandelaAuthError,
    CandelaCancelledError,
    CandelaConnectionConfigError,
    CandelaError,
    CandelaInputError,
    CandelaOutputError,
    CandelaRejectedError,
    CandelaResponseError,
    CandelaSlotError,
    CandelaTimeoutError,
)

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectId

__all__ = [
    "MAX_INLINE_BYTES",
    "MAX_INLINE_INPUTS",
    "STATUSES",
    "BatchInput",
    "BatchState",
    "Progress",
    "Worker",
    "check_writable",
    "fingerprint",
    "open_state",
    "run_batch",
]

#: What an input comes to.  ``ambiguous``: sent, but the answer was lost (Candela may have acted on it).
STATUSES: Final = ("succeeded", "failed", "invalid_output", "ambiguous")
#: Most inputs whose records go to XCom; beyond, ``result_path`` is required.
MAX_INLINE_INPUTS: Final = 1000
#: Most bytes of records (as JSON) that go to XCom; beyond, ``result_path`` is required.
MAX_INLINE_BYTES: Final = 4 * 1024 * 1024
_STATE_KEY: Final = "candela_batch"
_SENDING: Final = "sending"


@dataclass(frozen=True)
class BatchInput:
    """One input: its position, its key (unique) and its prompt."""

    index: int
    key: str
    prompt: str


def fingerprint(inputs: Sequence[BatchInput]) -> str:
    """What identifies the inputs across tries: a SHA-256 of their keys and prompts, in order."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(json.dumps([item.key, item.prompt]).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def record(
    item: BatchInput, status: str, *, answer: Any = None, error: str | None = None, request_id: Any = None
) -> dict[str, Any]:
    """The outcome of one input, as XCom and the result file hold it."""
    return {
        "index": item.index,
        "key": item.key,
        "status": status,
        "answer": answer,
        "error": error,
        "request_id": None if request_id is None else str(request_id),
    }


# --------------------------------------------------------------------------------------------------
# state


class BatchState(Protocol):
    """What each input came to, kept across the tries of one task instance."""

    #: Where it is kept, for the log.
    where: str
    #: Whether a retry finds it.
    keeps: bool

    def load(self, inputs: int) -> dict[int, dict[str, Any]]:
        """Every input's last record (``{"status": "sending"}`` for one sent whose outcome is unknown).

        Beside ``result_path`` only each input's ``status``: the records stay there, out of memory.
        """

    def sending(self, index: int) -> None:
        """Mark input ``index`` as sent (before the request goes out)."""

    def forget(self, index: int) -> None:
        """Input ``index`` was certainly not acted on (Candela refused it before running it): unmark it."""

    def save(self, outcome: dict[str, Any]) -> None:
        """Keep the record of one input."""


class _Memory:
    """No state across tries: a retry starts over (2.11 without ``result_path``)."""

    where = "nowhere (a retry of the task starts over: give it result_path to resume instead)"
    keeps = False

    def load(self, inputs: int) -> dict[int, dict[str, Any]]:
        return {}

    def sending(self, index: int) -> None:
        pass

    def forget(self, index: int) -> None:
        pass

    def save(self, outcome: dict[str, Any]) -> None:
        pass


class _TaskStateStore:
    """Airflow 3.3's task state store (``context["task_state_store"]``): a key per input, one for the inputs."""

    where = "Airflow's task state store"
    keeps = True

    def __init__(self, store: Any, digest: str, *, restart: bool, task_id: str) -> None:
        self._store = store
        meta = store.get(_STATE_KEY)
        if isinstance(meta, Mapping) and meta.get("fingerprint") != digest:
            if not restart:
                raise _changed(task_id)
            store.clear()
            meta = None
        if not isinstance(meta, Mapping):
            store.set(_STATE_KEY, {"fingerprint": digest})

    def load(self, inputs: int) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for index in range(inputs):
            value = self._store.get(f"{_STATE_KEY}:{index}")
            if isinstance(value, Mapping):
                found[index] = dict(value)
        return found

    def sending(self, index: int) -> None:
        self._store.set(f"{_STATE_KEY}:{index}", {"status": _SENDING})

    def forget(self, index: int) -> None:
        self._store.delete(f"{_STATE_KEY}:{index}")

    def save(self, outcome: dict[str, Any]) -> None:
        self._store.set(f"{_STATE_KEY}:{outcome['index']}", outcome)


class _BesideResults:
    """A folder beside ``result_path``, per task instance: ``inputs.json``, and a file per input."""

    keeps = True

    def __init__(self, folder: Any, digest: str, *, restart: bool, task_id: str) -> None:
        self._folder = folder
        self.where = str(folder)
        meta = folder / "inputs.json"
        if meta.exists() and json.loads(meta.read_text()).get("fingerprint") != digest:
            if not restart:
                raise _changed(task_id)
            for path in folder.iterdir():
                path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"fingerprint": digest}))

    def load(self, inputs: int) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for path in self._folder.iterdir():
            stem, _, suffix = path.name.partition(".")
            if not stem.isdigit() or int(stem) >= inputs:
                continue
            if suffix == _SENDING:
                found.setdefault(int(stem), {"status": _SENDING})
            elif suffix == "json":  # the status only: memory stays flat whatever the answers' number and size
                found[int(stem)] = {"status": json.loads(path.read_text()).get("status")}
        return found

    def adopt(self, store: Any, digest: str, inputs: int) -> int:
        """Take over the outcomes an earlier try kept in the task state store (same inputs), then clear it.

        An input whose outcome is kept here already keeps it.  :return: how many were taken over.
        """
        meta = store.get(_STATE_KEY)
        if not isinstance(meta, Mapping) or meta.get("fingerprint") != digest:
            return 0
        have = set(self.load(inputs))
        taken = 0
        for index in range(inputs):
            value = store.get(f"{_STATE_KEY}:{index}")
            if index in have or not isinstance(value, Mapping):
                continue
            if value.get("status") == _SENDING:
                self.sending(index)
            else:
                self.save(dict(value))
            taken += 1
        store.clear()
        return taken

    def sending(self, index: int) -> None:
        (self._folder / f"{index}.{_SENDING}").write_text("")

    def forget(self, index: int) -> None:
        (self._folder / f"{index}.{_SENDING}").unlink(missing_ok=True)

    def save(self, outcome: dict[str, Any]) -> None:
        index = outcome["index"]
        (self._folder / f"{index}.json").write_text(json.dumps(outcome, default=str))
        (self._folder / f"{index}.{_SENDING}").unlink(missing_ok=True)

    def record(self, index: int) -> dict[str, Any] | None:
        path = self._folder / f"{index}.json"
        return json.loads(path.read_text()) if path.exists() else None


def _changed(task_id: str) -> CandelaInputError:
    return CandelaInputError(
        f"Task '{task_id}': its inputs changed since an earlier try of this task instance (other keys or "
        "prompts), so what that try answered cannot be matched to them. Restore the inputs, or pass "
        "on_changed_inputs='restart' to start the batch over (inputs already sent are sent again)."
    )


def state_folder(result_path: Any, ti: Any) -> Any:
    """Where task instance ``ti`` keeps its state: ``<result_path>.state/<dag>/<run>/<task>/<map index>``.

    Each iteration of a task-group loop (Airflow 3.4+) is a task instance of its own with the same map index, told
    apart by its region: its state goes one level down, ``.../<map index>/<region id>-<region index>``, so that an
    iteration resumes its own inputs, never another iteration's.
    """
    parts = [ti.dag_id, ti.run_id, ti.task_id, str(getattr(ti, "map_index", -1))]
    region_id = getattr(ti, "region_id", None)
    if region_id is not None and UUID(str(region_id)).int != 0:  # the nil UUID: no region
        parts.append(f"{region_id}-{getattr(ti, 'region_index', None)}")
    folder = result_path.parent / f"{result_path.name}.state"
    for part in parts:
        folder = folder / quote(str(part), safe="")
    return folder


def check_writable(result_path: Any, ti: Any, *, task_id: str) -> None:
    """Make sure the results file and the state beside it can be written (before any request).

    A folder is refused (the records go to one file); a file that does not exist yet is created and removed.

    :raises CandelaInputError: naming ``result_path``, the problem and the fix.
    """
    folder = state_folder(result_path, ti)
    try:
        if result_path.is_dir():
            raise CandelaInputError(
                f"Invalid `result_path` for task '{task_id}': {result_path} is a folder. Name the file the "
                f"records go to, e.g. '{str(result_path).rstrip('/')}/batch.jsonl'."
            )
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-check"
        probe.write_text("")
        probe.unlink()
        if not result_path.exists():
            result_path.write_text("")
            result_path.unlink()
    except CandelaInputError:
        raise
    except Exception as err:  # any storage backend's error: the location cannot be used
        raise CandelaInputError(
            f"Invalid `result_path` for task '{task_id}': {result_path} cannot be written ({type(err).__name__}: "
            f"{err}). Use a location this worker can write."
        ) from err


def open_state(
    context: Mapping[str, Any], result_path: Any, digest: str, *, inputs: int, restart: bool, task_id: str
) -> BatchState:
    """The state of this task instance's batch: beside ``result_path``, else the task state store, else none.

    With ``result_path``, the outcomes an earlier try without it kept in the task state store (e.g. one that
    failed because its records were too many for XCom) are taken over: a retry sends only what they lack.

    :raises CandelaInputError: the inputs changed since an earlier try (unless ``restart``).
    """
    store = context.get("task_state_store")
    if result_path is not None:
        beside = _BesideResults(state_folder(result_path, context["ti"]), digest, restart=restart, task_id=task_id)
        if store is not None and not restart:
            beside.adopt(store, digest, inputs)
        return beside
    if store is not None:
        return _TaskStateStore(store, digest, restart=restart, task_id=task_id)
    return _Memory()


# --------------------------------------------------------------------------------------------------
# progress


class Progress:
    """The batch's task log: a summary line at most every ``interval`` seconds, and at the end.

    ``12/100 answered: 11 succeeded, 1 failed; 4.1 per minute; about 21 min left (last: input 11 'k', 0.4 s)``
    """

    def __init__(self, total: int, log: Callable[..., Any], *, interval: float = 5.0, done: int = 0) -> None:
        self.total = total
        self.counts: Counter[str] = Counter()
        self._log = log
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._already = done
        self._lock = threading.Lock()

    @property
    def answered(self) -> int:
        return sum(self.counts.values())

    def add(self, outcome: Mapping[str, Any], seconds: float) -> None:
        """Count one input's outcome; write the summary line when ``interval`` has passed."""
        with self._lock:
            self.counts[outcome["status"]] += 1
            now = time.monotonic()
            if now - self._last_line < self._interval and self._already + self.answered < self.total:
                return
            self._last_line = now
            last = f"last: input {outcome['index']} {outcome['key']!r}, {outcome['status']}, {seconds:.1f} s"
            self._log("%s (%s)", self.summary(now), last)

    def summary(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        answered = self.answered
        done = self._already + answered
        counts = ", ".join(f"{self.counts[s]} {s}" for s in STATUSES if self.counts[s]) or "none yet"
        text = f"{done}/{self.total} answered: {counts}"
        if answered:
            rate = answered / elapsed * 60
            left = (self.total - done) / (answered / elapsed)
            text += f"; {rate:.1f} per minute"
            if done < self.total:
                text += f"; about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------------
# running


class _DropOut(Exception):
    """The worker's connection cannot go on (credentials, slot, its session replaced)."""

    def __init__(self, reason: str, requeue: BatchInput | None = None, lost: CandelaApiError | None = None) -> None:
        super().__init__(reason)
        self.requeue = requeue
        #: The error of a session another start replaced: it is not stopped (the running one is another's).
        self.lost = lost


#: Errors of a connection, not of an input: the worker drops out.
_CONNECTION_ERRORS = (CandelaAuthError, CandelaConnectionConfigError, CandelaSlotError)


@dataclass
class Worker:
    """One connection of a batch: its hook and how it gets a session to prompt.

    :param session: ``session(hook)`` is a context manager yielding the session to prompt: the DAG's
        running session, or one the worker starts (and stops when the block ends).
    """

    conn_id: str
    hook: CandelaHook
    session: Callable[[CandelaHook], Any]
    dropped: str | None = None
    #: The error it dropped out for; None also when its session was lost mid-run (a retry may find it back).
    cause: BaseException | None = None


def run_batch(
    workers: Sequence[Worker],
    pending: Sequence[BatchInput],
    *,
    send: Callable[[CandelaHook, ObjectId, BatchInput], dict[str, Any]],
    state: BatchState,
    progress: Progress,
    log: Any,
    on_outcome: Callable[[dict[str, Any]], None],
) -> None:
    """Send every pending input through the workers (one thread each when there are several).

    ``send(hook, session, item)`` returns the input's record (``succeeded`` or ``invalid_output``) or raises;
    the error sorts the input (``failed``, ``ambiguous``) or the worker (it drops out).

    :raises CandelaCancelledError: the task was killed (every worker stopped what it started).
    :raises CandelaError: every worker dropped out with inputs left (each one's reason named).
    """
    fatal: list[BaseException] = []
    relay = _MainThread()
    if len(workers) > 1:  # the task's state store and its log talk to Airflow from the task's main thread only
        state = relay.proxy(state)
        progress = relay.proxy(progress)
        on_outcome = relay.wrap(on_outcome)

    def keep(outcome: dict[str, Any], seconds: float) -> None:
        state.save(outcome)
        on_outcome(outcome)
        progress.add(outcome, seconds)

    def work(worker: Worker) -> None:
        try:
            _work(worker, todo, send=send, state=state, keep=keep)
        except _DropOut as drop:
            worker.dropped = str(drop)
            worker.cause = None if drop.lost is not None else drop.__cause__
            if drop.requeue is not None:
                state.forget(drop.requeue.index)
                todo.put_back(drop.requeue)
            log.warning("Connection %r drops out of the batch: %s", worker.conn_id, drop)
        except BaseException as exc:  # a kill, or a bug: the batch stops
            fatal.append(exc)
            todo.leave(worker.conn_id)
            for other in workers:
                if other is not worker:
                    other.hook.cancel(f"connection {worker.conn_id!r} of the batch failed: {exc}")
            return
        for item, error in todo.leave(worker.conn_id):  # refused by every connection still there
            keep(record(item, "failed", error=error), 0.0)

    if len(workers) == 1:
        todo = _Inputs(pending, [workers[0].conn_id])
        work(workers[0])
    else:
        for worker in workers:  # the connections are read here: Airflow 3 serves them to the task's main thread
            try:
                worker.hook.config  # noqa: B018
            except CandelaError as err:
                worker.dropped = str(err)
                worker.cause = err
                log.warning("Connection %r drops out of the batch: %s", worker.conn_id, err)
        live = [w for w in workers if w.dropped is None]
        todo = _Inputs(pending, [w.conn_id for w in live])
        # Each worker runs in a copy of the task's context: its spans are children of the task's span.
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work, w), name=f"candela-batch-{w.conn_id}")
            for w in live
        ]
        try:
            relay.serve(threads)
        except BaseException as exc:  # e.g. the task's timeout in this thread: stop the workers, wait, re-raise
            for worker in workers:
                worker.hook.cancel(f"the batch was interrupted ({type(exc).__name__})")
            relay.serve(threads, start=False)
            raise
    if fatal:
        cancelled = [exc for exc in fatal if isinstance(exc, CandelaCancelledError)]
        raise (cancelled or fatal)[0]
    left = todo.left()
    if left:
        reasons = "; ".join(f"{w.conn_id!r}: {w.dropped}" for w in workers if w.dropped)
        message = f"No connection is left to answer the batch's {left} remaining input(s): {reasons}. Fix the "
        # The prompt operators' rule: an error a retry cannot fix is an AirflowFailException.  The batch
        # fails fast only when every connection was refused so; any transient cause leaves it retryable.
        causes = [w.cause for w in workers]
        if all(isinstance(cause, AirflowFailException) for cause in causes):
            final = (
                CandelaRejectedError if any(isinstance(c, CandelaRejectedError) for c in causes) else CandelaInputError
            )
            raise final(message + "connections, then run the task again: no retry can change these answers")
        raise CandelaError(message + "connections (their answered inputs are kept) and retry the task")


class _Inputs:
    """The inputs left to send, shared by the workers; in a fan-out, a refused input is offered to the others.

    Candela refusing a prompt (a 4xx) carried nothing out, so the input may go to another connection.  Whether
    the refusal is the input's or the session's (e.g. stopped from outside: Candela has no call saying a
    session still runs) shows when another connection tries it: answered there, the connection that refused
    it drops out; refused by every connection still in the batch, it ends ``failed``.  Until its refused
    inputs are settled, a connection takes only inputs that others refused, so a dead session does not
    refuse the whole queue.  With one connection a refusal is the input's at once.
    """

    def __init__(self, pending: Sequence[BatchInput], live: Sequence[str]) -> None:
        self._changed = threading.Condition()
        self._fresh: deque[BatchInput] = deque(pending)
        #: Inputs some connection refused, waiting for another one.
        self._offered: deque[BatchInput] = deque()
        #: Inputs taken and not yet settled or put back: they may come back.
        self._out = 0
        self._live = set(live)
        #: Input index -> connection -> the error of its refusal.
        self._refusals: dict[int, dict[str, CandelaApiError]] = {}
        #: Connection -> the inputs it refused that are not settled yet.
        self._unsettled: dict[str, set[int]] = {}
        #: Connection -> why it drops out, and the refusal it drops out for.
        self._drop: dict[str, tuple[str, CandelaApiError]] = {}

    def left(self) -> int:
        """How many inputs no connection took (or took and put back)."""
        with self._changed:
            return len(self._fresh) + len(self._offered)

    def finished(self) -> bool:
        """Nothing left to take, and nothing taken that may come back."""
        with self._changed:
            return not (self._fresh or self._offered or self._out)

    def take(self, worker: Worker) -> BatchInput | None:
        """The next input for ``worker``; None when the batch has nothing left for it.

        Waits while the only inputs left are ones it refused, or while its refusals are tried elsewhere.

        :raises _DropOut: another connection answered an input this one refused.
        :raises CandelaCancelledError: the worker's hook was cancelled while it waited.
        """
        conn = worker.conn_id
        with self._changed:
            while True:
                if conn in self._drop:
                    reason, refusal = self._drop[conn]
                    raise _DropOut(reason, lost=refusal)
                for item in self._offered:
                    if conn not in self._refusals[item.index]:
                        self._offered.remove(item)
                        self._out += 1
                        return item
                if self._fresh and not self._unsettled.get(conn):
                    self._out += 1
                    return self._fresh.popleft()
                if not (self._fresh or self._offered or self._out):
                    return None
                why = worker.hook.cancelled
                if why is not None:
                    raise CandelaCancelledError(f"Connection {conn!r} stopped waiting for the batch's inputs: {why}")
                self._changed.wait(0.25)

    def answered(self, worker: Worker, item: BatchInput, outcome: Mapping[str, Any]) -> None:
        """``worker`` is done with ``item`` (``outcome``); when others refused it and it was answered, they drop out."""
        with self._changed:
            self._out -= 1
            refusals = self._refusals.pop(item.index, None)
            if refusals is not None:
                ran = outcome["status"] in ("succeeded", "invalid_output")  # Candela ran it on this session
                for conn, refusal in refusals.items():
                    self._unsettled.get(conn, set()).discard(item.index)
                    if ran:
                        self._drop.setdefault(
                            conn,
                            (
                                "its session refuses prompts that another connection answers (stopped from "
                                f"outside?): Candela refused input {item.index} {item.key!r}, which connection "
                                f"{worker.conn_id!r} answered ({refusal})",
                                refusal,
                            ),
                        )
            self._changed.notify_all()

    def refused(self, worker: Worker, item: BatchInput, error: CandelaApiError) -> str | None:
        """Candela refused ``item`` on ``worker``'s session (still there): None when offered to another
        connection, else the input's error (every connection still in the batch refused it)."""
        with self._changed:
            self._out -= 1
            refusals = self._refusals.setdefault(item.index, {})
            refusals[worker.conn_id] = error
            if self._live <= refusals.keys():
                return self._settle(item)
            self._offered.append(item)
            self._unsettled.setdefault(worker.conn_id, set()).add(item.index)
            self._changed.notify_all()
            return None

    def put_back(self, item: BatchInput) -> None:
        """``item`` was not carried out (its connection dropped out): the next connection takes it first."""
        with self._changed:
            self._out -= 1
            (self._offered if item.index in self._refusals else self._fresh).appendleft(item)
            self._changed.notify_all()

    def leave(self, conn: str) -> list[tuple[BatchInput, str]]:
        """``conn`` takes no more inputs: the offered ones every connection still there refused, with their error."""
        with self._changed:
            self._live.discard(conn)
            self._unsettled.pop(conn, None)
            failed = []
            if self._live:
                for item in list(self._offered):
                    if self._live <= self._refusals[item.index].keys():
                        self._offered.remove(item)
                        failed.append((item, self._settle(item)))
            self._changed.notify_all()
            return failed

    def _settle(self, item: BatchInput) -> str:
        """``item`` ends ``failed``: its error (the refusals' own when several connections refused it)."""
        refusals = self._refusals.pop(item.index)
        for conn in refusals:
            self._unsettled.get(conn, set()).discard(item.index)
        self._changed.notify_all()
        error = list(refusals.values())[-1]
        if len(refusals) == 1:
            return str(error)
        return f"{error} (refused by every connection of the batch: {', '.join(map(repr, refusals))})"


class _MainThread:
    """Calls made by the worker threads, carried out by the task's main thread (which waits for the workers)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.SimpleQueue()
        self._main = threading.get_ident()

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the main thread (at once when called there); its result or its exception."""
        if threading.get_ident() == self._main:
            return fn()
        box: list[Any] = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[1]

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.call(lambda: fn(*args, **kwargs))

    def proxy(self, target: Any) -> Any:
        """``target`` whose methods run in the main thread (its attributes read as they are)."""
        relay = self

        class Proxy:
            def __getattr__(self, name: str) -> Any:
                value = getattr(target, name)
                return relay.wrap(value) if callable(value) else value

        return Proxy()

    def serve(self, threads: Sequence[threading.Thread], *, start: bool = True) -> None:
        """Start ``threads`` (unless ``start=False``), then carry out their calls until every one has ended."""
        for thread in threads if start else ():
            thread.start()
        while any(thread.is_alive() for thread in threads) or not self._calls.empty():
            try:
                fn, box, done = self._calls.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                box.extend((None, fn()))
            except BaseException as exc:  # handed to the worker that asked
                box[:] = [exc]
            finally:
                done.set()


def _work(
    worker: Worker,
    todo: _Inputs,
    *,
    send: Callable[[CandelaHook, ObjectId, BatchInput], dict[str, Any]],
    state: BatchState,
    keep: Callable[[dict[str, Any], float], None],
) -> None:

    hook = worker.hook
    if todo.finished():
        return
    try:
        context = worker.session(hook)
        session = context.__enter__()
    except CandelaCancelledError:
        raise
    except (CandelaError, OSError) as err:
        raise _DropOut(f"it could not start its session: {err}") from err
    try:
        while (item := todo.take(worker)) is not None:
            state.sending(item.index)
            began = time.monotonic()
            try:
                outcome = send(hook, session, item)
            except CandelaCancelledError:
                raise
            except CandelaOutputError as err:
                outcome = record(item, "invalid_output", error=str(err))
            except (CandelaAmbiguousError, CandelaTimeoutError, CandelaResponseError) as err:
                outcome = record(item, "ambiguous", error=str(err))
            except _CONNECTION_ERRORS as err:
                raise _DropOut(str(err), requeue=item) from err
            except CandelaApiError as err:
                if not err.refused:
                    outcome = record(item, "failed", error=str(err))
                else:
                    gone = _session_gone(hook, err, session)
                    if gone is not None:  # the prompt was refused, not run: another connection may answer it
                        raise _DropOut(gone, requeue=item, lost=err) from err
                    error = todo.refused(worker, item, err)
                    if error is None:  # another connection tries it: nothing was carried out here
                        state.forget(item.index)
                        continue
                    outcome = record(item, "failed", error=error)
                    keep(outcome, time.monotonic() - began)
                    continue
            todo.answered(worker, item, outcome)
            keep(outcome, time.monotonic() - began)
    except BaseException as exc:
        passed = exc.lost if isinstance(exc, _DropOut) and exc.lost is not None else exc
        try:
            context.__exit__(type(passed), passed, passed.__traceback__)
        except BaseException:
            if not isinstance(exc, _DropOut):  # the session's own account of the failure (e.g. replaced) wins
                raise
        raise
    context.__exit__(None, None, None)


def _session_gone(hook: CandelaHook, error: CandelaApiError, session: ObjectId) -> str | None:
    """Why ``session`` takes no prompt any more (another start replaced it, its slot is gone or failed), or None.

    Asked after Candela refused a prompt: the refusal is the input's only when the session and its slot
    are still there.  A check that fails itself says nothing (None): the input keeps its refusal.
    """
    from airflow_provider_candela.hooks._lifecycle import explain_lost_session
    from airflow_provider_candela.models import SlotState

    explained = explain_lost_session(hook, error, session)
    if explained is not error:
        return str(explained)
    try:
        if not hook.user_has_slot():
            return f"its slot is gone (disposed), and its session with it: Candela refused a prompt ({error})"
        state = hook.get_slot_state()
    except CandelaError:
        return None
    if state != SlotState.HOST_READY:
        return f"its slot is {state.label}, its session gone: Candela refused a prompt ({error})"
    return None


@contextmanager
def running(session: ObjectId) -> Iterator[ObjectId]:
    """A worker's session that the DAG owns: prompted, never stopped by the batch."""
    yield session
