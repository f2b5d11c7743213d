"""Checks shared by the trigger tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def assert_serializes_safely(candela: Any) -> Callable[[Any], dict[str, Any]]:
    """``check(trigger)``: its kwargs are JSON, hold no credential and rebuild the same trigger; returns them."""

    def check(trigger: Any) -> dict[str, Any]:
        classpath, kwargs = trigger.serialize()
        assert classpath == f"{type(trigger).__module__}.{type(trigger).__qualname__}"
        text = json.dumps(kwargs)  # JSON-safe
        for secret in (candela.password, candela.client_secret, candela.access_token, candela.username):
            assert secret not in text
        clone = type(trigger)(**json.loads(text))
        assert clone.serialize() == (classpath, kwargs)  # the deadline is absolute: it survives a triggerer restart
        return dict(kwargs)

    return check
