"""Configuration of the Candela emulator: command-line flags and the catalogue file.

Nothing here imports FastAPI or uvicorn, so the CLI's ``--help`` and the catalogue checks stay cheap.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_APPS",
    "DEFAULT_MODELS",
    "DEFAULT_SLOT_TYPES",
    "AppSpec",
    "CannedResponse",
    "Catalog",
    "CatalogError",
    "EmulatorConfig",
    "ModelSpec",
    "load_catalog",
]

AppKind = Literal["pipeline", "agent"]

#: Built-in catalogue: always present, the catalogue file adds to it.
DEFAULT_APPS: Final = (("default", "demo-pipeline", "pipeline"), ("default", "demo-agent", "agent"))
DEFAULT_MODELS: Final = (("default", "demo-model"),)
DEFAULT_SLOT_TYPES: Final = ("gpu-medium",)
DEFAULT_VERSION: Final = "1.0.0"


class CatalogError(ValueError):
    """The catalogue file is malformed; the message names the entry and what is expected."""


@dataclass(frozen=True)
class AppSpec:
    """An app the emulator can run: ``kind`` decides pipeline_submit vs agent_submit."""

    scope: str
    identifier: str
    kind: AppKind
    versions: tuple[str, ...] = (DEFAULT_VERSION,)


@dataclass(frozen=True)
class ModelSpec:
    """A model configuration sessions can be started with."""

    scope: str
    identifier: str
    versions: tuple[str, ...] = (DEFAULT_VERSION,)


@dataclass(frozen=True)
class CannedResponse:
    """A canned answer: the first entry whose ``pattern`` matches the prompt (``re.search``) wins.

    ``app`` (``scope/identifier``) restricts it to one app; ``pipeline`` is the ``result`` object of
    a pipeline answer; ``events`` the agent stream (list of ``{"event_type", "content"}``).
    """

    pattern: re.Pattern[str]
    app: str | None = None
    pipeline: dict[str, Any] | None = None
    events: tuple[tuple[str, str], ...] | None = None


@dataclass
class Catalog:
    """Apps, models, slot types, extra users and canned responses known to the emulator."""

    apps: dict[tuple[str, str], AppSpec] = field(default_factory=dict)
    models: dict[tuple[str, str], ModelSpec] = field(default_factory=dict)
    slot_types: list[str] = field(default_factory=lambda: list(DEFAULT_SLOT_TYPES))
    users: dict[str, str] = field(default_factory=dict)
    responses: list[CannedResponse] = field(default_factory=list)

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalogue every emulator starts with."""
        catalog = cls()
        for scope, identifier, kind in DEFAULT_APPS:
            catalog.apps[(scope, identifier)] = AppSpec(scope, identifier, kind)  # type: ignore[arg-type]
        for scope, identifier in DEFAULT_MODELS:
            catalog.models[(scope, identifier)] = ModelSpec(scope, identifier)
        return catalog


@dataclass
class EmulatorConfig:
    """Everything the emulator is started with (the CLI flags).

    ``agent_chat_events`` ``None`` means "a few, derived from the prompt".
    ``faults`` are fault dicts as accepted by ``POST /_emulator/faults``.
    """

    host: str = "127.0.0.1"
    port: int = 8933
    username: str = "demo"
    password: str = "demo-password"
    client_id: str = "demo-client"
    client_secret: str = "demo-client-secret"
    access_token: str | None = "demo-pat"
    token_ttl: float = 3600.0
    slot_startup_seconds: float = 0.3
    #: A slot assigned while this is true ends in ERRORED instead of HOST_READY when its start-up time is over.
    slot_start_fails: bool = False
    event_delay: float = 0.0
    agent_chat_events: int | None = None
    domain: str = "demo"
    log_level: str = "warning"
    #: Serve HTTPS with this certificate (PEM, may include the chain) and private key; both or neither.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    catalog: Catalog = field(default_factory=Catalog.builtin)
    faults: list[dict[str, Any]] = field(default_factory=list)


def _require(entry: Any, key: str, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise CatalogError(f"{where}: missing key {key!r} (got {entry!r})")
    return entry[key]


def _versions(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    raw = entry.get("versions", [entry["version"]] if "version" in entry else [DEFAULT_VERSION])
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) and v for v in raw):
        raise CatalogError(f"{where}: 'versions' must be a non-empty list of strings such as ['1.0.0']")
    return tuple(raw)


def _split_short(text: str, where: str) -> tuple[str, str]:
    scope, sep, identifier = text.partition("/")
    if not sep or not scope or not identifier:
        raise CatalogError(f"{where}: {text!r} is not 'scope/identifier'")
    return scope, identifier.split(":", 1)[0]


def load_catalog(source: str | Path | dict[str, Any], base: Catalog | None = None) -> Catalog:
    """Read a catalogue (a JSON file path or an already parsed dict) on top of ``base`` (built-ins).

    Format::

        {"apps": [{"scope": "default", "identifier": "my-app", "kind": "agent", "versions": ["1.0.0"]}],
         "models": [{"scope": "default", "identifier": "my-model"}],
         "slot_types": ["local"],
         "users": [{"username": "alice", "password": "alice-password"}],
         "responses": [{"pattern": "(?i)weather", "app": "default/my-app",
                        "events": [{"event_type": "chat", "content": "Sunny."}]},
                       {"pattern": "sum", "pipeline": {"answer": 42}}]}

    :param source: the path of a JSON file, or its content already parsed.
    :param base: the catalogue to add to (default: the built-in apps, models, slot types and user).
    :raises CatalogError: naming the malformed entry.
    """
    if isinstance(source, dict):
        data: Any = source
        origin = "catalog"
    else:
        origin = str(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CatalogError(f"cannot read catalog file {origin}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise CatalogError(f"catalog file {origin} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: the catalog must be a JSON object")
    unknown = set(data) - {"apps", "models", "slot_types", "users", "responses"}
    if unknown:
        raise CatalogError(
            f"{origin}: unknown keys {sorted(unknown)}; expected apps, models, slot_types, users, responses"
        )
    catalog = base if base is not None else Catalog.builtin()
    for i, entry in enumerate(data.get("apps", [])):
        where = f"{origin}: apps[{i}]"
        kind = _require(entry, "kind", where)
        if kind not in ("pipeline", "agent"):
            raise CatalogError(f"{where}: kind must be 'pipeline' or 'agent', got {kind!r}")
        scope = str(entry.get("scope", "default"))
        identifier = str(_require(entry, "identifier", where))
        catalog.apps[(scope, identifier)] = AppSpec(scope, identifier, kind, _versions(entry, where))
    for i, entry in enumerate(data.get("models", [])):
        where = f"{origin}: models[{i}]"
        scope = str(entry.get("scope", "default")) if isinstance(entry, dict) else "default"
        identifier = str(_require(entry, "identifier", where))
        catalog.models[(scope, identifier)] = ModelSpec(scope, identifier, _versions(entry, where))
    for i, slot_type in enumerate(data.get("slot_types", [])):
        if not isinstance(slot_type, str) or not slot_type:
            raise CatalogError(f"{origin}: slot_types[{i}] must be a non-empty string")
        if slot_type not in catalog.slot_types:
            catalog.slot_types.append(slot_type)
    for i, entry in enumerate(data.get("users", [])):
        where = f"{origin}: users[{i}]"
        catalog.users[str(_require(entry, "username", where))] = str(_require(entry, "password", where))
    for i, entry in enumerate(data.get("responses", [])):
        where = f"{origin}: responses[{i}]"
        try:
            pattern = re.compile(str(_require(entry, "pattern", where)))
        except re.error as exc:
            raise CatalogError(f"{where}: invalid regex: {exc}") from exc
        app = entry.get("app")
        if app is not None:
            app = "/".join(_split_short(str(app), where))
        pipeline = entry.get("pipeline")
        if pipeline is not None and not isinstance(pipeline, dict):
            raise CatalogError(f"{where}: 'pipeline' must be a JSON object")
        events: tuple[tuple[str, str], ...] | None = None
        if "events" in entry:
            raw = entry["events"]
            if not isinstance(raw, list):
                raise CatalogError(f"{where}: 'events' must be a list of {{event_type, content}}")
            parsed = []
            for j, event in enumerate(raw):
                content = _require(event, "content", f"{where}.events[{j}]")
                if not isinstance(content, str):
                    content = json.dumps(content, separators=(",", ":"))
                parsed.append((str(_require(event, "event_type", f"{where}.events[{j}]")), content))
            events = tuple(parsed)
        if pipeline is None and events is None:
            raise CatalogError(f"{where}: give 'pipeline' (an object) or 'events' (a list)")
        catalog.responses.append(CannedResponse(pattern, app, pipeline, events))
    return catalog
