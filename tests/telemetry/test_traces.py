"""OpenTelemetry spans of real Candela calls (the emulator over HTTP), caught by an in-memory exporter.

The test installs an SDK tracer provider in this process (the provider is not the hook's to install: it
reuses the process's, as it would Airflow's) and turns ``[traces] otel_on`` on through the environment.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import operator
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.sessions import (
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"
_ids = itertools.count()
_EXPORTER = InMemorySpanExporter()

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)  # once per process: later calls are refused by OpenTelemetry


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ReadableSpan]]:
    """The spans finished during the test (tracing on through ``[traces] otel_on``)."""
    monkeypatch.setenv("AIRFLOW__TRACES__OTEL_ON", "True")
    _EXPORTER.clear()
    found: list[ReadableSpan] = []
    yield found


def _finished(prefix: str = "") -> list[ReadableSpan]:
    return [s for s in _EXPORTER.get_finished_spans() if s.name.startswith(prefix)]


def _one(name: str) -> ReadableSpan:
    matching = [s for s in _EXPORTER.get_finished_spans() if s.name == name]
    assert len(matching) == 1, [s.name for s in _EXPORTER.get_finished_spans()]
    return matching[0]


def _run(op: type[Any], **kwargs: Any) -> Any:
    with DAG(f"traces_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        op(task_id="ask", **kwargs)
    return run_dag(dag)


def test_a_one_task_pipeline_prompt_is_a_session_span_around_an_invoke_agent_span(
    candela: Any, spans: list[ReadableSpan]
) -> None:
    dr = _run(CandelaSubmitPipelinePromptOperator, app=PIPELINE, model=MODEL, prompt="Count my words please")
    assert dr.states == {"ask": "success"}
    lifecycle = _one("candela.session demo-pipeline")
    prompt = _one("invoke_agent demo-pipeline")
    exchange = _one("POST /session/pipeline_submit")
    start = _one("POST /session")
    assert prompt.parent is not None and prompt.parent.span_id == lifecycle.context.span_id
    assert exchange.parent is not None and exchange.parent.span_id == prompt.context.span_id
    assert start.parent is not None and start.parent.span_id == lifecycle.context.span_id
    attributes = dict(prompt.attributes or {})
    assert prompt.kind == trace.SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.provider.name"] == "finbourne.candela"
    assert attributes["gen_ai.agent.name"] == "demo-pipeline"
    assert attributes["gen_ai.agent.id"] == "default/demo-pipeline"
    assert attributes["gen_ai.agent.version"] == "1.0.0"
    assert attributes["gen_ai.request.model"] == "default/demo-model"
    assert str(attributes["gen_ai.conversation.id"]).startswith("default/session-")
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes, "no content"
    http = dict(exchange.attributes or {})
    assert http["http.request.method"] == "POST"
    assert http["url.path"] == "/session/pipeline_submit"
    assert http["http.response.status_code"] == 200
    assert http["candela.retry_count"] == 0
    for span in (lifecycle, prompt, exchange):
        stamped = dict(span.attributes or {})
        assert stamped["airflow.dag_id"] == dr.dag_run.dag_id
        assert stamped["airflow.task_id"] == "ask"
        assert stamped["airflow.dag_run.run_id"] == dr.dag_run.run_id
        assert stamped["airflow.task_instance.try_number"] == 1
        assert stamped["airflow.task_instance.map_index"] == -1


def test_an_agent_prompt_span_and_content_with_the_opt_in(
    candela: Any, spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CANDELA__CAPTURE_CONTENT", "True")
    dr = _run(CandelaSubmitAgentPromptOperator, app=AGENT, model=MODEL, prompt="Summarise the fund's week")
    assert dr.states == {"ask": "success"}
    prompt = dict(_one("invoke_agent demo-agent").attributes or {})
    assert prompt["gen_ai.input.messages"] == "Summarise the fund's week"
    assert str(prompt["gen_ai.output.messages"]).startswith("You asked: "), "the agent's reply text"
    assert _one("POST /session/agent_submit").parent is not None


def test_a_refused_prompt_is_an_error_span(candela: Any, spans: list[ReadableSpan]) -> None:
    candela.add_fault(match="POST /session/pipeline_submit", status=422, body={"detail": "bad prompt"})
    dr = _run(CandelaSubmitPipelinePromptOperator, app=PIPELINE, model=MODEL, prompt="Count")
    assert dr.states == {"ask": "failed"}
    prompt = _one("invoke_agent demo-pipeline")
    assert prompt.status.status_code == trace.StatusCode.ERROR
    assert dict(prompt.attributes or {})["error.type"] == "CandelaRejectedError"
    assert dict(_one("POST /session/pipeline_submit").attributes or {})["http.response.status_code"] == 422


def test_a_retried_call_has_a_span_per_attempt_with_its_retry_count(candela: Any, spans: list[ReadableSpan]) -> None:
    candela.add_fault(match="GET /slot/user_has_slot", status=429, retry_after="0")
    with CandelaHook() as hook:
        hook.user_has_slot()
    attempts = _finished("GET /slot/user_has_slot")
    assert [
        (dict(s.attributes or {})["http.response.status_code"], dict(s.attributes or {})["candela.retry_count"])
        for s in sorted(attempts, key=lambda s: s.start_time or 0)
    ] == [(429, 0), (200, 1)]


def test_no_secret_on_any_span(candela: Any, spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CANDELA__CAPTURE_CONTENT", "True")  # even with content on
    _run(CandelaSubmitAgentPromptOperator, app=AGENT, model=MODEL, prompt="Hello")
    _run(CandelaSubmitPipelinePromptOperator, app=PIPELINE, model=MODEL, prompt="Hello")
    connection = json.loads(candela.connection_json())
    secrets = [
        connection["password"],
        connection["extra"]["client_secret"],
        *functools.reduce(operator.iadd, candela.tokens().values(), []),
    ]
    exported = json.dumps([span.to_json() for span in _EXPORTER.get_finished_spans()])
    assert _EXPORTER.get_finished_spans()
    leaked = [secret for secret in secrets if secret and secret in exported]
    assert leaked == []


def test_a_managed_agent_invocation_is_a_session_span_around_its_prompt(
    candela: Any, spans: list[ReadableSpan]
) -> None:
    pytest.importorskip("airflow.providers.common.ai.managed_agents.base", reason="the common-ai extra")
    from airflow.providers.common.ai.managed_agents.base import ManagedAgentRequest

    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook

    hook = CandelaManagedAgentHook("candela_default", model=MODEL)
    try:
        assert hook.agent(AGENT).invoke(ManagedAgentRequest(prompt="Hello")).text.startswith("You asked: Hello")
    finally:
        hook.close()
    lifecycle = _one("candela.session demo-agent")
    prompt = _one("invoke_agent demo-agent")
    assert prompt.parent is not None and prompt.parent.span_id == lifecycle.context.span_id
    assert dict(lifecycle.attributes or {})["candela.session.kind"] == "managed-agent"
    assert dict(prompt.attributes or {})["gen_ai.request.model"] == "default/demo-model"


def test_a_fan_out_s_spans_are_children_of_the_task_s_span(
    candela: Any, spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_candela.operators.batch import CandelaPipelineBatchOperator

    base = json.loads(candela.connection_json())
    for n in (1, 2):
        candela.add_user(f"u{n}", f"pw-{n}")
        monkeypatch.setenv(f"AIRFLOW_CONN_CANDELA_U{n}", json.dumps({**base, "login": f"u{n}", "password": f"pw-{n}"}))
    with DAG(f"traces_{next(_ids)}", schedule=None, start_date=START, catchup=False) as dag:
        CandelaPipelineBatchOperator(
            task_id="b",
            app=PIPELINE,
            model=MODEL,
            prompts=[f"prompt {n}" for n in range(6)],
            candela_conn_ids=["candela_u1", "candela_u2"],
        )
    # dag.test() runs the task in this thread; the span stands for the one Airflow's task runner opens
    with trace.get_tracer("tests").start_as_current_span("worker.b") as task_span:
        dr = run_dag(dag)
    assert dr.states == {"b": "success"}
    prompts = _finished("invoke_agent")
    assert len(prompts) == 6
    task = task_span.get_span_context()
    sessions = {s.context.span_id: s for s in _finished("candela.session")}
    assert len(sessions) == 2, "a session span per connection"
    assert all(s.parent is not None and s.parent.span_id == task.span_id for s in sessions.values())
    assert all(p.parent is not None and p.parent.span_id in sessions for p in prompts), "each prompt in its session"
    by_id = {p.context.span_id for p in prompts}
    exchanges = _finished("POST /session/pipeline_submit")
    assert len(exchanges) == 6 and all(e.parent is not None and e.parent.span_id in by_id for e in exchanges)
    ours = [s for s in _EXPORTER.get_finished_spans() if s.instrumentation_scope.name == "airflow_provider_candela"]
    assert len(ours) > 12 and {s.context.trace_id for s in ours} == {task.trace_id}, "starts, stops, token grants too"
    users = {dict(p.attributes or {})["airflow.task_id"] for p in prompts}
    assert users == {"b"}, "stamped with the task instance in the worker threads too"
