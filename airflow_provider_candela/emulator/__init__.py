"""A local Candela server (Gen A Sessions API) for tests and demos; FastAPI + uvicorn, no Airflow.

Start it with ``candela-emulator`` or ``python -m airflow_provider_candela.emulator``; build the
ASGI app yourself with :func:`create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_candela.emulator.config import EmulatorConfig, load_catalog

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["EmulatorConfig", "create_app", "load_catalog"]


def create_app(config: EmulatorConfig | None = None, **overrides: Any) -> FastAPI:
    """Build the emulator's FastAPI app.

    :param config: the emulator's settings (default: the demo settings, changed by ``overrides``).
    :param overrides: :class:`EmulatorConfig` fields, used when ``config`` is not given.
    """
    from airflow_provider_candela.emulator.app import create_app as _create_app

    if config is None:
        config = EmulatorConfig(**overrides)
    return _create_app(config)
