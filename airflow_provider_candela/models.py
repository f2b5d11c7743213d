"""The Candela Sessions API wire format (Gen A), as pydantic v2 models.

This module is the one definition of the wire format in the package: the hook parses responses
into these models and serialises requests from them, the operators push their JSON form through
XCom, and the emulator validates its requests and builds its responses with them.

JSON field names are exactly those on the wire.  Response models ignore unknown fields (a newer
server may add some); request models are built by our own code and serialised with
``model_dump(mode="json", exclude_none=True)`` (the SDK omits unset keys too).

This module must not import Airflow: the emulator uses it without Airflow installed in the loop.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any, Final, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "EVENT_TYPES",
    "AgentAnswer",
    "CircuitDTO",
    "DevSessionStartRequest",
    "Directive",
    "Event",
    "HTTPValidationError",
    "ObjectId",
    "ObjectMetadata",
    "PipelineAnswer",
    "Session",
    "SessionRef",
    "SessionStartRequest",
    "SlotData",
    "SlotState",
    "SubmitPrompt",
    "TokenResponse",
    "ToolModule",
    "ValidationErrorItem",
]

#: Default scope used by Candela when a request gives none.
DEFAULT_SCOPE: Final = "default"

#: Largest prompt the provider sends (UTF-8 bytes).  A prompt is text for a language model: one far
#: larger than any model's context is a mistake (a file read whole, a template rendering a table).
MAX_PROMPT_BYTES: Final = 1024 * 1024

#: Event types a Gen A server may stream from ``/session/agent_submit``.
EVENT_TYPES: Final = frozenset({"user", "chat", "intent", "info", "wait", "sys", "result"})

# Scopes and identifiers: letters, digits, '-', '_' and '.', not starting with '.' or '-'.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
# Versions: semver-like ("1.0.0", "0.0.1-rc.1+build").
_VERSION = r"[A-Za-z0-9][A-Za-z0-9.+\-]*"
# Used with ``fullmatch`` only: ``$`` would also match before a final newline ("default\n").
_NAME_RE: Final = re.compile(_NAME)
_VERSION_RE: Final = re.compile(_VERSION)
_SHORT_FORM_RE: Final = re.compile(rf"(?P<scope>{_NAME})/(?P<identifier>{_NAME})(?::(?P<version>{_VERSION}))?")
# A lone surrogate: a code point UTF-8 cannot encode (from a JSON "\ud800" escape, or bytes decoded with
# errors="surrogateescape").  Text holding one cannot be sent, logged or stored.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


_NAME_RULES: Final = {
    "scope": (_NAME_RE, "use letters, digits, '-', '_' and '.', and start with a letter, digit or '_'"),
    "identifier": (_NAME_RE, "use letters, digits, '-', '_' and '.', and start with a letter, digit or '_'"),
    "version": (_VERSION_RE, "use a semver-like string such as '1.0.0'"),
}


def name_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` is not a well-formed ``kind`` (``"scope"``, ``"identifier"`` or ``"version"``), or None."""
    pattern, rule = _NAME_RULES[kind]
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    return f"{kind} {value!r} is not valid: {rule}"


def text_problem(value: Any) -> str | None:
    """Why ``value`` (a string, or the strings and keys of dicts, lists and models in it) is not Unicode text.

    :return: ``None`` when every string is valid, else which character is a lone surrogate, where, and
        the fix, e.g. ``"character 3 of a.template is a lone surrogate ('\\udcff'), ..."``.
    """
    found = _first_surrogate(value, "")
    if found is None:
        return None
    path, text, index = found
    where = f"character {index} of {path}" if path else f"character {index}"
    return (
        f"{where} is a lone surrogate ({text[index]!r}), which is not Unicode text: remove it, or decode the "
        "source with its real encoding"
    )


def _first_surrogate(value: Any, path: str) -> tuple[str, str, int] | None:
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return None if match is None else (path, value, match.start())
    if isinstance(value, BaseModel):
        value = {**value.__dict__, **(value.model_extra or {})}
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{path}.{key}" if path else str(key)
        found = _first_surrogate(key, f"the key {inner}") or _first_surrogate(item, inner)
        if found is not None:
            return found
    return None


class _Wire(BaseModel):
    """Base of every wire model: unknown fields are tolerated and dropped.

    Every model's validator is built when first used (``defer_build``), not at import: this module
    is imported at every DAG parse, and a parse uses few of the models, if any.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True, defer_build=True)


class _Sent(BaseModel):
    """Base of the request bodies: every string in them, at any depth, must be Unicode text.

    So a lone surrogate is refused where the body is built (the hook, the operators) and, in the
    emulator, answered with a 422 naming the field, as FastAPI does for any invalid body.
    """

    @field_validator("*")
    @classmethod
    def _unicode_field(cls, value: Any) -> Any:
        _require_unicode(value)
        return value

    @model_validator(mode="after")
    def _unicode_extra_fields(self) -> Any:
        _require_unicode(self.model_extra or {})
        return self


def _require_unicode(value: Any) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("unicode_text", problem)


class ObjectId(_Wire):
    """Identity of a Candela object (app, model, circuit, directive, session ...).

    ``version`` is a semver-like string; ``None`` means "the latest".  The short form
    ``scope/identifier:version`` (version optional) is accepted by :meth:`parse` and produced by
    ``str()``.
    """

    scope: str
    identifier: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ObjectId:
        """Parse ``scope/identifier`` or ``scope/identifier:version``.

        :raises ValueError: with the expected form in the message when ``text`` does not match.
        """
        if not isinstance(text, str):
            raise ValueError(f"expected a 'scope/identifier:version' string, got {type(text).__name__}")
        match = _SHORT_FORM_RE.fullmatch(text)  # as given: "default/x\n" is refused, not trimmed
        if match is None:
            raise ValueError(
                f"{text!r} is not of the form 'scope/identifier' or 'scope/identifier:version' "
                "(letters, digits, '-', '_' and '.'; e.g. 'default/demo-pipeline:1.0.0')"
            )
        return cls(scope=match["scope"], identifier=match["identifier"], version=match["version"])

    def __str__(self) -> str:
        base = f"{self.scope}/{self.identifier}"
        return f"{base}:{self.version}" if self.version else base

    @classmethod
    def checked(cls, scope: Any, identifier: Any, version: Any = None) -> ObjectId:
        """An id from its parts, each checked (wire parsing stays lenient; DAG authors' ids are checked).

        :raises ValueError: naming the part that is malformed.
        """
        for kind, value in (("scope", scope), ("identifier", identifier), ("version", version)):
            if value is None and kind == "version":
                continue
            problem = name_problem(kind, value)
            if problem is not None:
                raise ValueError(problem)
        return cls(scope=scope, identifier=identifier, version=version)


class ObjectMetadata(_Wire):
    """What ``start_session`` returns and what ``list_sessions`` lists: the XCom currency."""

    obj_id: ObjectId
    domain: str
    created_by: str
    created_at: datetime
    description: str | None = None


#: A session as the hook's methods take it: its metadata (or dict, e.g. a start task's XCom), its id,
#: or ``"scope/identifier[:version]"``.
SessionRef: TypeAlias = "ObjectId | ObjectMetadata | str | Mapping[str, Any]"


class Session(_Wire):
    """A stored session, as returned by ``GET /sessions/``.  ``app`` is null for dev sessions."""

    app: ObjectId | None
    model_cfg: ObjectId
    host_id: str
    parent_session: ObjectId | None = None
    circuit_override: ObjectId | None = None
    directive_override: ObjectId | None = None
    dev_session: bool | None = None


class SessionStartRequest(_Wire, _Sent):
    """Body of ``POST /session``: start an app (agent or pipeline) with a model."""

    app: ObjectId
    model_cfg: ObjectId
    scope: str | None = None
    parent_session: ObjectId | None = None
    circuit_override: ObjectId | None = None
    directive_override: ObjectId | None = None


class CircuitDTO(_Sent):
    """A circuit sent inline by a dev session.  Validated at the top level only: ``first`` names
    the entry node and ``nodes`` maps node ids to node objects (kept as opaque JSON)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    first: str = Field(min_length=1)
    nodes: dict[str, dict[str, Any]]

    @field_validator("nodes")
    @classmethod
    def _first_node_exists(cls, nodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not nodes:
            raise ValueError("a circuit needs at least one node")
        return nodes


class Directive(_Sent):
    """A directive sent inline by a dev session (validated at the top level; extra keys kept)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    point: str | None = None
    hide: bool | None = None
    identity: str | None = None
    purpose: str | None = None
    style: str | None = None
    restriction: list[str] | None = None
    context_vals: dict[str, str] | None = None


class ToolModule(_Sent):
    """Python source of tool classes for a dev session."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    content: str


class DevSessionStartRequest(_Wire, _Sent):
    """Body of ``POST /session/dev``: run an inline circuit and directive with a model."""

    model_id: ObjectId
    circuit: CircuitDTO
    directive: Directive
    scope: str | None = None
    parent_session: ObjectId | None = None
    tool_module_override: ToolModule | None = None


class SubmitPrompt(_Wire, _Sent):
    """Body of ``POST /session/pipeline_submit`` and ``POST /session/agent_submit``."""

    prompt: str
    session_id: str
    scope: str = DEFAULT_SCOPE


class PipelineAnswer(BaseModel):
    """The answer of ``POST /session/pipeline_submit``: an arbitrary JSON object, conventionally
    ``{"metadata": {"request_id": ...}, "result": ...}``; every field the server sent is kept.
    """

    model_config = ConfigDict(extra="allow", defer_build=True)

    metadata: dict[str, Any] = Field(default_factory=dict)
    result: Any = None

    @property
    def request_id(self) -> str | None:
        """``metadata.request_id``, when the server sent one."""
        value = self.metadata.get("request_id")
        return None if value is None else str(value)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON object exactly as the server sent it (no field added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Event(_Wire):
    """One line of the agent NDJSON stream.

    ``event_type`` is one of :data:`EVENT_TYPES` on a Gen A server; other values are kept (not
    rejected) so that a newer server does not break a running DAG.  For ``result`` events,
    ``content`` is itself a JSON string ``{"content_type": ..., "content": ...}``.
    """

    event_type: str
    content: str


class AgentAnswer:
    """What an agent answered, summed up as its events arrive: counts, the chat text, the decoded results.

    The XCom of the agent prompt operator and the answer of the managed agent are made of it; the
    operator's log lines are cut from the same events by its transcript.

    :param keep_events: also keep every event (``return_events=True``).
    """

    def __init__(self, *, keep_events: bool = False) -> None:
        self.keep_events = keep_events
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, str]] = []
        #: One entry per ``result`` event: its content decoded from JSON (the raw text when it is not JSON).
        self.results: list[Any] = []
        self._chat: list[str] = []

    def add(self, event_type: str, content: str) -> None:
        """Count one event; keep its chat text or decode its result."""
        self.counts[event_type] += 1
        if self.keep_events:
            self.events.append({"event_type": event_type, "content": content})
        if event_type == "chat":
            self._chat.append(content)
        elif event_type == "result":
            self.results.append(self.decoded(content))

    @staticmethod
    def decoded(content: str) -> Any:
        """A ``result`` event's content decoded from JSON (the raw text when it is not JSON)."""
        try:
            return json.loads(content)
        except ValueError:
            return content

    @property
    def response(self) -> str:
        """The chat fragments joined: the agent's reply."""
        return "".join(self._chat)

    def summary(self, session: dict[str, Any]) -> dict[str, Any]:
        """``{"session", "response", "results", "event_counts"}`` (+ ``"events"`` when kept)."""
        out: dict[str, Any] = {
            "session": session,
            "response": self.response,
            "results": self.results,
            "event_counts": dict(self.counts),
        }
        if self.keep_events:
            out["events"] = self.events
        return out


class SlotState(IntEnum):
    """Lifecycle of a user's slot (``GET /slot/state``); sessions run only on HOST_READY."""

    START_REQUEST = 0
    NODE_STARTING = 1
    HOST_STARTING = 2
    HOST_READY = 3
    STOPPING = 4
    HOST_DISPOSED = 5
    ERRORED = 6
    HOST_GONE = 7
    HOST_IDLE = 8

    @property
    def label(self) -> str:
        """For messages, e.g. ``"HOST_READY (3)"``."""
        return f"{self.name} ({self.value})"

    @property
    def failed(self) -> bool:
        """Whether a slot in this state never becomes ready (``ERRORED``, ``HOST_GONE``)."""
        return self in (SlotState.ERRORED, SlotState.HOST_GONE)

    def failure(self, slot_id: str) -> str | None:
        """What to tell the user when slot ``slot_id`` is in this state and it :attr:`failed`, else None."""
        if not self.failed:
            return None
        return (
            f"The Candela slot {slot_id} went to {self.label} while starting: dispose of it "
            "(CandelaStopSessionOperator(dispose_slot=True) or CandelaHook.dispose_slot()) and run the task again "
            "to get a new slot, or ask FINBOURNE support if it keeps failing"
        )


class SlotData(_Wire):
    """``GET /slot/metadata``: the slot bound to the calling user."""

    slot_id: str
    slot_type: str
    domain: str
    state: int | None = None
    assigned_to: str | None = None
    url: str | None = None
    created: datetime | None = None
    assigned: datetime | None = None
    disposed: datetime | None = None
    ready: datetime | None = None


class ValidationErrorItem(_Wire):
    """One entry of a FastAPI 422 body."""

    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(_Wire):
    """A FastAPI 422 body: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""

    detail: list[ValidationErrorItem] | None = None

    def lines(self) -> list[str]:
        """One ``loc.path: msg`` line per error, e.g. ``body.app.identifier: Field required``."""
        return [".".join(str(part) for part in item.loc) + f": {item.msg}" for item in self.detail or []]


class TokenResponse(_Wire):
    """Body of a successful ``POST <token_url>`` (password or refresh grant)."""

    access_token: str
    #: Optional in OAuth2: without one, the token is renewed with a new password grant.
    refresh_token: str | None = None
    #: Seconds the token lives; 0 or less means unknown (renewed only when the API refuses it).
    expires_in: int = 3600
    token_type: str = "Bearer"
