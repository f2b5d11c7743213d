"""The "Candela" page of the Airflow UI (Airflow 3.1+): slots and stored sessions per ``candela`` connection.

A FastAPI app mounted by the API server under ``/candela``: ``GET /candela/`` is the page (plain HTML and
JavaScript in ``candela_page.html``, nothing fetched from elsewhere), ``/candela/api/...`` its backend.  Every
route goes through Airflow's auth manager (``requires_access_connection``): reads need GET on connections,
actions PUT (stop, dispose, assign) or DELETE (delete stored sessions).  Nothing acts on a GET.

Import-cheap: every process that loads plugins imports this module (the task runner does, for macros), so it
imports neither FastAPI nor the API server's security module nor the hook: the app is built on its first
request (:class:`CandelaPageApp`), and Candela is called only when the page asks.  On Airflow 2.11 and 3.0
the plugin has no app and no view (it is simply absent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_candela._compat import AIRFLOW_V_3_1_PLUS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

URL_PREFIX = "/candela"


class CandelaPageApp:
    """The ASGI app of the page: builds the FastAPI app (:func:`._app.create_app`) on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if self._app is None:
            from airflow_provider_candela.plugins._app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


_APPS: list[Any] = []
_VIEWS: list[Any] = []
if AIRFLOW_V_3_1_PLUS:
    _APPS = [{"name": "candela-page", "app": CandelaPageApp(), "url_prefix": URL_PREFIX}]
    _VIEWS = [
        {"name": "Candela", "href": f"{URL_PREFIX}/", "url_route": "candela", "destination": "nav", "category": "admin"}
    ]


class CandelaPagePlugin(AirflowPlugin):
    """The Candela page: one row per connection (identity, slot, latest session, stored count) and actions."""

    name = "candela_page"
    fastapi_apps = _APPS
    external_views = _VIEWS
