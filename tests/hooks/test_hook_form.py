"""The Airflow 2.11 connection form, rendered from get_provider_info's one definition."""

from __future__ import annotations

import importlib.util

import pytest

from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_3_PLUS
from airflow_provider_candela.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_candela.get_provider_info import get_provider_info
from airflow_provider_candela.hooks.candela import CandelaHook


def test_ui_field_behaviour_is_the_provider_info_one() -> None:
    behaviour = CandelaHook.get_ui_field_behaviour()
    # Airflow 2.11 wants the hook's keys in snake_case (and rejects the whole behaviour otherwise).
    assert set(behaviour) == {"hidden_fields", "relabeling", "placeholders"}
    in_provider_info = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    assert in_provider_info == UI_FIELD_BEHAVIOUR
    assert behaviour == {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}
    behaviour["hidden_fields"].append("login")  # a copy: callers cannot change the definition
    assert "login" not in UI_FIELD_BEHAVIOUR["hidden-fields"]


def test_hook_identity_matches_provider_info() -> None:
    conn_type = get_provider_info()["connection-types"][0]
    assert conn_type["connection-type"] == CandelaHook.conn_type == "candela"
    assert conn_type["hook-class-name"] == f"{CandelaHook.__module__}.{CandelaHook.__qualname__}"
    assert CandelaHook.default_conn_name == "candela_default"
    assert CandelaHook.conn_name_attr == "candela_conn_id"
    assert CandelaHook.hook_name == "Candela"


@pytest.mark.skipif(
    importlib.util.find_spec("flask_appbuilder") is None or importlib.util.find_spec("wtforms") is None,
    reason="the Airflow 2 form needs Flask-AppBuilder and WTForms (installed with Airflow 2.11)",
)
def test_connection_form_widgets_render_conn_fields() -> None:
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from wtforms import IntegerField, PasswordField, StringField

    widgets = CandelaHook.get_connection_form_widgets()
    assert list(widgets) == list(CONN_FIELDS)
    for name, field in CONN_FIELDS.items():
        unbound = widgets[name]
        schema = field["schema"]
        if schema.get("format") == "password":
            assert unbound.field_class is PasswordField
            assert isinstance(unbound.kwargs["widget"], BS3PasswordFieldWidget)
        elif "integer" in schema["type"]:
            assert unbound.field_class is IntegerField
            assert isinstance(unbound.kwargs["widget"], BS3TextFieldWidget)
        else:
            assert unbound.field_class is StringField
            assert isinstance(unbound.kwargs["widget"], BS3TextFieldWidget)
        assert unbound.kwargs["label"] == field["label"]
        assert unbound.kwargs["description"] == field["description"]
        assert unbound.kwargs["render_kw"] == {"placeholder": field["placeholder"]}
    assert widgets["client_secret"].field_class is PasswordField
    assert widgets["access_token"].field_class is PasswordField
    assert widgets["max_retries"].field_class is IntegerField


def test_providers_manager_sees_the_form() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    if "airflow-provider-candela" not in manager.providers:
        pytest.skip("the provider is not installed in this environment (no entry point)")
    assert manager.hooks["candela"] is not None
    assert manager.hooks["candela"].hook_class_name.endswith("CandelaHook")
    if not AIRFLOW_V_3_3_PLUS and importlib.util.find_spec("flask_appbuilder") is None:
        return  # 3.1/3.2 without Flask-AppBuilder: only the UI reads the form (next test)
    assert manager.field_behaviours["candela"]["relabeling"]["host"] == "Candela API URL"
    widgets = manager.connection_form_widgets
    assert "extra__candela__token_url" in widgets or "token_url" in str(list(widgets))


UI_FORM = """
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
(candela,) = [hook for hook in HookMetaService.hook_meta_data() if hook.connection_type == "candela"]
print(json.dumps(candela.model_dump(mode="json")))
"""


@pytest.mark.skipif(not AIRFLOW_V_3_1_PLUS, reason="the connection form of Airflow 3.1+'s UI")
def test_the_ui_of_this_airflow_shows_every_field_of_the_form() -> None:
    """What the UI's connection form is made of (``/ui/connections/hook_meta``): every field, labelled.

    Airflow 3.1 and 3.2 build it from the hook's WTForms widgets with stand-ins for WTForms (no Flask-AppBuilder
    needed), 3.3+ from the provider info.  In a process of its own: the stand-ins stay in ``sys.modules``.
    """
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", UI_FORM], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    candela = json.loads(done.stdout.strip().splitlines()[-1])
    assert candela["hook_class_name"].endswith("CandelaHook")
    assert candela["standard_fields"]["host"]["title"] == "Candela API URL"
    assert candela["standard_fields"]["login"]["hidden"] is False
    fields = candela["extra_fields"]
    assert set(fields) == set(CONN_FIELDS), "every extra field of the form"
    for name, field in CONN_FIELDS.items():
        assert fields[name]["schema"]["title"] == field["label"], name
