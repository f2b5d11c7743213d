"""Helpers of the reliability suite: counters, DAG builders, emulator state checks, a retry observer."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_provider_candela.testing import wait_until  # noqa: F401 (re-exported to the tests)

T = TypeVar("T")

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline"
AGENT = "default/demo-agent"
MODEL = "default/demo-model"


# ------------------------------------------------------------------------------------------------
# counts printed at the end of the run


@dataclass
class Tally:
    """What each area tried and how much of it behaved as promised."""

    faults: set[str] = field(default_factory=set)
    faults_ok: set[str] = field(default_factory=set)
    bad_inputs: set[str] = field(default_factory=set)
    bad_inputs_clear: set[str] = field(default_factory=set)
    artefacts: int = 0
    leaks: int = 0
    airflow_echoes: int = 0  # secrets echoed by Airflow's in-process test supervisor at DEBUG (upstream)
    load_runs: int = 0
    load_green: int = 0

    @contextmanager
    def fault(self, name: str) -> Iterator[None]:
        """Count ``name`` as tried, and as survived / failed clearly once the block's assertions passed."""
        self.faults.add(name)
        yield
        self.faults_ok.add(name)

    @contextmanager
    def bad_input(self, name: str) -> Iterator[None]:
        """Count ``name`` as tried, and as a clear error once the block's assertions passed."""
        self.bad_inputs.add(name)
        yield
        self.bad_inputs_clear.add(name)

    def summary(self) -> str:
        parts = []
        if self.faults:
            parts.append(f"faults tried: {len(self.faults)}, survived/clear-failure: {len(self.faults_ok)}")
        if self.artefacts:
            echoes = (
                f" (and {self.airflow_echoes} MaskSecret requests echoed at DEBUG by Airflow's in-process test "
                "supervisor, an upstream issue of dag.test)"
                if self.airflow_echoes
                else ""
            )
            parts.append(f"secrets scanned: {self.artefacts} artefacts, leaks: {self.leaks}{echoes}")
        if self.bad_inputs:
            parts.append(f"bad inputs: {len(self.bad_inputs)}, clear errors: {len(self.bad_inputs_clear)}")
        if self.load_runs:
            parts.append(f"load: {self.load_runs} concurrent DAG runs, {self.load_green} green")
        return "; ".join(parts)


TALLY = Tally()


# ------------------------------------------------------------------------------------------------
# emulator state


def running(emulator: Any, user: str | None = None) -> dict[str, Any] | None:
    """The session running on ``user``'s slot (default: the primary user), or None."""
    result: dict[str, Any] | None = emulator.stats()["running_sessions"].get(user or emulator.username)
    return result


def requests_of(stats: dict[str, Any], route: str) -> dict[str, int]:
    """``{"<status>": n}`` of one route (e.g. ``"POST /session"``) in ``/_emulator/stats``."""
    result: dict[str, int] = dict(stats["requests"].get(route, {}))
    return result


def state_of(emulator: Any) -> dict[str, Any]:
    """What a bad input must not change: stored sessions, running sessions and slots."""
    stats = emulator.stats()
    return {
        "sessions_stored": stats["sessions_stored"],
        "sessions_started": stats["sessions_started"],
        "running_sessions": stats["running_sessions"],
        "slots": stats["slots"],
    }


# ------------------------------------------------------------------------------------------------
# observing the hook's retries (a spy: behaviour unchanged)


class RetryObserver:
    """Counts the attempts the hooks give up on and retry (every ``Retryable`` raised), across threads."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._cond = threading.Condition()

    def record(self, message: str) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"retries not observed within {timeout} s: {self.messages}")


# ------------------------------------------------------------------------------------------------
# DAGs


def session_dag(
    dag_id: str,
    *,
    app: str = PIPELINE,
    prompt: str = "Summarise the day",
    teardown: bool = True,
    conn_id: str = "candela_default",
    **dag_kwargs: Any,
) -> Any:
    """start >> prompt (pipeline or agent, from ``app``) >> stop (the teardown of start)."""
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_candela.operators.sessions import (
        CandelaStartSessionOperator,
        CandelaStopSessionOperator,
        CandelaSubmitAgentPromptOperator,
        CandelaSubmitPipelinePromptOperator,
    )

    prompt_cls: Any = CandelaSubmitAgentPromptOperator if app == AGENT else CandelaSubmitPipelinePromptOperator
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, **dag_kwargs) as dag:
        start = CandelaStartSessionOperator(task_id="start", app=app, model=MODEL, candela_conn_id=conn_id)
        ask = prompt_cls(task_id="prompt", session=start.output, prompt=prompt, candela_conn_id=conn_id)
        start >> ask
        if teardown:
            stop = CandelaStopSessionOperator(task_id="stop", session=start.output, candela_conn_id=conn_id)
            ask >> stop.as_teardown(setups=start)
    return dag
