"""Typed answers whose model uses aliases (camelCase JSON, as FINBOURNE's APIs write it) round-trip.

The XCom of ``output_type`` is the model's JSON form by alias, so ``Model.model_validate(xcom)`` in a
downstream task gives the model back, also without ``populate_by_name`` and for nested models.  The
camelCase answer is a canned pipeline ``result`` of an emulator of this module's own (its catalogue).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from airflow_provider_candela.operators.sessions import CandelaSubmitPipelinePromptOperator
from airflow_provider_candela.testing import CandelaEmulator, run_dag

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PIPELINE = "default/demo-pipeline"
MODEL = "default/demo-model"
HOLDINGS = {
    "portfolioCode": "GLOBAL-EQ",
    "asAtDate": "2026-12-01",
    "topPosition": {"instrumentId": "LUID_00003D4X", "marketValue": 1250000.5},
    "positions": [
        {"instrumentId": "LUID_00003D4X", "marketValue": 1250000.5},
        {"instrumentId": "LUID_00003D58", "marketValue": 98000.0},
    ],
}
CATALOG = {"responses": [{"pattern": "(?i)holdings", "pipeline": HOLDINGS}]}


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel)  # no populate_by_name: only the aliases validate


class Position(_Camel):
    instrument_id: str
    market_value: float


class Holdings(_Camel):
    portfolio_code: str
    as_at_date: dt.date
    top_position: Position
    positions: list[Position]


@pytest.fixture(scope="module")
def camel_emulator() -> Iterator[CandelaEmulator]:
    with CandelaEmulator(catalog=CATALOG, slot_startup_seconds=0) as emulator:
        yield emulator


@pytest.fixture
def camel(camel_emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: Any) -> CandelaEmulator:
    camel_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_CANDELA_DEFAULT", camel_emulator.connection_json())
    return camel_emulator


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False)


def _read_back(dr: Any, task_id: str) -> None:
    xcom = dr.xcom(task_id)
    assert xcom == HOLDINGS, "the XCom is the model's JSON form by alias, as Candela sent it"
    assert Holdings.model_validate(xcom) == Holdings.model_validate(HOLDINGS)
    assert dr.xcom("read") == "LUID_00003D4X"


def test_an_alias_model_round_trips_through_the_pipeline_operator(camel: CandelaEmulator) -> None:
    with _dag("alias_operator") as dag:
        ask = CandelaSubmitPipelinePromptOperator(
            task_id="ask", app=PIPELINE, model=MODEL, prompt="Show the holdings", output_type=Holdings
        )

        @task
        def read(holdings: dict[str, Any]) -> str:
            return Holdings.model_validate(holdings).top_position.instrument_id  # the README's pattern

        read(ask.output)

    dr = run_dag(dag)
    assert dr.states == {"ask": "success", "read": "success"}
    _read_back(dr, "ask")


def test_an_alias_model_round_trips_through_the_decorator(camel: CandelaEmulator) -> None:
    with _dag("alias_decorator") as dag:

        @task.candela_pipeline(app=PIPELINE, model=MODEL, output_type=Holdings)
        def holdings(portfolio: str) -> str:
            return f"Show the holdings of {portfolio}"

        @task
        def read(summary: dict[str, Any]) -> str:
            return Holdings.model_validate(summary).top_position.instrument_id

        read(holdings("GLOBAL-EQ"))

    dr = run_dag(dag)
    assert dr.states == {"holdings": "success", "read": "success"}
    _read_back(dr, "holdings")
