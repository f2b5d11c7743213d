"""Operators run as real Airflow tasks (``dag.test()``) against the Candela emulator.

Argument validation and the agent transcript are also tested directly: they need no server.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.exceptions import CandelaCancelledError, CandelaInputError
from airflow_provider_candela.models import AgentAnswer, ObjectId
from airflow_provider_candela.operators.sessions import (
    AgentTranscript,
    CandelaCleanupSessionsOperator,
    CandelaDeleteSessionOperator,
    CandelaStartDevSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.testing import run_dag, wait_until

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline:1.0.0"
AGENT = "default/demo-agent"
MODEL = {"scope": "default", "identifier": "demo-model"}
CIRCUIT = {"first": "answer", "nodes": {"answer": {"type": "response", "node_id": "answer", "template": "hi"}}}
DIRECTIVE = {"identity": "an analyst", "purpose": "summarise", "restriction": ["be brief"]}


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, **kwargs)


def _running(candela: Any) -> dict[str, Any] | None:
    running: dict[str, Any] | None = candela.stats()["running_sessions"].get(candela.username)
    return running


def _obj_id(metadata: dict[str, Any]) -> dict[str, Any]:
    return dict(metadata["obj_id"])


# ------------------------------------------------------------------------------------------------
# construction-time validation


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CandelaStartSessionOperator(task_id="t", app="default/", model=MODEL), "Invalid `app` for task 't'"),
        (lambda: CandelaStartSessionOperator(task_id="t", app=PIPELINE, model=42), "Invalid `model` for task 't'"),
        (
            lambda: CandelaStartSessionOperator(task_id="t", app=PIPELINE, model=MODEL, slot_ready_timeout=0),
            "slot_ready_timeout",
        ),
        (
            lambda: CandelaStartDevSessionOperator(task_id="t", model=MODEL, circuit={"nodes": {}}, directive={}),
            "Invalid `circuit` for task 't'",
        ),
        (lambda: CandelaSubmitPipelinePromptOperator(task_id="t", prompt="hi"), "needs a session"),
        (
            lambda: CandelaSubmitPipelinePromptOperator(task_id="t", prompt=" ", session_id="s1"),
            "Invalid `prompt` for task 't': it is empty",
        ),
        (
            lambda: CandelaSubmitAgentPromptOperator(task_id="t", prompt="hi", session="default/s1", session_id="s1"),
            "both `session` and `session_id`",
        ),
        (lambda: CandelaDeleteSessionOperator(task_id="t"), "has nothing to delete"),
        (lambda: CandelaCleanupSessionsOperator(task_id="t"), "has no cleanup filter"),
        (lambda: CandelaCleanupSessionsOperator(task_id="t", older_than="soon"), "Invalid `older_than`"),
        (lambda: CandelaCleanupSessionsOperator(task_id="t", scope="a b"), "Invalid `scope` for task 't'"),
        (lambda: CandelaStopSessionOperator(task_id="t", session="nope"), "Invalid `session` for task 't'"),
    ],
)
def test_bad_arguments_fail_at_dag_parse_time(build: Any, message: str) -> None:
    with _dag("validation"), pytest.raises(CandelaInputError, match=re.escape(message)):
        build()


def test_templated_arguments_are_checked_at_execute_not_at_parse_time() -> None:
    with _dag("templated"):
        start = CandelaStartSessionOperator(task_id="start", app="{{ params.app }}", model="{{ params.model }}")
        prompt = CandelaSubmitAgentPromptOperator(task_id="p", session=start.output, prompt="{{ params.prompt }}")
        cleanup = CandelaCleanupSessionsOperator(task_id="d", older_than="{{ params.days }}d")
    assert start.app == "{{ params.app }}"
    assert set(prompt.template_fields) >= {
        "candela_conn_id",
        "session",
        "session_id",
        "scope",
        "prompt",
        "app",
        "model",
    }
    assert prompt.template_fields_renderers["session"] == "json"
    assert "older_than" in cleanup.template_fields
    with pytest.raises(CandelaInputError, match=r"Invalid `app` for task 'start'.*got 'default/'"):
        start.app = "default/"
        start.execute(context={})


@pytest.mark.parametrize(
    "session",
    [
        ObjectId(scope="s", identifier="i", version="1.0.0"),
        {"scope": "s", "identifier": "i", "version": "1.0.0"},
        {"obj_id": {"scope": "s", "identifier": "i", "version": "1.0.0"}, "domain": "d", "created_by": "u"},
        "s/i:1.0.0",
        '{"obj_id": {"scope": "s", "identifier": "i", "version": "1.0.0"}}',
        "{'obj_id': {'scope': 's', 'identifier': 'i', 'version': '1.0.0'}, 'created_at': '2024-01-01'}",
    ],
)
def test_every_session_form_is_accepted(session: Any) -> None:
    from airflow_provider_candela._validation import coerce_session

    oid = coerce_session(session, session_id=None, scope=None, task_id="t")
    assert (oid.scope, oid.identifier, oid.version) == ("s", "i", "1.0.0")


# ------------------------------------------------------------------------------------------------
# agent transcript (what the task log shows)


def test_transcript_joins_chat_fragments_into_lines_and_labels_other_events() -> None:
    lines: list[str] = []
    transcript = AgentTranscript(lambda fmt, line: lines.append(line), soft_limit=30, hard_limit=60)
    answer = AgentAnswer()  # what hook.agent_answer sums up from the same events
    events = [("user", "Show the table")]
    events += [("chat", fragment) for fragment in ["Here", " is", " the", " summary.", " Line", " two\nand", " three"]]
    events += [
        ("info", "querying\nthe warehouse"),
        ("result", '{"content_type": "table", "content": {"data": "a,b\\n1,2\\n3,4\\n5,6\\n"}}'),
        ("chat", "x" * 70 + " tail"),
    ]
    for event_type, content in events:
        answer.add(event_type, content)
        transcript.add(event_type, content)
    transcript.flush()
    assert lines == [
        "[user] Show the table",
        "Here is the summary. Line two",
        "and three",
        "[info] querying",
        "[info] the warehouse",
        "[result] table (3 rows)",
        "x" * 60,
        "x" * 10 + " tail",
    ]
    summary = answer.summary({"scope": "s", "identifier": "i", "version": None})
    assert summary["response"] == "Here is the summary. Line two\nand three" + "x" * 70 + " tail"
    assert summary["results"] == [{"content_type": "table", "content": {"data": "a,b\n1,2\n3,4\n5,6\n"}}]
    assert summary["event_counts"] == {"user": 1, "chat": 8, "info": 1, "result": 1}
    assert "events" not in summary


def test_transcript_flushes_long_chat_at_a_sentence_end() -> None:
    lines: list[str] = []
    transcript = AgentTranscript(lambda fmt, line: lines.append(line), soft_limit=40)
    text = "The first sentence is here. The second one is a bit longer than that. Tail"
    for word in text.split(" "):
        transcript.add("chat", word + " ")
    # Each line is cut at the last sentence end once it is 40 characters long.
    assert lines == ["The first sentence is here.", "The second one is a bit longer than that."]
    transcript.flush()
    assert lines[-1] == "Tail"


# ------------------------------------------------------------------------------------------------
# real task runs


@pytest.mark.usefixtures("airflow_db")
def test_start_dev_session_then_stop_and_delete(candela: Any) -> None:
    with _dag("op_dev_session") as dag:
        start = CandelaStartDevSessionOperator(
            task_id="start", model="default/demo-model", circuit=CIRCUIT, directive=DIRECTIVE, scope="dev-scope"
        )
        prompt = CandelaSubmitAgentPromptOperator(
            task_id="prompt",
            session=start.output,
            prompt="Give me a table of {{ params.what }}",
            params={"what": "prices"},
            return_events=True,
        )
        stop = CandelaStopSessionOperator(task_id="stop", session=start.output)
        delete = CandelaDeleteSessionOperator(task_id="delete", session=start.output)
        start >> prompt >> stop.as_teardown(setups=start) >> delete

    dr = run_dag(dag)
    assert dr.states == {"start": "success", "prompt": "success", "stop": "success", "delete": "success"}
    metadata = dr.xcom("start")
    assert metadata["obj_id"]["scope"] == "dev-scope"
    assert metadata["created_by"] == candela.username
    assert set(metadata) >= {"obj_id", "domain", "created_by", "created_at"}

    answer = dr.xcom("prompt")
    assert answer["session"] == _obj_id(metadata)
    assert answer["events"][0] == {"event_type": "user", "content": "Give me a table of prices"}
    assert answer["event_counts"]["result"] == 1
    assert answer["results"][0]["content_type"] == "table"
    assert answer["response"].startswith("You asked:")

    assert dr.xcom("delete") == [metadata]
    stats = candela.stats()
    assert stats["running_sessions"].get(candela.username) is None
    assert stats["sessions_stored"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_start_leaves_exactly_one_running_session_after_an_ambiguous_failure(candela: Any) -> None:
    # The first start is applied by the server but its answer is lost; the task is also retried.
    candela.add_fault(match="POST /session", status=503, after=True, count=1)
    with _dag("op_start_retry") as dag:
        CandelaStartSessionOperator(
            task_id="start", app=PIPELINE, model="default/demo-model", retries=1, retry_delay=dt.timedelta(0)
        )
    dr = run_dag(dag)
    assert dr.states == {"start": "success"}
    metadata = dr.xcom("start")
    assert _running(candela) == _obj_id(metadata)
    stats = candela.stats()
    assert stats["sessions_started"] == 1, "the lost start was reconciled, not repeated"
    assert candela.request_count("GET /session/stop") == 0, "nothing needed stopping"


@pytest.mark.usefixtures("airflow_db")
def test_a_retried_start_stops_the_session_of_the_earlier_try(candela: Any) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:  # an earlier try started this one, then the worker died
        hook.ensure_slot(timeout=10)
        earlier = hook.start_session(PIPELINE, "default/demo-model")
    with _dag("op_start_after_crash") as dag:
        CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)
    dr = run_dag(dag)
    metadata = dr.xcom("start")
    assert _obj_id(metadata) != earlier.obj_id.model_dump(mode="json")
    assert _running(candela) == _obj_id(metadata)
    assert candela.stats()["sessions_started"] == 2


@pytest.mark.usefixtures("airflow_db")
def test_pipeline_prompt_by_session_id_and_templated_xcom_string(candela: Any) -> None:
    with _dag("op_pipeline") as dag:
        start = CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL, scope="team-a")
        by_id = CandelaSubmitPipelinePromptOperator(
            task_id="by_id",
            session_id="{{ ti.xcom_pull('start')['obj_id']['identifier'] }}",
            scope="team-a",
            prompt="Summarise {{ params.topic }}",
            params={"topic": "Q3 revenue"},
        )
        # Without render_template_as_native_obj, a pulled dict renders as its Python repr.
        by_text = CandelaSubmitPipelinePromptOperator(
            task_id="by_text", session="{{ ti.xcom_pull('start') }}", prompt="Again"
        )
        stop = CandelaStopSessionOperator(task_id="stop")
        start >> by_id >> by_text >> stop
    dr = run_dag(dag)
    assert dr.states == {"start": "success", "by_id": "success", "by_text": "success", "stop": "success"}
    answer = dr.xcom("by_id")
    assert answer["metadata"]["request_id"]
    assert "result" in answer
    assert dr.xcom("by_text")["metadata"]["request_id"] != answer["metadata"]["request_id"]
    assert _running(candela) is None
    assert candela.request_count("POST /session/pipeline_submit", "200") == 2


@pytest.mark.usefixtures("airflow_db")
def test_templated_argument_errors_name_the_task_at_execute(candela: Any) -> None:
    with _dag("op_bad_template") as dag:
        CandelaSubmitPipelinePromptOperator(task_id="bad", session="{{ params.s }}", prompt="hi", params={"s": "x"})
    dr = run_dag(dag)
    assert dr.states == {"bad": "failed"}
    assert candela.stats()["requests_total"] == 0  # rejected before any HTTP call


@pytest.mark.usefixtures("airflow_db")
def test_stop_is_idempotent_and_can_dispose_of_the_slot(candela: Any) -> None:
    with _dag("op_stop") as dag:
        first = CandelaStopSessionOperator(task_id="first")
        second = CandelaStopSessionOperator(task_id="second", dispose_slot=True)
        first >> second
    assert first.trigger_rule == "all_done"
    dr = run_dag(dag)
    assert dr.states == {"first": "success", "second": "success"}
    assert candela.request_count("GET /session/stop", "204") == 2


def _kill_during(op: Any, busy: Any) -> BaseException:
    """Run ``op.execute``; another thread calls ``op.on_kill()`` once ``busy()``; the error execute raised.

    (``execute`` runs in the main thread: Airflow 2.11's executor safeguard needs it there.)
    """

    def kill() -> None:
        wait_until(busy, timeout=30)
        op.on_kill()

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    with pytest.raises(BaseException) as raised:
        op.execute({})
    killer.join(timeout=30)
    return raised.value


def test_a_killed_prompt_stops_the_running_session(candela: Any) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        started = hook.start_session(AGENT, "default/demo-model")
    assert _running(candela) == started.obj_id.model_dump(mode="json")
    candela.configure(event_delay=0.5)
    with _dag("op_kill"):
        op = CandelaSubmitAgentPromptOperator(task_id="prompt", session=started.model_dump(mode="json"), prompt="x")
    error = _kill_during(op, lambda: candela.request_count("POST /session/agent_submit", 200))
    assert isinstance(error, CandelaCancelledError)
    assert _running(candela) is None


def test_a_killed_start_logs_a_failed_stop_and_does_not_hide_the_kill(
    candela: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    candela.add_fault(match="POST /session", delay=30)
    candela.add_fault(match="GET /session/stop", status=400, count=-1)
    with _dag("op_kill_fail"):
        op = CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL)
    with caplog.at_level(logging.WARNING):
        error = _kill_during(op, lambda: candela.request_count("GET /slot/state", 200))
    assert isinstance(error, CandelaCancelledError)
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    logged = caplog.text + captured.out + captured.err
    assert "Could not stop the Candela session of connection 'candela_default'" in logged
    assert "Injected fault" in logged  # the server's message is kept


def _make_sessions(count: int) -> list[Any]:
    from airflow_provider_candela.hooks.candela import CandelaHook

    out = []
    with CandelaHook() as hook:
        hook.ensure_slot(timeout=10)
        for i in range(count):
            hook.stop_session()
            out.append(hook.start_session(PIPELINE, "default/demo-model", scope=f"scope-{i % 2}"))
        hook.stop_session()
    return out


@pytest.mark.usefixtures("airflow_db")
def test_cleanup_filters_and_dry_run(candela: Any) -> None:
    made = _make_sessions(3)
    with _dag("op_cleanup") as dag:
        nothing_old = CandelaCleanupSessionsOperator(task_id="nothing_old", older_than=dt.timedelta(hours=1))
        other_user = CandelaCleanupSessionsOperator(task_id="other_user", created_by="somebody-else")
        preview = CandelaCleanupSessionsOperator(task_id="preview", scope="scope-0", older_than=0, dry_run=True)
        scoped = CandelaCleanupSessionsOperator(
            task_id="scoped", scope="{{ params.scope }}", params={"scope": "scope-0"}
        )
        rest = CandelaCleanupSessionsOperator(task_id="rest", identifier_prefix="session-", created_by=candela.username)
        nothing_old >> other_user >> preview >> scoped >> rest
    dr = run_dag(dag)
    assert set(dr.states.values()) == {"success"}
    in_scope_0 = sorted(m.obj_id.identifier for m in made if m.obj_id.scope == "scope-0")
    assert dr.xcom("nothing_old") == []
    assert dr.xcom("other_user") == []
    assert sorted(m["obj_id"]["identifier"] for m in dr.xcom("preview")) == in_scope_0
    assert sorted(m["obj_id"]["identifier"] for m in dr.xcom("scoped")) == in_scope_0
    assert [m["obj_id"]["scope"] for m in dr.xcom("rest")] == ["scope-1"]
    assert candela.stats()["sessions_stored"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_delete_a_list_of_sessions_and_a_missing_one(candela: Any) -> None:
    made = _make_sessions(2)
    sessions = [m.model_dump(mode="json") for m in made]
    with _dag("op_delete_list") as dag:
        both = CandelaDeleteSessionOperator(task_id="both", session=sessions)
        again = CandelaDeleteSessionOperator(task_id="again", session_id=made[0].obj_id.identifier, scope="scope-0")
        both >> again
    dr = run_dag(dag)
    assert dr.states == {"both": "success", "again": "success"}
    assert dr.xcom("both") == sessions
    assert dr.xcom("again") == []
    assert candela.stats()["sessions_stored"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_stop_runs_after_a_failed_start_and_the_failed_start_leaves_nothing_running(candela: Any) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:  # something of this user's is running before the DAG starts
        hook.ensure_slot(timeout=10)
        hook.start_session(AGENT, "default/demo-model")
    with _dag("op_stop_after_failed_start") as dag:
        start = CandelaStartSessionOperator(task_id="start", app="default/no-such-app", model=MODEL)
        CandelaStopSessionOperator(task_id="stop", session=start.output)  # trigger_rule all_done
    dr = run_dag(dag)
    assert dr.states == {"start": "failed", "stop": "success"}
    assert candela.request_count("POST /session", "400") == 1  # Candela's "Unknown app"
    assert _running(candela) is None


@pytest.mark.usefixtures("airflow_db")
def test_if_session_running_fail_leaves_another_runs_session_alone(
    candela: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:  # another DAG run of the same Candela user holds the slot
        hook.ensure_slot(timeout=10)
        other = hook.start_session(AGENT, "default/demo-model")
    with _dag("op_start_if_running_fail") as dag:
        CandelaStartSessionOperator(task_id="start", app=PIPELINE, model=MODEL, if_session_running="fail")
    with caplog.at_level(logging.INFO):
        dr = run_dag(dag)
    assert dr.states == {"start": "failed"}
    assert _running(candela) == other.obj_id.model_dump(mode="json"), "the other run's session must keep running"
    assert candela.request_count("GET /session/stop") == 0
    captured = capsys.readouterr()  # Airflow 3 logs through structlog to stdout, Airflow 2 through logging
    logged = caplog.text + captured.out + captured.err
    assert "if_session_running='fail'" in logged and "already running" in logged


def test_if_session_running_is_checked_at_parse_time() -> None:
    with pytest.raises(CandelaInputError, match="Invalid `if_session_running` for task 't'"):
        CandelaStartSessionOperator(task_id="t", app=PIPELINE, model=MODEL, if_session_running="kill")


@pytest.mark.usefixtures("airflow_db")
def test_airflows_pre_and_post_execute_callbacks_run_around_a_prompt(candela: Any) -> None:
    # The prompt operators extend Airflow's lifecycle: a task's pre_execute= / post_execute= callbacks run.
    called: list[str] = []
    with _dag("prompt_lifecycle_callbacks") as dag:
        CandelaSubmitPipelinePromptOperator(
            task_id="ask",
            app=PIPELINE,
            model=MODEL,
            prompt="Count my words",
            pre_execute=lambda context: called.append("pre"),
            post_execute=lambda context, result: called.append(f"post {sorted(result)}"),
        )
    dr = run_dag(dag)
    assert dr.states == {"ask": "success"}
    assert called == ["pre", f"post {sorted(dr.xcom('ask'))}"]
