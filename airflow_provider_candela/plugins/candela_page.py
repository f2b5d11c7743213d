"""The "Candela" page of the Airflow UI (Airflow 3.1+): slots and stored sessions per ``candela`` connection.

A FastAPI app mounted by the API server under ``/candela``: ``GET /candela/`` is the page (plain HTML and
JavaScript in ``candela_page.html``, nothing fetched from elsewhere), ``/candela/api/...`` its backend.  Every
route goes through Airflow's auth manager (``requires_access_connection``): reads need GET on connections,
actions PUT (stop, dispose, assign) or DELETE (delete stored sessions).  Nothing acts on a GET.

Import-cheap: the hook, ``requests`` and the ORM are imported inside the routes; Candela is called only when
the page asks.  On Airflow 2.11 and 3.0 the plugin has no app and no view (it is simply absent).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_candela.plugins._version import AIRFLOW_V_3_1_PLUS

URL_PREFIX = "/candela"


_APPS: list[Any] = []
_VIEWS: list[Any] = []
if AIRFLOW_V_3_1_PLUS:
    from airflow_provider_candela.plugins._app import create_app

    _APPS = [{"name": "candela-page", "app": create_app(), "url_prefix": URL_PREFIX}]
    _VIEWS = [
        {"name": "Candela", "href": f"{URL_PREFIX}/", "url_route": "candela", "destination": "nav", "category": "admin"}
    ]


class CandelaPagePlugin(AirflowPlugin):
    """The Candela page: one row per connection (identity, slot, latest session, stored count) and actions."""

    name = "candela_page"
    fastapi_apps = _APPS
    external_views = _VIEWS
