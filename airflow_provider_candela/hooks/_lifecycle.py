"""The life of a session a task prompts: one it starts, uses and stops, or a running one it uses.

Plain functions over a :class:`~airflow_provider_candela.hooks.candela.CandelaHook`, the one lifecycle of the
start operators, the prompt operators and decorators, the batch engine and the managed agent, so that each
rule is written once: a start Candela refused started nothing; any other failed start may have started a
session (even after we stopped waiting), which is stopped, also when Candela carries it out late; a session
of the caller's own is stopped when its work ends (:func:`own_session`), and a failed stop never turns an
answer that arrived into a failure; a session another start replaced is not stopped (it is no longer ours)
and the error says what happened; a running session someone else owns is left running, unless the prompt
to it was abandoned by a kill or a timeout (:func:`running_session`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from airflow_provider_candela.exceptions import CandelaApiError, CandelaError

if TYPE_CHECKING:
    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.models import ObjectId, ObjectMetadata

__all__ = [
    "explain_lost_session",
    "nothing_started",
    "own_session",
    "owned_session",
    "running_session",
    "start_cleanly",
]


def nothing_started(error: BaseException) -> bool:
    """Whether a failed start certainly started nothing: Candela answered it with a 4xx (it refused it)."""
    return isinstance(error, CandelaApiError) and error.refused


def start_cleanly(hook: CandelaHook, start: Callable[[], ObjectMetadata], *, owner: str) -> ObjectMetadata:
    """``start()``; when it fails other than by Candela's refusal, stop what it may have started, then re-raise.

    The stop is :meth:`~airflow_provider_candela.hooks.candela.CandelaHook.stop_session_best_effort`: it also
    runs after a kill or a timeout (the hook cancelled), and catches a start Candela carries out late.

    :param owner: who starts, for the log (e.g. ``"task 'start'"``).
    """
    try:
        return start()
    except BaseException as exc:
        if not nothing_started(exc):
            hook.stop_session_best_effort(f"the start by {owner} did not complete")
        raise


@contextlib.contextmanager
def owned_session(hook: CandelaHook, session: ObjectMetadata, *, owner: str) -> Iterator[ObjectId]:
    """The block's use of ``session`` (just started by ``owner``, e.g. with :func:`start_cleanly`); stopped after.

    The stop is best effort: when the block succeeded (e.g. a prompt's answer arrived), a failed stop is a
    warning, never an error, so a retry of the task does not send the prompt again.  When the block failed
    because another start replaced the session (Candela runs one session per user), the session is not
    stopped (the one running is another's) and the error says so (:func:`explain_lost_session`).
    """
    try:
        yield session.obj_id
    except CandelaApiError as exc:
        explained = explain_lost_session(hook, exc, session)
        if explained is exc:
            hook.stop_session_best_effort(f"{owner} started it; its work failed")
            raise
        raise explained from exc
    except BaseException:
        hook.stop_session_best_effort(f"{owner} started it; its work did not complete")
        raise
    hook.stop_session_best_effort(f"{owner} started it; its work is done")


def explain_lost_session(
    hook: CandelaHook, error: CandelaApiError, session: ObjectMetadata | ObjectId
) -> CandelaApiError:
    """``error`` amended when the user has started a newer session than ``session`` (which it replaced); else ``error``.

    Two tasks (or mapped task instances) on one Candela user at the same time stop each other's sessions,
    and the failure then reads like a network fault: this says what happened and what to do.
    """
    newer = hook.replaced(session)
    if newer is None:
        return error
    mine = getattr(session, "obj_id", session)
    return error.amended(
        f"Session {mine} is no longer running: session {newer.obj_id} of the same Candela user "
        f"({newer.created_by}), started at {newer.created_at.isoformat()}, replaced it (Candela runs one session "
        f"per user, and something else started one through connection {hook.candela_conn_id!r} meanwhile). Give "
        "each parallel stream of work its own Candela user (a connection each), or let the tasks take turns "
        "(e.g. max_active_tis_per_dag=1 on a mapped task)"
    )


@contextlib.contextmanager
def own_session(
    hook: CandelaHook,
    *,
    app: ObjectId,
    kind: str,
    owner: str,
    start: Callable[[], ObjectMetadata],
    prepare: Callable[[], object] | None = None,
) -> Iterator[ObjectId]:
    """A session of the caller's own for the block: ``prepare()`` (the slot), ``start()``, the block, the stop.

    All of it is one ``candela.session {app}`` span.  ``start`` must stop what a failed start may have
    started (:func:`start_cleanly`); the session it started is used by the block and stopped afterwards
    (:func:`owned_session`).  ``prepare`` runs first and may defer the task: nothing is started then.

    :param kind: the span's ``candela.session.kind`` (``one-task``, ``batch``, ``managed-agent``).
    :param owner: who starts, for the log (e.g. ``"task 'ask'"``).
    """
    lifecycle = {"gen_ai.agent.id": f"{app.scope}/{app.identifier}", "candela.session.kind": kind}
    with hook.telemetry.span(f"candela.session {app.identifier}", lifecycle):
        if prepare is not None:
            prepare()
        metadata = start()
        with owned_session(hook, metadata, owner=owner) as session:
            yield session


@contextlib.contextmanager
def running_session(hook: CandelaHook, session: ObjectId, *, owner: str) -> Iterator[ObjectId]:
    """A running session someone else owns (the DAG's), for the block: left running however the block ends.

    Unless the block was abandoned mid-prompt (a kill, a timeout, anything but Candela's own answer): then
    the session is stopped, or Candela would go on working on a prompt nobody waits for.  A failure because
    another start replaced the session says so (:func:`explain_lost_session`).
    """
    try:
        yield session
    except CandelaApiError as err:
        explained = explain_lost_session(hook, err, session)
        if explained is err:
            raise
        raise explained from err
    except BaseException as exc:
        if hook.cancelled is not None or not isinstance(exc, CandelaError):
            hook.stop_session_best_effort(f"{owner} was stopped during its prompt")
        raise
