"""Every argument an operator or decorator documents is a named parameter: ``default_args`` and ``.partial()`` reach it.

Airflow fills only the named parameters of each ``__init__`` in an operator's class chain from the DAG's
``default_args``, and ``.partial()`` refuses any other name; an option taken out of ``**kwargs`` is
invisible to both.  Checked three ways: every ``:param:`` of every Candela operator is a named parameter
somewhere in its chain (and no ``__init__`` pops options out of ``kwargs``); a DAG whose ``default_args``
make it deferrable, with a scope and a slot type, defers every task that can defer and starts every
session with them; ``.partial()`` with every option, then ``.expand()``, runs.
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, BaseOperator

from airflow_provider_candela.decorators import _operators as decorated
from airflow_provider_candela.operators import batch, sessions, stored_sessions
from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
from airflow_provider_candela.testing import CandelaEmulator, run_dag
from airflow_provider_candela.triggers.slots import CandelaSlotReadyTrigger

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"

OPERATORS = [
    *(getattr(module, name) for module in (sessions, batch, stored_sessions) for name in module.__all__),
    CandelaSessionExistsSensor,
    *(getattr(decorated, name) for name in decorated.__all__),
]


def _documented(cls: type[Any]) -> set[str]:
    """The ``:param name:`` of the docstrings of ``cls`` and of its Candela bases, ``kwargs`` aside."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("airflow_provider_candela"):
            names |= set(re.findall(r":param (\w+):", klass.__doc__ or ""))
    return names - {"kwargs", "python_callable"}


def _named(cls: type[Any]) -> set[str]:
    """The named keyword parameters of every ``__init__`` in the chain of ``cls``, up to ``BaseOperator``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            params = inspect.signature(init).parameters.values()
            names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
    return names - {"self"}


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda cls: cls.__name__)
def test_every_documented_argument_is_a_named_parameter(operator: type[BaseOperator]) -> None:
    documented = _documented(operator)
    assert documented, f"{operator.__name__} documents no argument"
    assert documented <= _named(operator), f"documented but taken from **kwargs: {documented - _named(operator)}"
    for klass in operator.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass.__module__.startswith("airflow_provider_candela"):
            assert "kwargs.pop(" not in inspect.getsource(init), f"{klass.__name__}.__init__ pops an option"


@pytest.fixture
def two_slot_types() -> Iterator[CandelaEmulator]:
    """An emulator offering two slot types (the default one and ``gpu-small``), slots that take a moment."""
    with CandelaEmulator(catalog={"slot_types": ["gpu-medium", "gpu-small"]}, slot_startup_seconds=0.5) as emulator:
        yield emulator


@pytest.fixture
def trigger_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The slot ids of the slot triggers that ran (one per deferral)."""
    runs: list[str] = []
    original = CandelaSlotReadyTrigger.run

    async def recording_run(self: CandelaSlotReadyTrigger) -> AsyncIterator[Any]:
        runs.append(self.slot_id)
        async for event in original(self):
            yield event

    monkeypatch.setattr(CandelaSlotReadyTrigger, "run", recording_run)
    return runs


@pytest.mark.usefixtures("airflow_db")
def test_default_args_make_every_task_that_can_defer_defer_with_the_dags_scope_and_slot_type(
    two_slot_types: CandelaEmulator, trigger_runs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import task

    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", two_slot_types.connection_json())
    options = {"deferrable": True, "scope": "team", "slot_type": "gpu-small", "slot_poll_interval": 0.1}
    dispose = {"dispose_slot": True}  # the next task assigns a slot again: it has a slot to wait for
    with DAG("named_default_args", schedule=None, start_date=START, catchup=False, default_args=options) as dag:
        start = sessions.CandelaStartSessionOperator(task_id="start", app=AGENT, model=MODEL)
        on_running = sessions.CandelaSubmitAgentPromptOperator(
            task_id="on_running", session=start.output, prompt="Hello"
        )
        stop = sessions.CandelaStopSessionOperator(task_id="stop", **dispose)
        own = sessions.CandelaSubmitPipelinePromptOperator(task_id="own", app=PIPELINE, model=MODEL, prompt="Hi")
        stop_own = sessions.CandelaStopSessionOperator(task_id="stop_own", **dispose)

        @task.candela_agent(app=AGENT, model=MODEL)
        def decorated_prompt() -> str:
            return "Hello from a decorator"

        stop_decorated = sessions.CandelaStopSessionOperator(task_id="stop_decorated", **dispose)
        inputs = batch.CandelaPipelineBatchOperator(task_id="inputs", app=PIPELINE, model=MODEL, prompts=["a", "b"])
        start >> on_running >> stop >> own >> stop_own >> decorated_prompt() >> stop_decorated >> inputs

    for task_id in ("start", "own", "decorated_prompt", "inputs"):
        assert dag.get_task(task_id).deferrable is True, task_id
    assert dag.get_task("on_running").deferrable is False, "a running session has no slot to wait for"

    result = run_dag(dag)
    assert set(result.states.values()) == {"success"}, result.states
    assert len(trigger_runs) == 4, "start, the one-task prompt, the decorator and the batch each deferred"
    from airflow_provider_candela.hooks.candela import CandelaHook

    with CandelaHook() as hook:
        started = hook.list_sessions(all_versions=True)
    assert len(started) == 4
    assert {meta.obj_id.scope for meta in started} == {"team"}
    assert two_slot_types.stats()["slots"][two_slot_types.username]["slot_type"] == "gpu-small"
    assert two_slot_types.request_count("PUT /slot") == 4


#: Every option of the prompt operators but the review's, as ``.partial()`` takes them.
PROMPT_OPTIONS: dict[str, Any] = {
    "app": PIPELINE,
    "model": MODEL,
    "circuit_override": None,
    "directive_override": None,
    "output_type": None,
    "scope": "team",
    "parent_session": None,
    "ensure_slot": True,
    "slot_type": "gpu-medium",
    "slot_ready_timeout": 120,
    "if_session_running": "stop",
    "deferrable": False,
    "slot_poll_interval": 0.1,
    "candela_conn_id": "candela_default",
    "hook_params": {"timeout": [5, 60], "max_retries": 2},
}
REVIEW_OPTIONS: dict[str, Any] = {
    "require_approval": True,
    "allow_modifications": True,
    "approval_timeout": dt.timedelta(hours=1),
    "on_approval_timeout": "reject",
    "approval_notifiers": [],
    "approval_assigned_users": [{"id": "1", "name": "reviewer"}],
}


@pytest.mark.usefixtures("airflow_db")
def test_partial_takes_every_option_and_expand_maps_the_templated_ones(candela: CandelaEmulator) -> None:
    with DAG("named_partial_expand", schedule=None, start_date=START, catchup=False) as dag:
        ask = sessions.CandelaSubmitPipelinePromptOperator.partial(task_id="ask", **PROMPT_OPTIONS).expand(
            prompt=["Count these words", "And these"]
        )
        agent_options = {name: value for name, value in PROMPT_OPTIONS.items() if name != "app"}
        agents = sessions.CandelaSubmitAgentPromptOperator.partial(
            task_id="agents", return_events=False, **agent_options
        ).expand(app=[AGENT], prompt=["Hello"])
        batches = batch.CandelaPipelineBatchOperator.partial(
            task_id="batches",
            result_path=None,
            fail_on_partial_error=True,
            resend_ambiguous=False,
            on_changed_inputs="fail",
            **PROMPT_OPTIONS,
        ).expand(prompts=[["a", "b"], ["c"]])
        ask >> agents >> batches
    result = run_dag(dag)
    assert set(result.states.values()) == {"success"}, result.states
    assert candela.request_count("POST /session/pipeline_submit", "200") == 2 + 3
    assert candela.stats()["sessions_started"] == 2 + 1 + 2


def test_partial_takes_the_review_options() -> None:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

    if not AIRFLOW_V_3_1_PLUS:
        pytest.skip("the review needs Airflow 3.1+")
    with DAG("named_partial_review", schedule=None, start_date=START, catchup=False):
        mapped = sessions.CandelaSubmitPipelinePromptOperator.partial(
            task_id="ask", **PROMPT_OPTIONS, **REVIEW_OPTIONS
        ).expand(prompt=["a", "b"])
    assert mapped.partial_kwargs["require_approval"] is True


@pytest.mark.filterwarnings("ignore:Task 't' was never mapped")
@pytest.mark.parametrize(
    "operator", [op for op in OPERATORS if op.__module__ != decorated.__name__], ids=lambda cls: cls.__name__
)
def test_partial_accepts_every_documented_argument(operator: type[BaseOperator]) -> None:
    # .partial() checks the names against the named parameters of the class chain; the values are checked
    # when each mapped task is made (the runs above).
    with DAG(f"named_partial_{operator.__name__}", schedule=None, start_date=START, catchup=False):
        operator.partial(task_id="t", **dict.fromkeys(_documented(operator)))
