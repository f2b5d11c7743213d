"""The Candela connection form, defined once and rendered both ways.

Airflow 3.2+ reads :func:`conn_fields` and :data:`UI_FIELD_BEHAVIOUR` from the provider info without
importing the hook; Airflow 2.11 asks the hook's ``get_connection_form_widgets`` /
``get_ui_field_behaviour``, which return :func:`form_widgets` and :func:`ui_field_behaviour`.
Import-cheap: the WTForms / Flask-AppBuilder classes are imported only when Airflow 2.11 renders the form.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Final

__all__ = ["CONN_FIELDS", "UI_FIELD_BEHAVIOUR", "conn_fields", "form_widgets", "ui_field_behaviour"]

#: Extra fields of a Candela connection (stored in ``Connection.extra``), in form order.
#: ``schema.format == "password"`` marks a field as secret (masked in the UI and in logs).
CONN_FIELDS: Final[dict[str, dict[str, Any]]] = {
    "token_url": {
        "label": "Token URL",
        "description": "OAuth2 token endpoint (password grant). Leave empty when using a personal access token.",
        "placeholder": "https://<domain>.identity.lusid.com/oauth2/<id>/v1/token",
        "schema": {"type": ["string", "null"]},
    },
    "client_id": {
        "label": "Client ID",
        "description": "OAuth2 client id of your FINBOURNE application.",
        "placeholder": "my-client-id",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret": {
        "label": "Client Secret",
        "description": "OAuth2 client secret of your FINBOURNE application.",
        "placeholder": "client secret",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "access_token": {
        "label": "Personal Access Token",
        "description": "Optional. When set, used as the bearer token and no OAuth2 grant is made.",
        "placeholder": "optional",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "app_name": {
        "label": "Application Name",
        "description": "Sent as X-LUSID-Application on every call.",
        "placeholder": "airflow",
        "schema": {"type": ["string", "null"]},
    },
    "verify": {
        "label": "Verify TLS",
        "description": "true (default), false, or the path of a CA bundle file.",
        "placeholder": "/path/to/ca-bundle.pem",
        "schema": {"type": ["string", "null"]},
    },
    "proxy": {
        "label": "Proxy URL",
        "description": "HTTP(S) proxy for every call, e.g. http://proxy.example:3128.",
        "placeholder": "http://proxy.example:3128",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (connect, read) seconds",
        "description": "One number for both, or 'connect,read'. Default 10,300.",
        "placeholder": "10,300",
        "schema": {"type": ["string", "null"]},
    },
    "stream_timeout": {
        "label": "Agent stream timeout (seconds)",
        "description": "Longest an agent answer may stream in total. Default 3600.",
        "placeholder": "3600",
        "schema": {"type": ["string", "null"]},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of a failed call (429, 5xx, connection errors). Default 5.",
        "placeholder": "5",
        "schema": {"type": ["integer", "null"]},
    },
    "slot_type": {
        "label": "Slot type",
        "description": "Slot type assigned when a session needs a slot. Default gpu-medium.",
        "placeholder": "gpu-medium",
        "schema": {"type": ["string", "null"]},
    },
    "secrets_file": {
        "label": "secrets.json path",
        "description": "A FINBOURNE secrets.json whose 'api' values fill what this connection leaves empty.",
        "placeholder": "/opt/airflow/secrets/secrets.json",
        "schema": {"type": ["string", "null"]},
    },
    "model": {
        "label": "Model",
        "description": "Model a Candela agent runs with when it is a tool of a common-ai agent (scope/identifier).",
        "placeholder": "default/my-model",
        "schema": {"type": ["string", "null"]},
    },
}

#: How the standard connection fields are shown for a Candela connection.
UI_FIELD_BEHAVIOUR: Final[dict[str, Any]] = {
    "hidden-fields": ["schema", "port", "extra"],
    "relabeling": {"host": "Candela API URL", "login": "Username", "password": "Password"},
    "placeholders": {
        "host": "https://<domain>.lusid.com/candela",
        "login": "user@example.com",
        "password": "password (not needed with a personal access token)",
        **{name: field["placeholder"] for name, field in CONN_FIELDS.items()},
    },
}


def _description_with_placeholder(field: dict[str, Any]) -> str:
    """The field's description, ending with its placeholder as an example unless that adds nothing.

    Airflow 3's React form renders an extra field as label (``schema.title``), input and description
    only: it shows no placeholder, so the example would otherwise be lost there.
    """
    description: str = field["description"]
    placeholder: str | None = field.get("placeholder")
    if not placeholder or placeholder.lower() in f"{field['label']} {description}".lower():
        return description
    return f"{description} Example: {placeholder}"


def conn_fields() -> dict[str, dict[str, Any]]:
    """``conn-fields`` in the provider-info schema (label, description, schema only)."""
    return {
        name: {"label": f["label"], "description": _description_with_placeholder(f), "schema": f["schema"]}
        for name, f in CONN_FIELDS.items()
    }


def ui_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` as Airflow 2.11's hook method returns it (``hidden_fields``: underscores)."""
    return {key.replace("-", "_"): copy.deepcopy(value) for key, value in UI_FIELD_BEHAVIOUR.items()}


def form_widgets() -> dict[str, Any]:
    """The extra fields as Airflow 2.11's WTForms widgets."""
    from flask_appbuilder.fieldwidgets import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        BS3PasswordFieldWidget,
        BS3TextFieldWidget,
    )
    from wtforms import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        IntegerField,
        PasswordField,
        StringField,
    )
    from wtforms.validators import Optional  # type: ignore[import-not-found, import-untyped, unused-ignore]

    # Airflow 3.1 and 3.2 build their UI's form from this function with stand-ins for the WTForms fields that take
    # no render_kw: there the placeholder goes into the description, as in ``conn_fields``.
    placeholders = "render_kw" in inspect.signature(StringField.__init__).parameters
    widgets: dict[str, Any] = {}
    for name, field in CONN_FIELDS.items():
        schema = field.get("schema", {})
        types = schema.get("type", "string")
        types = [types] if isinstance(types, str) else list(types)
        kwargs: dict[str, Any] = {"label": field["label"]}
        if placeholders:
            kwargs["description"] = field.get("description", "")
            kwargs["render_kw"] = {"placeholder": field["placeholder"]} if field.get("placeholder") else None
        else:
            kwargs["description"] = _description_with_placeholder(field)
        if schema.get("format") == "password":
            widgets[name] = PasswordField(widget=BS3PasswordFieldWidget(), **kwargs)
        elif "integer" in types:
            widgets[name] = IntegerField(widget=BS3TextFieldWidget(), validators=[Optional()], **kwargs)
        else:
            widgets[name] = StringField(widget=BS3TextFieldWidget(), **kwargs)
    return widgets
