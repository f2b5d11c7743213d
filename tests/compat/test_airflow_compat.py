"""What the provider relies on from Airflow, checked on every Airflow version the suite runs on (2.11, 3.1, 3.3, 3.4).

The provider imports its Airflow base classes from ``airflow.providers.common.compat.sdk``; on Airflow 2.11
that needs apache-airflow-providers-common-compat >= 1.22 (``mask_secret`` arrived in 1.22, ``conf`` in
1.12).  ``dag.test()`` is how the e2e tests and ``run_dags`` run DAGs, so it is exercised here with a DAG
that returns values through XCom, maps a task and has a teardown.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import warnings
from typing import Any

import pytest

from airflow_provider_candela.testing import run_dag

COMPAT_NAMES = [
    # used by the hook, operators, sensor and trigger
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "AirflowException",
    "mask_secret",
    "conf",
    # used by the example DAGs
    "DAG",
    "Param",
    "task",
    "setup",
    "teardown",
    "Context",
    "TaskDeferred",
]


def _version(dist: str) -> tuple[int, ...]:
    return tuple(int(part) for part in importlib.metadata.version(dist).split(".")[:2])


def test_common_compat_is_recent_enough() -> None:
    assert _version("apache-airflow-providers-common-compat") >= (1, 22)


@pytest.mark.parametrize("name", COMPAT_NAMES)
def test_compat_sdk_exports(name: str) -> None:
    sdk = importlib.import_module("airflow.providers.common.compat.sdk")
    assert getattr(sdk, name) is not None


def test_provider_modules_import_on_this_airflow() -> None:
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_candela.hooks.candela import CandelaHook
    from airflow_provider_candela.operators import sessions as operators
    from airflow_provider_candela.sensors.sessions import CandelaSessionExistsSensor
    from airflow_provider_candela.triggers.sessions import CandelaSessionExistsTrigger

    sdk = importlib.import_module("airflow.providers.common.compat.sdk")
    assert issubclass(CandelaHook, sdk.BaseHook)
    assert issubclass(operators.CandelaStartSessionOperator, sdk.BaseOperator)
    assert issubclass(CandelaSessionExistsSensor, sdk.BaseSensorOperator)
    assert issubclass(CandelaSessionExistsTrigger, BaseTrigger)


def test_provider_is_registered_with_airflow() -> None:
    """Airflow's ProvidersManager finds our provider info and the `candela` connection type."""
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-candela" in manager.providers
    with warnings.catch_warnings():  # Airflow 3.3 deprecates ProvidersManager.hooks for task-sdk's manager
        warnings.simplefilter("ignore")
        hook_info = manager.hooks.get("candela")
    assert hook_info is not None
    assert hook_info.hook_class_name == "airflow_provider_candela.hooks.candela.CandelaHook"


def test_provider_info_fits_this_airflows_schema_and_every_decorator_resolves() -> None:
    """The provider info against the ``provider_info.schema.json`` of this Airflow (3.4 types each entry)."""
    import json
    from importlib.resources import files

    import jsonschema

    from airflow_provider_candela.get_provider_info import get_provider_info

    info = get_provider_info()
    schema = json.loads((files("airflow") / "provider_info.schema.json").read_text())
    errors = [f"{list(error.path)}: {error.message}" for error in jsonschema.Draft7Validator(schema).iter_errors(info)]
    assert errors == []
    for decorator in info["task-decorators"]:
        module, _, name = decorator["class-name"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), decorator
    for plugin in info["plugins"]:
        module, _, name = plugin["plugin-class"].rpartition(".")
        assert getattr(importlib.import_module(module), name).name == plugin["name"], plugin


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_runs_xcom_mapping_and_teardown() -> None:
    import pendulum

    sdk = importlib.import_module("airflow.providers.common.compat.sdk")
    seen: dict[str, Any] = {}

    with sdk.DAG(
        "compat_dag_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False
    ) as dag:

        @sdk.task
        def produce() -> dict[str, int]:
            return {"n": 2}

        @sdk.task
        def double(value: int) -> int:
            return value * 2

        @sdk.task
        def collect(values: list[int]) -> int:
            seen["values"] = sorted(values)
            return sum(values)

        @sdk.teardown
        def cleanup() -> None:
            seen["teardown"] = True

        produced = produce()
        total = collect(double.expand(value=[1, 2, 3]))
        produced >> total >> cleanup()

    run = run_dag(dag)
    assert run.state == "success"
    assert run.xcom("collect") == 12
    assert seen == {"values": [2, 4, 6], "teardown": True}
