"""The Candela page plugin as Airflow loads it: found, cheap to import, and absent before Airflow 3.1.

Every process that loads plugins imports the plugin module (the API server, and each task for its macros),
so the import must bring in neither FastAPI nor the hook nor the API server's security module, and call no
Candela.  On Airflow 2.11 and 3.0 ``airflow plugins`` lists it without an app or a view, and without an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS
from airflow_provider_candela.testing import CandelaEmulator

#: what the plugin module must not import: the page's backend, the hook and what they need
HEAVY = ("fastapi", "starlette", "requests", "airflow_provider_candela.hooks", "airflow_provider_candela.plugins._app")
IMPORT_PLUGIN = """
import json, sys
import airflow.plugins_manager
before = set(sys.modules)
import airflow_provider_candela.plugins.candela_page
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_importing_the_plugin_imports_nothing_heavy_and_calls_no_candela(candela_emulator: CandelaEmulator) -> None:
    env = {**os.environ, "AIRFLOW_CONN_CANDELA_DEFAULT": candela_emulator.connection_json()}
    new = json.loads(_run([sys.executable, "-c", IMPORT_PLUGIN], env).stdout.strip().splitlines()[-1])
    heavy = [name for name in new if name.startswith(HEAVY) or name.startswith("airflow.api_fastapi.core_api")]
    assert heavy == [], f"importing the plugin imported {heavy}"
    ours = {name for name in new if name.startswith("airflow_provider_candela")}
    page = "airflow_provider_candela.plugins"
    assert page + ".candela_page" in ours
    assert ours <= {"airflow_provider_candela", "airflow_provider_candela._compat", page, f"{page}.candela_page"}, ours
    assert candela_emulator.stats()["requests_total"] == 0


def test_airflow_lists_the_plugin_with_the_page_on_3_1_and_later_only() -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    done = _run([airflow, "plugins", "-o", "json"], dict(os.environ))
    assert "Failed to import" not in done.stderr + done.stdout
    plugins: list[dict[str, Any]] = json.loads(done.stdout[done.stdout.index("[") :])
    (plugin,) = [p for p in plugins if p["name"] == "candela_page"]
    apps, views = plugin.get("fastapi_apps", []), plugin.get("external_views", [])
    if AIRFLOW_V_3_1_PLUS:
        assert [(a["url_prefix"], a["app"]) for a in apps] == [
            ("/candela", "airflow_provider_candela.plugins.candela_page.CandelaPageApp")
        ]
        assert [(v["name"], v["href"]) for v in views] == [("Candela", "/candela/")]
    else:
        assert (apps, views) == ([], [])


def test_the_plugin_entries_fit_the_typed_entries_of_this_airflow() -> None:
    """Airflow 3.4 types the entries (``ExternalViewDict``, ``FastAPIAppDict``): each key known, each value its type."""
    import typing

    plugins_manager = pytest.importorskip("airflow.plugins_manager")
    if not hasattr(plugins_manager, "ExternalViewDict"):
        pytest.skip("this Airflow has no typed plugin entries (3.4+)")
    from airflow_provider_candela.plugins.candela_page import CandelaPagePlugin

    for kind, entries in (
        (plugins_manager.ExternalViewDict, CandelaPagePlugin.external_views),
        (plugins_manager.FastAPIAppDict, CandelaPagePlugin.fastapi_apps),
    ):
        hints = typing.get_type_hints(kind, include_extras=True)  # the NotRequired[...] marks kept
        required = {key for key, hint in hints.items() if typing.get_origin(hint) is not typing.NotRequired}
        assert entries, kind.__name__
        for entry in entries:
            assert required <= set(entry) <= set(hints), (kind.__name__, entry)
            for key, value in entry.items():
                expected = typing.get_type_hints(kind)[key]
                if typing.get_origin(expected) is typing.Literal:
                    assert value in typing.get_args(expected), (key, value)
                elif expected is not typing.Any:
                    assert isinstance(value, typing.get_args(expected) or expected), (key, value)
    # A view in the navigation applies everywhere: it has no record to scope to (no `applies_to`).
    assert all("applies_to" not in view for view in CandelaPagePlugin.external_views)
