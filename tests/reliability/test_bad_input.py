"""Bad input: a table of wrong arguments to every operator, the sensor and the hook, and broken connections.

Each row names the call, the error type it must raise, the argument the message must name and a phrase
of the fix the message must give.  Rows that can be checked locally must fail before any HTTP request
(the emulator counts zero requests); the few that only Candela can judge (an unknown app, model or slot
type) must be refused once, without a retry.  No row may leave state behind on the emulator: stored or
running sessions, or slots.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_candela.exceptions import CandelaApiError, CandelaConnectionConfigError, CandelaInputError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.operators.sessions import (
    CandelaCleanupSessionsOperator,
    CandelaDeleteSessionOperator,
    CandelaStartDevSessionOperator,
    CandelaStartSessionOperator,
    CandelaStopSessionOperator,
    CandelaSubmitAgentPromptOperator,
    CandelaSubmitPipelinePromptOperator,
)
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
from airflow_provider_candela.testing import CandelaEmulator, run_dag

from ._support import AGENT, MODEL, PIPELINE, START, TALLY, running, state_of

CIRCUIT = {"first": "answer", "nodes": {"answer": {"type": "response", "node_id": "answer", "template": "hi"}}}
DIRECTIVE = {"identity": "an analyst", "purpose": "summarise"}
TEN_MB = "x" * (10 * 1024 * 1024)
_dag_ids = itertools.count()


class Env:
    """What a row needs: a hook on the emulator, connections, and a DAG to build operators in."""

    def __init__(self, emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.emulator = emulator
        self.monkeypatch = monkeypatch

    def hook(self, conn_id: str = "candela_default", **kwargs: Any) -> CandelaHook:
        return CandelaHook(conn_id, **kwargs)

    def conn(self, conn_id: str, *, drop: tuple[str, ...] = (), **fields: Any) -> str:
        """Define ``conn_id`` as the emulator's connection with ``fields`` replaced and ``drop`` removed."""
        connection: dict[str, Any] = json.loads(self.emulator.connection_json())
        extra = fields.pop("extra", None)
        if isinstance(extra, dict):
            connection["extra"].update(extra)
        elif extra is not None:
            connection["extra"] = extra
        connection.update(fields)
        for key in drop:
            if not connection.pop(key, None) and isinstance(connection["extra"], dict):
                connection["extra"].pop(key, None)
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        return conn_id

    def broken(self, conn_id: str = "candela_broken", **kwargs: Any) -> CandelaHook:
        """A hook on a connection built by :meth:`conn`; reading its configuration is the call under test."""
        return CandelaHook(self.conn(conn_id, **kwargs))

    def ready_slot(self) -> None:
        with CandelaHook() as hook:
            hook.ensure_slot(poll_interval=0.01)


def _op(build: Callable[[], Any]) -> Any:
    """Build an operator inside a DAG of its own (a failed constructor leaves its task id taken)."""
    with DAG(f"bad_input_{next(_dag_ids)}", schedule=None, start_date=START, catchup=False):
        return build()


def _execute(build: Callable[[], Any], **rendered: Any) -> Any:
    """Build an operator, give it the values a template rendered, and run ``execute``."""
    operator = _op(build)
    for name, value in rendered.items():
        setattr(operator, name, value)
    return operator.execute(context={})


@dataclass(frozen=True)
class Bad:
    """One bad input: ``call(env)`` must raise ``error`` whose message contains ``argument`` and ``fix``."""

    name: str
    call: Callable[[Env], Any]
    error: type[BaseException]
    argument: str
    fix: str
    local: bool = True  # checkable without Candela: no request at all
    setup: Callable[[Env], Any] | None = None
    known_bug: str | None = None  # a bug in a file this suite may not fix: the row is a strict xfail until fixed


def S(**kwargs: Any) -> Any:  # builders, short to keep the table readable
    return CandelaStartSessionOperator(task_id="start", **{"app": PIPELINE, "model": MODEL, **kwargs})


def D(**kwargs: Any) -> Any:
    return CandelaStartDevSessionOperator(
        task_id="dev", **{"model": MODEL, "circuit": CIRCUIT, "directive": DIRECTIVE, **kwargs}
    )


def P(**kwargs: Any) -> Any:
    return CandelaSubmitPipelinePromptOperator(task_id="ask", **{"prompt": "hi", "session_id": "s1", **kwargs})


def A(**kwargs: Any) -> Any:
    return CandelaSubmitAgentPromptOperator(task_id="chat", **{"prompt": "hi", "session_id": "s1", **kwargs})


def W(**kwargs: Any) -> Any:
    return CandelaSessionExistsSensor(task_id="wait", **{"session": "default/s1", **kwargs})


ID_FIX = "'scope/identifier:version'"  # every id error lists the accepted forms
NOT_TEXT = "remove it, or decode the source with its real encoding"  # a lone surrogate
IN = CandelaInputError
CONN = CandelaConnectionConfigError

TABLE: list[Bad] = [
    # --- CandelaStartSessionOperator (checked when the DAG is parsed) ---
    Bad("start: empty app", lambda e: _op(lambda: S(app="")), IN, "`app`", ID_FIX),
    Bad("start: whitespace app", lambda e: _op(lambda: S(app="   ")), IN, "`app`", ID_FIX),
    Bad("start: app of the wrong type", lambda e: _op(lambda: S(app=42)), IN, "`app`", ID_FIX),
    Bad("start: malformed scope/identifier", lambda e: _op(lambda: S(app="default/")), IN, "`app`", ID_FIX),
    Bad("start: malformed version", lambda e: _op(lambda: S(app="default/app:!!")), IN, "`app`", ID_FIX),
    Bad("start: model missing", lambda e: _op(lambda: S(model=None)), IN, "`model`", ID_FIX),
    Bad("start: model dict without identifier", lambda e: _op(lambda: S(model={"scope": "x"})), IN, "`model`", ID_FIX),
    Bad(
        "start: session dict without obj_id",
        lambda e: _op(lambda: S(parent_session={"domain": "demo", "created_by": "demo"})),
        IN,
        "`parent_session`",
        ID_FIX,
    ),
    Bad("start: scope of the wrong type", lambda e: _op(lambda: S(scope=5)), IN, "`scope`", "expected a string"),
    Bad(
        "start: negative slot_ready_timeout",
        lambda e: _op(lambda: S(slot_ready_timeout=-5)),
        IN,
        "`slot_ready_timeout`",
        "positive number of seconds",
    ),
    Bad("start: ensure_slot not a bool", lambda e: _op(lambda: S(ensure_slot="yes")), IN, "`ensure_slot`", "True or"),
    Bad(
        "start: empty connection id",
        lambda e: _op(lambda: S(candela_conn_id=" ")),
        IN,
        "`candela_conn_id`",
        "such as 'candela_default'",
    ),
    # --- CandelaStartSessionOperator (checked at execute, after templates rendered) ---
    Bad("start: rendered app malformed", lambda e: _execute(S, app="default/"), IN, "`app`", ID_FIX),
    Bad(
        "start: malformed scope",
        lambda e: _execute(lambda: S(ensure_slot=False), scope="bad scope/"),
        IN,
        "`scope`",
        "Use letters, digits",
    ),
    Bad(
        "start: unknown connection id",
        lambda e: _execute(lambda: S(candela_conn_id="no_such_conn")),
        CONN,
        "'no_such_conn'",
        "AIRFLOW_CONN_NO_SUCH_CONN",
    ),
    Bad(
        "start: unknown app (Candela decides)",
        lambda e: _execute(lambda: S(app="default/no-such-app", ensure_slot=False)),
        CandelaApiError,
        "Unknown app 'default/no-such-app'",
        "Available apps: default/demo-agent:1.0.0, default/demo-pipeline:1.0.0",
        local=False,
        setup=Env.ready_slot,
    ),
    Bad(
        "start: unknown model (Candela decides)",
        lambda e: _execute(lambda: S(model="default/no-such-model", ensure_slot=False)),
        CandelaApiError,
        "Unknown model 'default/no-such-model'",
        "Available models: default/demo-model:1.0.0",
        local=False,
        setup=Env.ready_slot,
    ),
    # --- CandelaStartDevSessionOperator ---
    Bad("dev: circuit without first", lambda e: _op(lambda: D(circuit={"nodes": {}})), IN, "`circuit`", "such as"),
    Bad("dev: circuit of the wrong type", lambda e: _op(lambda: D(circuit="a circuit")), IN, "`circuit`", "such as"),
    Bad("dev: directive of the wrong type", lambda e: _op(lambda: D(directive=[1, 2])), IN, "`directive`", "such as"),
    Bad("dev: tool_module of the wrong type", lambda e: _op(lambda: D(tool_module=42)), IN, "`tool_module`", "Pass a"),
    Bad("dev: malformed model", lambda e: _op(lambda: D(model="/")), IN, "`model`", ID_FIX),
    # --- the prompt operators ---
    Bad("pipeline: empty prompt", lambda e: _op(lambda: P(prompt="")), IN, "`prompt`", "Pass a non-empty string"),
    Bad("pipeline: whitespace prompt", lambda e: _op(lambda: P(prompt="   ")), IN, "`prompt`", "non-empty string"),
    Bad("pipeline: prompt of the wrong type", lambda e: _op(lambda: P(prompt=42)), IN, "`prompt`", "expected a string"),
    Bad("agent: prompt of the wrong type", lambda e: _op(lambda: A(prompt=["hi"])), IN, "`prompt`", "expected a str"),
    Bad(
        "pipeline: 10 MB prompt",
        lambda e: _op(lambda: P(prompt=TEN_MB)),
        IN,
        "`prompt` for task 'ask': it is 10,485,760 bytes",
        "Shorten it or split it into several prompts",
    ),
    Bad(
        "agent: 10 MB prompt rendered by a template",
        lambda e: _execute(lambda: A(prompt="{{ params.text }}"), prompt=TEN_MB),
        IN,
        "`prompt` for task 'chat': it is 10,485,760 bytes",
        "Shorten it or split it into several prompts",
    ),
    Bad("agent: no session", lambda e: _op(lambda: A(session_id=None)), IN, "`session=start.output`", "pass"),
    Bad(
        "agent: session and session_id",
        lambda e: _op(lambda: A(session="default/s1")),
        IN,
        "`session` and `session_id`",
        "pass one of them",
    ),
    Bad("agent: whitespace session_id", lambda e: _op(lambda: A(session_id="   ")), IN, "`session_id`", "use letters"),
    Bad("agent: session_id of the wrong type", lambda e: _op(lambda: A(session_id=5)), IN, "`session_id`", "a string"),
    Bad(
        "agent: session dict without obj_id",
        lambda e: _op(lambda: A(session_id=None, session={"domain": "demo", "created_by": "demo"})),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad(
        "agent: obj_id not a dict",
        lambda e: _op(lambda: A(session_id=None, session={"obj_id": "s1"})),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad(
        "agent: scope contradicts the session",
        lambda e: _op(lambda: A(session_id=None, session="team-a/s1", scope="team-b")),
        IN,
        "`scope`",
        "Drop `scope` or make them equal",
    ),
    Bad(
        "agent: return_events not a bool",
        lambda e: _op(lambda: A(return_events="yes")),
        IN,
        "`return_events`",
        "True or False",
    ),
    # --- stop and delete ---
    Bad(
        "stop: malformed session",
        lambda e: _op(lambda: CandelaStopSessionOperator(task_id="stop", session="nope")),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad(
        "stop: dispose_slot not a bool",
        lambda e: _op(lambda: CandelaStopSessionOperator(task_id="stop", dispose_slot="true")),  # type: ignore[arg-type]
        IN,
        "`dispose_slot`",
        "True or False",
    ),
    Bad(
        "stop: unknown connection id",
        lambda e: _execute(lambda: CandelaStopSessionOperator(task_id="stop", candela_conn_id="no_such_conn")),
        CONN,
        "'no_such_conn'",
        "AIRFLOW_CONN_NO_SUCH_CONN",
    ),
    Bad(
        "delete: nothing to delete",
        lambda e: _op(lambda: CandelaDeleteSessionOperator(task_id="delete")),
        IN,
        "pass `session=start.output`",
        "use CandelaCleanupSessionsOperator",
    ),
    Bad(
        "cleanup: negative older_than",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than=-1)),
        IN,
        "`older_than`",
        "such as '7d'",
    ),
    Bad(
        "cleanup: older_than not a duration",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than="soon")),
        IN,
        "`older_than`",
        "such as '7d'",
    ),
    Bad(
        "cleanup: older_than nan",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than=float("nan"))),
        IN,
        "`older_than`",
        "such as '7d'",
    ),
    Bad(
        "cleanup: older_than -inf",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than=float("-inf"))),
        IN,
        "`older_than`",
        "such as '7d'",
    ),
    Bad(
        "cleanup: no filter",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup")),
        IN,
        "has no cleanup filter",
        "`older_than=0` matches every session",
    ),
    Bad(
        "delete: a version contradicting the session's",
        lambda e: _op(
            lambda: CandelaDeleteSessionOperator(task_id="delete", session="default/s1:1.0.0", version="2.0.0")
        ),
        IN,
        "`version`='2.0.0'",
        "contradicts the version of `session` ('1.0.0')",
    ),
    Bad(
        "cleanup: dry_run not a bool",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than=0, dry_run="maybe")),
        IN,
        "`dry_run`",
        "True or False",
    ),
    Bad(
        "delete: a malformed session in a list",
        lambda e: _op(lambda: CandelaDeleteSessionOperator(task_id="delete", session=["default/s1", "bad"])),
        IN,
        "`session[1]`",
        ID_FIX,
    ),
    # --- the sensor ---
    Bad("sensor: no session", lambda e: _op(lambda: W(session=None)), IN, "`session=", "or `session_id="),
    Bad(
        "sensor: malformed version",
        lambda e: _op(lambda: W(session=None, session_id="s1", version="not a version!")),
        IN,
        "`version`",
        "semver-like string such as '1.0.0'",
    ),
    Bad(
        "sensor: malformed scope",
        lambda e: _op(lambda: W(session=None, session_id="s1", scope="team a")),
        IN,
        "`scope`",
        "Use letters, digits",
    ),
    Bad(
        "sensor: session and session_id",
        lambda e: _op(lambda: W(session_id="s2")),
        IN,
        "`session_id`",
        "pass one of them",
    ),
    Bad(
        "sensor: whitespace session_id",
        lambda e: _op(lambda: W(session=None, session_id="  ")),
        IN,
        "`session_id`",
        "use letters",
    ),
    Bad(
        "sensor: session dict without identifier",
        lambda e: _op(lambda: W(session={"obj_id": {"scope": "default"}})),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad("sensor: negative timeout", lambda e: _op(lambda: W(timeout=-1)), ValueError, "`timeout`", "non-negative"),
    Bad(
        "sensor: negative poke_interval",
        lambda e: _op(lambda: W(poke_interval=-1)),
        ValueError,
        "`poke_interval`",
        "non-negative",
    ),
    Bad(
        "sensor: empty connection id",
        lambda e: _op(lambda: W(candela_conn_id="")),
        IN,
        "`candela_conn_id`",
        "such as 'candela_default'",
    ),
    Bad(
        "sensor: unknown connection id",
        lambda e: _op(lambda: W(candela_conn_id="no_such_conn")).poke({}),
        CONN,
        "'no_such_conn'",
        "AIRFLOW_CONN_NO_SUCH_CONN",
    ),
    # --- the hook ---
    Bad("hook: empty app", lambda e: e.hook().start_session("", MODEL), IN, "argument `app`", ID_FIX),
    Bad("hook: app of the wrong type", lambda e: e.hook().start_session(None, MODEL), IN, "argument `app`", ID_FIX),  # type: ignore[arg-type]
    Bad(
        "hook: malformed model",
        lambda e: e.hook().start_session(PIPELINE, "default/x:"),
        IN,
        "argument `model`",
        ID_FIX,
    ),
    Bad(
        "hook: scope of the wrong type",
        lambda e: e.hook().start_session(PIPELINE, MODEL, scope=5),  # type: ignore[arg-type]
        IN,
        "argument `scope`",
        "expected a string",
    ),
    Bad(
        "hook: malformed scope",
        lambda e: e.hook().start_session(PIPELINE, MODEL, scope="a b"),
        IN,
        "argument `scope`",
        "Use letters",
    ),
    Bad(
        "hook: dev circuit without first",
        lambda e: e.hook().start_dev_session(MODEL, {"nodes": {}}, DIRECTIVE),
        IN,
        "argument `circuit`",
        "missing field 'first'",
    ),
    Bad(
        "hook: empty session",
        lambda e: e.hook().submit_pipeline_prompt(" ", "hi"),
        IN,
        "argument `session`",
        ID_FIX,
    ),
    Bad(
        "hook: malformed session",
        lambda e: e.hook().submit_pipeline_prompt("a/b c", "hi"),
        IN,
        "argument `session`",
        ID_FIX,
    ),
    Bad(
        "hook: prompt session of the wrong type",
        lambda e: e.hook().submit_pipeline_prompt(7, "hi"),  # type: ignore[arg-type]
        IN,
        "argument `session`",
        ID_FIX,
    ),
    Bad(
        "hook: prompt of the wrong type",
        lambda e: e.hook().submit_prompt_to_agent("default/s1", 42),  # type: ignore[arg-type]
        IN,
        "argument `prompt`",
        "expected a string",
    ),
    Bad(
        "hook: 10 MB prompt",
        lambda e: e.hook().submit_prompt_to_agent("default/s1", TEN_MB),
        IN,
        "argument `prompt`: it is 10,485,760 bytes",
        "Shorten it or split it",
    ),
    Bad(
        "hook: session dict without obj_id",
        lambda e: e.hook().get_session({"domain": "demo", "created_by": "demo"}),  # type: ignore[arg-type]
        IN,
        "argument `session`",
        ID_FIX,
    ),
    Bad(
        "hook: slot type of the wrong type",
        lambda e: e.hook().assign_slot(5),  # type: ignore[arg-type]
        IN,
        "argument `slot_type`",
        "expected a string",
    ),
    Bad(
        "hook: unknown slot type (Candela decides)",
        lambda e: e.hook().assign_slot("no-such-type"),
        CandelaApiError,
        "Unknown slot type 'no-such-type'",
        "Available slot types: gpu-medium",
        local=False,
    ),
    Bad(
        "hook: unknown app version (Candela decides)",
        lambda e: e.hook().start_session("default/demo-pipeline:9.9.9", MODEL),
        CandelaApiError,
        "has no version '9.9.9'",
        "Available versions: 1.0.0",
        local=False,
        setup=Env.ready_slot,
    ),
    Bad(
        "hook: negative slot timeout",
        lambda e: e.hook().ensure_slot(timeout=-1),
        IN,
        "argument `timeout`",
        "a positive number of seconds",
    ),
    Bad(
        "hook: zero poll interval",
        lambda e: e.hook().ensure_slot(poll_interval=0),
        IN,
        "argument `poll_interval`",
        "a positive number of seconds",
    ),
    Bad(
        "hook: negative timeout",
        lambda e: e.hook(timeout=-1).config,
        CONN,
        "timeout=-1",
        "one positive number of seconds",
    ),
    Bad(
        "hook: negative max_retries",
        lambda e: e.hook(max_retries=-1).config,
        CONN,
        "max_retries=-1",
        "a whole number >= 0",
    ),
    # --- text that is not Unicode (a lone surrogate) and ids with a trailing newline ---
    Bad(
        "pipeline: prompt with a lone surrogate",
        lambda e: _op(lambda: P(prompt="hi \ud800 there")),
        IN,
        "`prompt` for task 'ask': character 3",
        NOT_TEXT,
    ),
    Bad(
        "agent: rendered prompt with a lone surrogate",
        lambda e: _execute(lambda: A(prompt="{{ params.text }}"), prompt="caf\udce9 au lait"),
        IN,
        "`prompt` for task 'chat': character 3",
        NOT_TEXT,
    ),
    Bad(
        "hook: agent prompt with a lone surrogate",
        lambda e: e.hook().submit_prompt_to_agent("default/s1", "\udfff"),
        IN,
        "`prompt`: character 0",
        NOT_TEXT,
    ),
    Bad(
        "dev: directive with a lone surrogate",
        lambda e: _op(lambda: D(directive={"identity": "an \ud800"})),
        IN,
        "`directive` for task 'dev': identity: character 3",
        NOT_TEXT,
    ),
    Bad(
        "dev: circuit node with a lone surrogate",
        lambda e: _op(lambda: D(circuit={"first": "a", "nodes": {"a": {"template": "h\udcffi"}}})),
        IN,
        "`circuit` for task 'dev': nodes: character 1 of a.template",
        NOT_TEXT,
    ),
    Bad(
        "dev: tool_module with a lone surrogate",
        lambda e: _op(lambda: D(tool_module="x = '\ud800'")),
        IN,
        "`tool_module` for task 'dev': content: character 5",
        NOT_TEXT,
    ),
    Bad(
        "hook: dev directive with a lone surrogate",
        lambda e: e.hook().start_dev_session(MODEL, CIRCUIT, {"purpose": "\ud800"}),
        IN,
        "argument `directive`: purpose: character 0",
        NOT_TEXT,
    ),
    Bad(
        "cleanup: created_by with a lone surrogate",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", created_by="m\ud800")),
        IN,
        "`created_by` for task 'cleanup': character 1",
        NOT_TEXT,
    ),
    Bad(
        "cleanup: identifier_prefix with a lone surrogate",
        lambda e: _op(lambda: CandelaCleanupSessionsOperator(task_id="cleanup", identifier_prefix="\udc80x")),
        IN,
        "`identifier_prefix` for task 'cleanup': character 0",
        NOT_TEXT,
    ),
    Bad(
        "start: app dict with a trailing newline",
        lambda e: _op(lambda: S(app={"scope": "default", "identifier": "demo-pipeline\n"})),
        IN,
        "`app`",
        ID_FIX,
    ),
    Bad(
        "agent: scope with a trailing newline",
        lambda e: _op(lambda: A(scope="default\n")),
        IN,
        "`scope` for task 'chat'",
        "Use letters",
    ),
    Bad(
        "agent: session dict with a trailing newline",
        lambda e: _op(lambda: A(session_id=None, session={"scope": "default", "identifier": "s1\n"})),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad(
        "sensor: session with a trailing newline",
        lambda e: _op(lambda: W(session="default/s1\n")),
        IN,
        "`session`",
        ID_FIX,
    ),
    Bad(
        "hook: session with a trailing newline",
        lambda e: e.hook().submit_pipeline_prompt("default/abc\n", "hi"),
        IN,
        "argument `session`",
        ID_FIX,
    ),
    Bad(
        "hook: scope with a trailing newline",
        lambda e: e.hook().start_session(PIPELINE, MODEL, scope="default\n"),
        IN,
        "argument `scope`",
        "Use letters",
    ),
    Bad(
        "hook: version with a trailing newline",
        lambda e: e.hook().get_session({"scope": "default", "identifier": "s1", "version": "1.0.0\n"}),  # type: ignore[arg-type]
        IN,
        "argument `session`",
        ID_FIX,
    ),
    # --- connections ---
    Bad(
        "connection: unknown id",
        lambda e: e.hook("no_such_conn").user_has_slot(),
        CONN,
        "'no_such_conn' is not defined",
        "set the environment variable AIRFLOW_CONN_NO_SUCH_CONN",
    ),
    Bad(
        "connection: no host",
        lambda e: e.broken(drop=("host",)).config,
        CONN,
        "has no host",
        "set it to the Candela API URL",
    ),
    Bad(
        "connection: host not http(s)",
        lambda e: e.broken(host="ftp://candela.example").config,
        CONN,
        "host=",
        "set it like https://<domain>.lusid.com/candela",
    ),
    Bad(
        "connection: token URL not a URL",
        lambda e: e.broken(extra={"token_url": "not-a-url"}).config,
        CONN,
        "token_url='not-a-url'",
        "set it like https://",
    ),
    Bad(
        "connection: extra not JSON",
        lambda e: e.broken(extra="{not json").config,
        CONN,
        "extra that is not valid JSON",
        "set it to a JSON object",
    ),
    Bad(
        "connection: extra a JSON list",
        lambda e: e.broken(extra="[1, 2]").config,
        CONN,
        "JSON list, not an object",
        "set it to {...}",
    ),
    Bad(
        "connection: client_secret missing",
        lambda e: e.broken(drop=("client_secret",)).config,
        CONN,
        "extra client_secret is missing",
        "or set the extra access_token",
    ),
    Bad(
        "connection: password missing",
        lambda e: e.broken(drop=("password",)).config,
        CONN,
        "password is missing",
        "Set login, password",
    ),
    Bad(
        "connection: timeout not a number",
        lambda e: e.broken(extra={"timeout": "soon"}).config,
        CONN,
        "timeout='soon'",
        "such as '10,300'",
    ),
    Bad(
        "connection: max_retries not a number",
        lambda e: e.broken(extra={"max_retries": "many"}).config,
        CONN,
        "max_retries='many'",
        "such as 5",
    ),
    Bad(
        "connection: CA bundle missing",
        lambda e: e.broken(extra={"verify": "/no/such/ca.pem"}).config,
        CONN,
        "verify='/no/such/ca.pem'",
        "path of a CA bundle file that exists",
    ),
    Bad(
        "connection: app_name with CR/LF (a header injection)",
        lambda e: e.broken(extra={"app_name": "airflow\r\nX-Injected: yes"}).config,
        CONN,
        "'candela_broken' has app_name='airflow\\r\\nX-Injected: yes', which holds a line break",
        "set the extra app_name to one line of plain text",
    ),
    Bad(
        "connection: app_name outside Latin-1",
        lambda e: e.broken(extra={"app_name": "análisis ✓"}).config,
        CONN,
        "app_name='análisis ✓', which holds a character outside Latin-1 ('✓' at position 9)",
        "set the extra app_name to one line of plain text",
    ),
    Bad(
        "connection: proxy not a URL",
        lambda e: e.broken(extra={"proxy": "proxy:3128:x"}).config,
        CONN,
        "proxy=",
        "set it like http://proxy.example:3128",
    ),
]


@pytest.fixture
def env(
    candela_emulator: CandelaEmulator,
    candela_connection: str,
    airflow_db: Any,
    monkeypatch: pytest.MonkeyPatch,
    fast_retries: None,
) -> Env:
    candela_emulator.configure(slot_startup_seconds=0)
    return Env(candela_emulator, monkeypatch)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(row, marks=pytest.mark.xfail(reason=row.known_bug, strict=True)) if row.known_bug else row
        for row in TABLE
    ],
    ids=[row.name for row in TABLE],
)
def test_bad_input_gives_a_clear_error_and_leaves_nothing_behind(env: Env, bad: Bad) -> None:
    with TALLY.bad_input(bad.name):
        if bad.setup is not None:
            bad.setup(env)
        before = state_of(env.emulator)
        requests_before = env.emulator.stats()["requests"]
        with pytest.raises(bad.error) as info:
            bad.call(env)
        message = str(info.value)
        assert bad.argument in message, f"the message does not name the argument: {message}"
        assert bad.fix in message, f"the message does not say what to do: {message}"
        assert len(message) < 2000  # a 10 MB input does not become a 10 MB message
        after = env.emulator.stats()
        made = {
            route: sum(by_status.values()) - sum(requests_before.get(route, {}).values())
            for route, by_status in after["requests"].items()
        }
        made = {route: n for route, n in made.items() if n}
        if bad.local:
            assert made == {}, f"requests were sent for an input that can be checked locally: {made}"
        else:
            refused = {route: n for route, n in made.items() if route.startswith(("POST /session", "PUT /slot"))}
            assert list(refused.values()) == [1], f"Candela's refusal was not final (retried?): {made}"
        assert state_of(env.emulator) == before, "the bad input left state behind on the emulator"


def test_the_table_is_large_enough() -> None:
    assert len(TABLE) >= 40
    assert len({row.name for row in TABLE}) == len(TABLE)


# ------------------------------------------------------------------------------------------------
# the same checks inside real task runs: values that only exist once templates are rendered


@dataclass(frozen=True)
class Rendered:
    """A templated argument that renders to a bad value inside a real task run."""

    name: str
    build: Callable[[], Any]
    value: str
    expected: str


RENDERED = [
    Rendered("rendered app", lambda: S(app="{{ params.bad }}"), "default/", "Invalid `app` for task 'start'"),
    Rendered("rendered session_id", lambda: P(session_id="{{ params.bad }}"), "a b", "Invalid `session_id` for task"),
    Rendered(
        "rendered older_than",
        lambda: CandelaCleanupSessionsOperator(task_id="cleanup", older_than="{{ params.bad }}"),
        "soon",
        "Invalid `older_than`",
    ),
]


@pytest.mark.parametrize("case", RENDERED, ids=[r.name for r in RENDERED])
@pytest.mark.usefixtures("airflow_db")
def test_rendered_bad_input_fails_the_task_before_any_request(
    env: Env, capsys: pytest.CaptureFixture[str], case: Rendered
) -> None:
    with TALLY.bad_input(f"task run: {case.name}"):
        dag_id = f"bad_input_{case.name.replace(' ', '_')}"
        with DAG(dag_id, schedule=None, start_date=START, catchup=False, params={"bad": case.value}) as dag:
            operator = case.build()
        capsys.readouterr()
        dag_run = run_dag(dag)
        log = capsys.readouterr().out
        assert dag_run.state == "failed"
        assert dag_run.states == {operator.task_id: "failed"}
        assert f"CandelaInputError: {case.expected}" in log
        assert env.emulator.stats()["requests_total"] == 0
        assert state_of(env.emulator)["sessions_stored"] == 0


# ------------------------------------------------------------------------------------------------
# values without end that are legitimate: they work as asked, with no overflow on the way

BEYOND_ANY_AGE = {"inf": float("inf"), "days": "99999999999d", "max": dt.timedelta.max, "int": 10**400}


@pytest.mark.usefixtures("airflow_db")
def test_an_older_than_beyond_any_age_matches_no_session(env: Env) -> None:
    with TALLY.bad_input("cleanup: older_than beyond any age (inf, timedelta.max, '99999999999d', 10**400)"):
        env.ready_slot()
        with CandelaHook() as hook:
            hook.start_session(PIPELINE, MODEL)
            hook.stop_session()
        with DAG("bad_input_older_than_without_end", schedule=None, start_date=START, catchup=False) as dag:
            for name, value in BEYOND_ANY_AGE.items():
                CandelaCleanupSessionsOperator(task_id=f"older_than_{name}", older_than=value)
        dr = run_dag(dag)
        assert dr.states == {f"older_than_{name}": "success" for name in BEYOND_ANY_AGE}
        assert all(dr.xcom(f"older_than_{name}") == [] for name in BEYOND_ANY_AGE), "each deleted nothing"
        assert state_of(env.emulator)["sessions_stored"] == 1, "no session is older than that"


def test_a_managed_agent_timeout_without_end_is_no_limit(env: Env) -> None:
    pytest.importorskip("airflow.providers.common.ai.toolsets.managed_agent", reason="common-ai is not installed")
    from airflow.providers.common.ai.toolsets import ManagedAgentToolset
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from airflow_provider_candela.hooks.managed_agent import CandelaManagedAgentHook

    with TALLY.bad_input("managed agent: ManagedAgentToolset(timeout=inf or 1e15)"):
        with CandelaManagedAgentHook(env.conn("candela_agents", extra={"model": MODEL})) as hook:
            for timeout in (float("inf"), 1e15):
                toolset = ManagedAgentToolset(hook.agent(AGENT), tool_name="ask_analyst", timeout=timeout)
                result = Agent(TestModel(), toolsets=[toolset]).run_sync("Which fund had the largest drawdown?")
                assert "You asked:" in result.output, result.output
        assert env.emulator.stats()["sessions_started"] == 2
        assert running(env.emulator) is None, "each call's session was stopped"


WITHOUT_END = {"inf": float("inf"), "1e15": 1e15}


@pytest.mark.parametrize("one_task_prompt", [False, True], ids=["start", "one-task prompt"])
@pytest.mark.parametrize("timeout", list(WITHOUT_END.values()), ids=list(WITHOUT_END))
@pytest.mark.usefixtures("airflow_db")
def test_a_deferred_slot_wait_without_end_waits_for_the_slot(
    env: Env, monkeypatch: pytest.MonkeyPatch, timeout: float, one_task_prompt: bool
) -> None:
    from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

    name = f"{'one-task prompt' if one_task_prompt else 'start'}: deferrable, slot_ready_timeout={timeout:g}"
    with TALLY.bad_input(name):
        deadlines: list[Any] = []
        serialize = CandelaSlotReadyTrigger.serialize

        def recording(self: CandelaSlotReadyTrigger) -> tuple[str, dict[str, Any]]:
            classpath, kwargs = serialize(self)
            deadlines.append(kwargs["end_time"])
            return classpath, kwargs

        monkeypatch.setattr(CandelaSlotReadyTrigger, "serialize", recording)
        env.emulator.configure(slot_startup_seconds=1.5)  # not ready at the first check: the task defers
        options = {"deferrable": True, "slot_poll_interval": 0.1, "slot_ready_timeout": timeout}
        with DAG(f"bad_input_slot_wait_{next(_dag_ids)}", schedule=None, start_date=START, catchup=False) as dag:
            if one_task_prompt:
                P(session_id=None, app=PIPELINE, model=MODEL, prompt="Count my words", **options)
            else:
                S(**options)
        dr = run_dag(dag)
        assert set(dr.states.values()) == {"success"}, dr.states
        assert deadlines and set(deadlines) == {None}, "the trigger waits without a deadline (nothing to overflow)"
        if one_task_prompt:
            assert dr.xcom("ask")["result"]["word_count"] == 3
            assert running(env.emulator) is None, "the one-task session was stopped"
        else:
            assert running(env.emulator) is not None
        assert env.emulator.stats()["sessions_started"] == 1


# ------------------------------------------------------------------------------------------------
# the emulator, sent text that is not Unicode: a JSON "\ud800" escape decodes to a lone surrogate


@dataclass(frozen=True)
class NotUnicode:
    """A request body holding a lone surrogate; ``app`` is started first so that the prompt reaches it."""

    name: str
    path: str
    body: Callable[[str], dict[str, Any]]
    loc: list[str]
    app: str | None = None


_MODEL_ID = {"scope": "default", "identifier": "demo-model"}
NOT_UNICODE = [
    NotUnicode(
        "pipeline prompt",
        "/session/pipeline_submit",
        lambda sid: {"prompt": "hi \ud800", "session_id": sid},
        ["body", "prompt"],
        PIPELINE,
    ),
    NotUnicode(
        "agent prompt",
        "/session/agent_submit",
        lambda sid: {"prompt": "\udcff", "session_id": sid},
        ["body", "prompt"],
        "default/demo-agent",
    ),
    NotUnicode(
        "start scope",
        "/session",
        lambda sid: {
            "app": {"scope": "default", "identifier": "demo-pipeline"},
            "model_cfg": _MODEL_ID,
            "scope": "x\ud800",
        },
        ["body", "scope"],
    ),
    NotUnicode(
        "dev directive",
        "/session/dev",
        lambda sid: {"model_id": _MODEL_ID, "circuit": CIRCUIT, "directive": {"purpose": "sum\udc80"}},
        ["body", "directive", "purpose"],
    ),
]


@pytest.mark.parametrize("case", NOT_UNICODE, ids=[case.name for case in NOT_UNICODE])
def test_the_emulator_answers_422_to_text_that_is_not_unicode(env: Env, case: NotUnicode) -> None:
    import requests

    with TALLY.bad_input(f"emulator: {case.name} with a lone surrogate"):
        env.ready_slot()
        session_id = "s1"
        if case.app is not None:
            with CandelaHook() as hook:
                session_id = hook.start_session(case.app, MODEL).obj_id.identifier
        body = json.dumps(case.body(session_id))
        assert "\\ud" in body  # sent as the JSON escape, as any JSON client with ensure_ascii would
        response = requests.post(
            env.emulator.url + case.path,
            data=body,
            headers={"Authorization": f"Bearer {env.emulator.access_token}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert [item["loc"] for item in detail] == [case.loc], detail
        assert "is a lone surrogate" in detail[0]["msg"], detail
