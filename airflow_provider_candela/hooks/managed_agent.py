"""Candela agent apps as managed agents of the common-ai provider (``BaseManagedAgentHook``).

Through :class:`CandelaManagedAgentHook`, a Candela agent app becomes a tool of a common-ai agent
(``ManagedAgentToolset``) or a member of a ``FailoverManagedAgentClient``::

    from airflow.providers.common.ai.toolsets import ManagedAgentToolset
    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook

    analyst = CandelaManagedAgentHook("candela_default", model="default/my-model").agent("default/analyst:1.0.0")
    toolset = ManagedAgentToolset(analyst, tool_name="ask_fund_analyst", timeout=300)

Needs the provider's ``common-ai`` extra (``apache-airflow-providers-common-ai``); without it,
importing this module raises ``AirflowOptionalProviderFeatureException`` saying what to install.
No other module of the provider imports this one, so DAGs that do not use it parse as before.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Final

from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException

try:
    from airflow.providers.common.ai.exceptions import ManagedAgentInvocationError, ManagedAgentRejected
    from airflow.providers.common.ai.managed_agents.base import (
        BaseManagedAgentHook,
        ManagedAgentCapabilities,
        ManagedAgentRef,
        ManagedAgentRequest,
        ManagedAgentResponse,
    )
except ImportError as err:
    raise AirflowOptionalProviderFeatureException(
        "CandelaManagedAgentHook needs the common-ai provider: pip install 'airflow-provider-candela[common-ai]' "
        f"(apache-airflow-providers-common-ai>=1.0). The import failed with: {err}"
    ) from err

from airflow_provider_candela._validation import (
    coerce_name,
    coerce_object_id,
    coerce_positive_seconds,
    coerce_prompt,
    coerce_session,
    time_limit,
)
from airflow_provider_candela.exceptions import (
    CandelaApiError,
    CandelaCancelledError,
    CandelaInputError,
    CandelaRejectedError,
    CandelaSessionRunningError,
    CandelaSlotError,
    CandelaTimeoutError,
)
from airflow_provider_candela.hooks._lifecycle import own_session, start_cleanly
from airflow_provider_candela.hooks._telemetry import prompting
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.models import ObjectId, ObjectMetadata

__all__ = ["CandelaManagedAgentHook"]

#: The options a request's ``vendor_options`` may carry; anything else is refused.
VENDOR_OPTIONS: Final = ("model", "scope")

_CAPABILITIES: Final = ManagedAgentCapabilities(sessions=True, structured_output=True, usage=False, trace=True)

# Candela runs one session per user: invocations through one connection take turns, process-wide.
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _connection_lock(conn_id: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(conn_id, threading.Lock())


class CandelaManagedAgentHook(CandelaHook, BaseManagedAgentHook):  # type: ignore[misc, unused-ignore]
    """A Candela connection whose agent apps answer common-ai's managed-agent contract.

    The agent name is the agent app's id, ``"scope/identifier[:version]"``.  An invocation without
    ``session_id`` makes sure the user has a ready slot, starts a session of the app (stopping a
    session still running on the user's slot), streams the prompt's answer and stops the session,
    whatever happened.  With ``session_id`` (``"scope/identifier[:version]"``, or an identifier in
    scope ``default``), the prompt goes to that running session, which is left running.

    The answer: ``text`` is the agent's chat text, ``structured`` the list of its decoded ``result``
    events (or None), ``raw`` every event as ``{"event_type", "content"}``, ``trace_ref`` the
    session's id.  ``session_id`` is set only when the request gave one: a session started for one
    invocation is stopped, so it cannot be continued.

    Invocations through one connection id take turns within a process (Candela runs one session per
    user).  ``ManagedAgentRequest.timeout`` bounds the whole invocation, waiting for the turn
    included; ``vendor_options`` may set ``model`` and ``scope`` (of the session started), nothing else.

    :param candela_conn_id: the Airflow connection of type ``candela``.
    :param model: the model the agent runs with (``"scope/identifier[:version]"``); default: the
        connection's extra ``model``.
    :param slot_ready_timeout: seconds to wait for the user's slot to be ready when no ``timeout`` is given.
    :param timeout: HTTP timeout of each call (as for :class:`CandelaHook`), not of the invocation.
    :param max_retries: as for :class:`CandelaHook`.
    """

    agent_platform: ClassVar[str] = "finbourne.candela"

    def __init__(
        self,
        candela_conn_id: str = CandelaHook.default_conn_name,
        *,
        model: ObjectId | str | None = None,
        slot_ready_timeout: float = 600.0,
        timeout: float | tuple[float, float] | str | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(candela_conn_id, timeout=timeout, max_retries=max_retries)
        self.model = None if model is None else coerce_object_id(model, argument="model")
        self.slot_ready_timeout = coerce_positive_seconds(slot_ready_timeout, argument="slot_ready_timeout")
        self._invocation_hook: CandelaHook | None = None

    # ------------------------------------------------------------------------------------------
    # the contract

    def resolve_agent(self, agent: str) -> ManagedAgentRef:
        """The app id as a platform-qualified reference; no network call.

        :raises CandelaInputError: ``agent`` is not an app id.
        """
        app = coerce_object_id(agent, argument="agent")
        return ManagedAgentRef(platform=self.agent_platform, name=f"{app.scope}/{app.identifier}", version=app.version)

    def get_agent_capabilities(self, agent: str) -> ManagedAgentCapabilities:
        """The same for every Candela agent app: sessions, structured results, trace ids; no usage."""
        return _CAPABILITIES

    def invoke_agent(self, agent: str, request: ManagedAgentRequest) -> ManagedAgentResponse:
        """Prompt the agent app ``agent`` and return its whole answer.  Blocking.

        :raises ManagedAgentRejected: Candela refused the prompt itself (empty, too long, not text).
        :raises ManagedAgentInvocationError: a terminal problem: the connection or its credentials,
            an unknown app, model or slot type, a ``session_id`` that does not run, a refused option.
        :raises CandelaTimeoutError: the invocation did not end within ``request.timeout``.
        :raises CandelaError: transient failures (429, 5xx, lost connections, after the hook's
            retries; another session holding the user's slot), unchanged.
        """
        try:
            app = coerce_object_id(agent, argument="agent")
            options = _vendor_options(request.vendor_options)
            session = None if request.session_id is None else _session(request.session_id)
            timeout = None  # None: no limit (float("inf") too, see time_limit)
            if request.timeout is not None:
                timeout = time_limit(coerce_positive_seconds(request.timeout, argument="ManagedAgentRequest.timeout"))
        except CandelaInputError as exc:
            raise ManagedAgentInvocationError(str(exc)) from exc
        try:
            prompt = coerce_prompt(_prompt_text(request))
        except CandelaInputError as exc:
            raise ManagedAgentRejected(str(exc)) from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        lock = _connection_lock(self.candela_conn_id)
        if not lock.acquire(timeout=-1 if deadline is None else max(deadline - time.monotonic(), 0.0)):
            raise CandelaTimeoutError(
                f"The Candela agent {app} was not invoked within {timeout:g} s: other invocations through "
                f"connection {self.candela_conn_id!r} held its user's session all along (they take turns). "
                "Raise the timeout, or give parallel callers connections of different Candela users"
            )
        try:
            if session is not None:
                return self._prompt_running(app, session, prompt, deadline=deadline, timeout=timeout)
            model = self._model(options)
            return self._prompt_new(app, model, prompt, scope=options["scope"], deadline=deadline, timeout=timeout)
        finally:
            lock.release()

    # ------------------------------------------------------------------------------------------
    # invocations

    def _prompt_new(
        self,
        app: ObjectId,
        model: ObjectId,
        prompt: str,
        *,
        scope: str | None,
        deadline: float | None,
        timeout: float | None,
    ) -> ManagedAgentResponse:
        """Start a session of ``app``, prompt it, stop it (also after a failure or a timeout)."""
        owner = f"the Candela agent {app}"
        with self._bounded(deadline, timeout, f"The Candela agent {app}") as hook:

            def slot() -> None:
                slot_wait = self.slot_ready_timeout if deadline is None else max(deadline - time.monotonic(), 0.001)
                with _sorted_errors(app, prompting=False):
                    hook.ensure_slot(timeout=slot_wait)

            def start() -> ObjectMetadata:
                with _sorted_errors(app, prompting=False):
                    metadata = start_cleanly(
                        hook,
                        lambda: hook.start_session(app, model, scope=scope, if_session_running="stop"),
                        owner=owner,
                    )
                self.log.info("Started Candela session %s of agent %s with model %s.", metadata.obj_id, app, model)
                return metadata

            with (
                own_session(hook, app=app, kind="managed-agent", owner=owner, start=start, prepare=slot) as session,
                _sorted_errors(app, prompting=True),
            ):
                return self._answer(hook, session, prompt, session_id=None, app=app, model=model)

    def _prompt_running(
        self, app: ObjectId, session: ObjectId, prompt: str, *, deadline: float | None, timeout: float | None
    ) -> ManagedAgentResponse:
        """Prompt the running session ``session`` and leave it running."""
        with (
            self._bounded(deadline, timeout, f"The Candela agent {app} (session {session})") as hook,
            _sorted_errors(app, prompting=True, session=session),
        ):
            return self._answer(hook, session, prompt, session_id=str(session), app=app, model=None)

    def _answer(
        self,
        hook: CandelaHook,
        session: ObjectId,
        prompt: str,
        session_id: str | None,
        *,
        app: ObjectId,
        model: ObjectId | None,
    ) -> ManagedAgentResponse:
        with prompting(hook.telemetry, kind="agent", app=app, model=model, session=session, prompt=prompt) as seen:
            response = self._stream(hook, session, prompt, session_id)
            seen["answer"] = response.text
            return response

    def _stream(
        self, hook: CandelaHook, session: ObjectId, prompt: str, session_id: str | None
    ) -> ManagedAgentResponse:
        answer = hook.agent_answer(session, prompt, keep_events=True)
        return ManagedAgentResponse(
            text=answer.response,
            raw=answer.events,
            structured=answer.results or None,
            session_id=session_id,
            trace_ref=str(session),
        )

    @contextlib.contextmanager
    def _bounded(self, deadline: float | None, timeout: float | None, what: str) -> Iterator[CandelaHook]:
        """A hook whose calls are cancelled at ``deadline``; its cancellation raised as a timeout.

        The calls go through a hook of their own (kept for the next invocation unless it was
        cancelled: a cancelled hook stays cancelled), so ``cancel`` cuts a blocked read at once.
        """
        hook = self._invocation_hook
        if hook is None or hook.cancelled is not None:
            if hook is not None:
                hook.close()
            hook = self._invocation_hook = self._new_hook()
        timer = None
        if deadline is not None:
            reason = f"{what} did not answer within {timeout:g} s"
            timer = threading.Timer(max(deadline - time.monotonic(), 0.0), hook.cancel, args=(reason,))
            timer.daemon = True
            timer.start()
        try:
            yield hook
        except CandelaCancelledError as exc:
            if timer is None or hook.cancelled is None:
                raise
            raise CandelaTimeoutError(
                f"{hook.cancelled}: the invocation was abandoned. Raise the timeout of the tool (or of the "
                "request), or ask the agent something that takes less time"
            ) from exc
        finally:
            if timer is not None:
                timer.cancel()

    def _new_hook(self) -> CandelaHook:
        hook = CandelaHook(self.candela_conn_id, timeout=self._timeout_override, max_retries=self._max_retries_override)
        for name in ("retry_wait_base", "retry_wait_max", "retry_after_cap", "retry_deadline"):
            setattr(hook, name, getattr(self, name))
        return hook

    def close(self) -> None:
        """Close this hook and the hook its invocations use."""
        if self._invocation_hook is not None:
            self._invocation_hook.close()
            self._invocation_hook = None
        super().close()

    def _model(self, options: Mapping[str, Any]) -> ObjectId:
        """The model: ``vendor_options["model"]``, else the hook's ``model``, else the connection's extra."""
        try:
            if options.get("model") is not None:
                return coerce_object_id(options["model"], argument="vendor_options['model']")
            if self.model is not None:
                return self.model
            configured = self.config.model
            if configured:
                return coerce_object_id(configured, argument=f"extra 'model' of connection {self.candela_conn_id!r}")
        except CandelaInputError as exc:
            raise ManagedAgentInvocationError(str(exc)) from exc
        raise ManagedAgentInvocationError(
            f"No model to run the Candela agent with: pass model='scope/identifier[:version]' to "
            f"CandelaManagedAgentHook, or set the extra 'model' of connection {self.candela_conn_id!r}"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> CandelaManagedAgentHook:
        """A new hook with the same arguments (a task's deep copy must not copy locks and sockets)."""
        copy = type(self)(
            self.candela_conn_id,
            model=self.model,
            slot_ready_timeout=self.slot_ready_timeout,
            timeout=self._timeout_override,
            max_retries=self._max_retries_override,
        )
        memo[id(self)] = copy
        return copy


# ----------------------------------------------------------------------------------------------
# request parts and error sorting


def _prompt_text(request: ManagedAgentRequest) -> Any:
    """The prompt, or the text of a message list holding a single user message."""
    if request.prompt is not None:
        return request.prompt
    messages = list(request.messages or [])
    if len(messages) == 1 and messages[0].get("role") == "user":
        content = messages[0].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
            return "".join(str(part.get("text", "")) for part in content)
    raise ManagedAgentInvocationError(
        "A Candela agent takes one prompt: send `prompt`, or `messages` holding one user message of text. "
        "To continue a conversation, send its `session_id` with the next prompt"
    )


def _vendor_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(VENDOR_OPTIONS))
    if unknown:
        raise CandelaInputError(
            f"vendor_options {unknown} are not accepted by a Candela agent (allowed: {', '.join(VENDOR_OPTIONS)}); "
            "the app and the connection are fixed by hook.agent(...) and cannot be changed per request"
        )
    options = dict(options)
    options["scope"] = coerce_name(options.get("scope"), kind="scope", argument="vendor_options['scope']")
    return options


def _session(session_id: str) -> ObjectId:
    if isinstance(session_id, str) and "/" in session_id:
        return coerce_object_id(session_id, argument="session_id")
    return coerce_session(None, session_id=session_id)


@contextlib.contextmanager
def _sorted_errors(app: ObjectId, *, prompting: bool, session: ObjectId | None = None) -> Iterator[None]:
    """Raise Candela's failures as the contract sorts them; transient ones pass unchanged.

    Rejected: the prompt call refused the prompt (413, 422).  Terminal: credentials and connection,
    any other 4xx answer (unknown app, model or slot type, a session that is not running), a slot that
    failed.  Anything else (429, 5xx, lost connections, timeouts, another session holding the slot) is
    transient.
    """
    try:
        yield
    except (CandelaSessionRunningError, CandelaTimeoutError, CandelaCancelledError):
        raise
    except CandelaApiError as exc:
        if not isinstance(exc, CandelaRejectedError):
            raise
        status = exc.status
        if prompting and status in (413, 422):
            raise ManagedAgentRejected(str(exc)) from exc
        advice = ""
        if session is not None and status in (400, 404):
            advice = (
                f" (the session_id {session} must name a session of {app} running on the connection's Candela user)"
            )
        raise ManagedAgentInvocationError(f"{exc}{advice}") from exc
    except (CandelaInputError, CandelaSlotError) as exc:
        raise ManagedAgentInvocationError(str(exc)) from exc
