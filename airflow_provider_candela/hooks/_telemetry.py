"""Metrics and traces of Candela calls: Airflow's ``Stats``, and OpenTelemetry spans when Airflow traces.

Metrics (``candela.*``) go through Airflow's ``Stats``, so they reach wherever ``[metrics]`` sends them
(StatsD or OpenTelemetry metrics); with metrics off ``Stats`` is Airflow's no-op logger.  Spans are made
only when ``[traces] otel_on`` is set; they go to the process's tracer provider (Airflow's: this module
never installs one), and ``opentelemetry`` is imported only then.  Prompts and answers go on spans only
with ``[candela] capture_content = True``; no credential, token or header ever does.

Nothing here fails a call: a metrics or tracing backend that raises is ignored.  Imported when a hook or a
trigger is made, never at DAG parse.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, Final

__all__ = [
    "PROVIDER_NAME",
    "Telemetry",
    "count",
    "prompting",
    "route",
    "timing",
]

#: ``gen_ai.provider.name`` of Candela's spans.
PROVIDER_NAME: Final = "finbourne.candela"
_TRACER_NAME: Final = "airflow_provider_candela"


def route(method: str, path: str) -> str:
    """A call's ``route`` tag, e.g. ``POST/session/pipeline_submit`` (only characters Airflow's metric names allow)."""
    return f"{method}{path}"


def _stats() -> Any:
    from airflow.providers.common.compat.sdk import Stats

    return Stats


def count(name: str, tags: Mapping[str, str], n: int = 1) -> None:
    """Add ``n`` to the counter ``candela.<name>``."""
    with contextlib.suppress(Exception):
        _stats().incr(f"candela.{name}", count=n, tags=dict(tags))


def timing(name: str, seconds: float, tags: Mapping[str, str]) -> None:
    """Record ``seconds`` in the timer ``candela.<name>``."""
    with contextlib.suppress(Exception):
        _stats().timing(f"candela.{name}", timedelta(seconds=seconds), tags=dict(tags))


class Telemetry:
    """The tracing settings of one hook (read once, when the hook reads its connection), and its spans."""

    def __init__(self, tracer: Any = None, *, capture_content: bool = False) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self._identity: dict[str, Any] | None = None  # the task instance's, looked up at the first span
        self._client: Any = None  # opentelemetry's SpanKind.CLIENT, once imported

    def exchange(self, method: str, path: str, retries: int) -> Any:
        """The started (not current) span of one HTTP exchange, or None when tracing is off; the caller ends it.

        The hot path of every call: no context manager, no import.
        """
        if self.tracer is None:
            return None
        if self._identity is None:
            self._identity = _task_identity()
        attributes = {
            **self._identity,
            "http.request.method": method,
            "url.path": path,
            "candela.retry_count": retries,
        }
        return self.tracer.start_span(f"{method} {path}", kind=self._client, attributes=attributes)

    @classmethod
    def configured(cls) -> Telemetry:
        """From Airflow's configuration: a tracer when ``[traces] otel_on``, else none (nothing imported)."""
        from airflow.providers.common.compat.sdk import conf

        capture = conf.getboolean("candela", "capture_content", fallback=False)
        if not conf.getboolean("traces", "otel_on", fallback=False):
            return cls(None, capture_content=capture)
        try:
            from opentelemetry import trace

            from airflow_provider_candela import __version__

            telemetry = cls(trace.get_tracer(_TRACER_NAME, __version__), capture_content=capture)
            telemetry._client = trace.SpanKind.CLIENT
            return telemetry
        except Exception:  # tracing must never break a call
            return cls(None, capture_content=capture)

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
        """A CLIENT span ``name`` (the current span's child), stamped with the task instance; None when off.

        An exception leaving the block sets ``error.type`` and the error status, then propagates.
        """
        if self.tracer is None:
            yield None
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode, use_span  # imported: a dict lookup

        if self._identity is None:
            self._identity = _task_identity()  # a hook serves one task run (the triggerer's: none)
        stamped = {**self._identity, **{k: v for k, v in attributes.items() if v is not None}}
        current = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=stamped)
        try:
            with use_span(current, record_exception=False, set_status_on_exception=False):
                yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            current.end()


_IDENTITY: Final = (
    ("airflow.dag_id", "dag_id"),
    ("airflow.task_id", "task_id"),
    ("airflow.dag_run.run_id", "run_id"),
    ("airflow.task_instance.try_number", "try_number"),
    ("airflow.task_instance.map_index", "map_index"),
)


def _task_identity() -> dict[str, Any]:
    """The running task instance's identity, as common-ai stamps its spans (empty outside a task)."""
    try:
        from airflow.providers.common.compat.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # no task is running (a hook used in a script, the triggerer)
        return {}
    return {key: getattr(ti, field) for key, field in _IDENTITY if getattr(ti, field, None) is not None}


def _text(answer: Any) -> str:
    """An answer for a span: an agent's reply text, else the JSON of a pipeline's answer."""
    if isinstance(answer, Mapping) and isinstance(answer.get("response"), str):
        return str(answer["response"])
    if isinstance(answer, str):
        return answer
    return json.dumps(answer, default=str)


@contextlib.contextmanager
def prompting(
    telemetry: Telemetry,
    *,
    kind: str,
    app: Any,
    model: Any,
    session: Any,
    prompt: str,
) -> Iterator[dict[str, Any]]:
    """One prompt: the ``invoke_agent {app}`` span (GenAI conventions) and the ``candela.prompt`` timer.

    The block may put the answer's text under ``"answer"`` in the yielded dict (it goes on the span with
    ``capture_content`` only); the outcome tag is ``success`` or the error's class name.
    """
    app_id = getattr(app, "identifier", None)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.agent.name": app_id,
        "gen_ai.agent.id": None if app is None else f"{app.scope}/{app.identifier}",
        "gen_ai.agent.version": getattr(app, "version", None),
        "gen_ai.request.model": None if model is None else f"{model.scope}/{model.identifier}",
        "gen_ai.conversation.id": None if session is None else str(session),
        "candela.prompt.kind": kind,
    }
    if telemetry.capture_content:
        attributes["gen_ai.input.messages"] = prompt
    began = time.monotonic()
    outcome = "success"
    found: dict[str, Any] = {}
    try:
        with telemetry.span(f"invoke_agent {app_id}" if app_id else "invoke_agent", attributes) as current:
            yield found
            if current is not None and telemetry.capture_content and found.get("answer") is not None:
                current.set_attribute("gen_ai.output.messages", _text(found["answer"]))
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        timing("prompt", time.monotonic() - began, {"kind": kind, "outcome": outcome})
