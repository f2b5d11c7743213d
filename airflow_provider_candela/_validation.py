"""Every check and coercion of an argument, for the hook, the operators, the sensor and the trigger.

DAG authors pass ids in several forms (an :class:`~airflow_provider_candela.models.ObjectId`, a
dict, an ``ObjectMetadata`` dict pulled from XCom, or the short form ``scope/identifier:version``);
these helpers turn them into models and raise :class:`CandelaInputError` with a message that names
the argument, the task and the fix.

Values that are still templates (``"{{ ... }}"``) or ``XComArg`` objects at DAG parse time are not
checked at construction (:func:`is_resolved` tells); the operators check them again at execute,
after rendering.  Messages start with ``Invalid `argument` for task 'id'`` from a task, or
``Invalid argument `argument``` from a hook method called directly (``task_id=None``).

The few text helpers every message needs live here too: :func:`shorten`, :func:`validation_problems`
and the true/false words of :func:`parse_bool`.

Import-cheap: pydantic models and the exception module only, no hook and no ``requests``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from airflow_provider_candela.exceptions import CandelaInputError, CandelaOutputError
from airflow_provider_candela.models import (
    DEFAULT_SCOPE,
    MAX_PROMPT_BYTES,
    ObjectId,
    ObjectMetadata,
    name_problem,
    text_problem,
)

__all__ = [
    "DEFAULT_CONN_ID",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "IF_SESSION_RUNNING",
    "LONGEST_LIMIT",
    "as_utc",
    "check_session_form",
    "coerce_answer",
    "coerce_batch_inputs",
    "coerce_bool",
    "coerce_choice",
    "coerce_conn_id",
    "coerce_conn_ids",
    "coerce_flag",
    "coerce_hook_params",
    "coerce_model",
    "coerce_name",
    "coerce_object_id",
    "coerce_older_than",
    "coerce_optional_name",
    "coerce_output_type",
    "coerce_positive_seconds",
    "coerce_prompt",
    "coerce_returned_prompt",
    "coerce_session",
    "coerce_text",
    "coerce_unicode",
    "id_json",
    "is_resolved",
    "parse_bool",
    "parse_max_retries",
    "parse_timeout",
    "set_on_task",
    "shorten",
    "time_limit",
    "validation_problems",
    "when_resolved",
]

M = TypeVar("M", bound=BaseModel)

#: What a start does when Candela answers that a session already runs on the user's slot: stop it and
#: start again, or fail.
IF_SESSION_RUNNING: Final = ("stop", "fail")

_ID_FORMS = (
    "an ObjectId, a dict {'scope': ..., 'identifier': ..., 'version': ...}, an ObjectMetadata dict "
    "(e.g. the XCom of a start task) or a 'scope/identifier:version' string such as 'default/my-app:1.0.0'"
)
_PLAIN = (str, int, float, bool, datetime, timedelta, ObjectId, ObjectMetadata, type(None))
_DURATION_RE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>d|h|m|s|days?|hours?|minutes?|seconds?)?\s*")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_LONGEST_SECONDS: Final = timedelta.max.total_seconds()
#: The longest time limit kept as a deadline (about 100 years); a longer one, ``inf`` included, is no limit.
LONGEST_LIMIT: Final = 100 * 365 * 86400.0


#: The connection id every hook, operator, sensor and trigger uses unless given another.
DEFAULT_CONN_ID: Final = "candela_default"


#: The connection's ``timeout`` (connect, read seconds) and ``max_retries`` when it sets none.
DEFAULT_TIMEOUT: Final = (10.0, 300.0)
DEFAULT_MAX_RETRIES: Final = 5


def parse_timeout(value: Any) -> tuple[float, float]:
    """``timeout`` (connection extra, hook argument or ``hook_params``) as ``(connect, read)`` seconds.

    :raises ValueError: saying what is expected.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_TIMEOUT
    parts: list[Any]
    if isinstance(value, list | tuple):
        parts = list(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [value]
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 2) or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise ValueError("expected one positive number of seconds or 'connect,read' such as '10,300'")
    return (numbers[0], numbers[-1])


def parse_max_retries(value: Any) -> int:
    """``max_retries`` (connection extra, hook argument or ``hook_params``): a whole number >= 0.

    :raises ValueError: saying what is expected.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MAX_RETRIES
    try:
        number = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        number = -1
    if isinstance(value, bool) or number < 0:
        raise ValueError("expected a whole number >= 0 such as 5")
    return number


def coerce_hook_params(value: Any, *, task_id: str) -> dict[str, Any]:
    """``hook_params`` of a task, checked at parse: only ``timeout`` and ``max_retries``, each well formed.

    Returned JSON-safe (a ``timeout`` tuple becomes a list) so that a trigger can serialize it as it is.

    :raises CandelaInputError: naming the key and what it takes.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CandelaInputError(
            f"Invalid `hook_params` for task '{task_id}': expected a dict with `timeout` and/or `max_retries`, "
            f"got {type(value).__name__}."
        )
    parsers = {"timeout": parse_timeout, "max_retries": parse_max_retries}
    unknown = sorted(set(value) - set(parsers), key=str)
    if unknown:
        raise CandelaInputError(
            f"Invalid `hook_params` for task '{task_id}': unknown key(s) {', '.join(map(repr, unknown))}; "
            "it takes `timeout` and `max_retries` (other settings belong to the connection)."
        )
    for key, item in value.items():
        try:
            parsers[key](item)
        except ValueError as err:
            raise CandelaInputError(
                f"Invalid `hook_params['{key}']` for task '{task_id}': {err}, got {item!r}."
            ) from None
    return {key: list(item) if isinstance(item, tuple) else item for key, item in value.items()}


def set_on_task(
    values: Mapping[str, Any], defaults: Mapping[str, Any], default_args: Mapping[str, Any] | None
) -> list[str]:
    """The names in ``values`` the task itself set: not left at their default, not filled from ``default_args``.

    Airflow fills a named argument from the DAG's ``default_args`` before the operator sees it; an option
    that applies to some tasks only (e.g. a start option beside a running session) is ignored when it came
    from there, and refused only when the task itself set it.
    """
    from_dag = default_args or {}

    def left_alone(name: str, value: Any) -> bool:
        default = defaults[name]
        if isinstance(default, tuple) and isinstance(value, list | tuple):
            return not value  # an empty collection is the empty default
        return bool(value is default or value == default)

    return [
        name
        for name, value in values.items()
        if not left_alone(name, value) and not (name in from_dag and from_dag[name] is value)
    ]


def coerce_conn_id(value: Any, *, task_id: str | None = None) -> str:
    """``candela_conn_id``: a non-blank string (a template is rendered before the hook reads it)."""
    if not isinstance(value, str) or not value.strip():
        raise CandelaInputError(
            f"{_invalid('candela_conn_id', task_id)}: expected a connection id such as {DEFAULT_CONN_ID!r}, "
            f"got {_shown(value)}."
        )
    return value


def as_utc(value: datetime) -> datetime:
    """``value`` with a time zone: a naive datetime (Candela sends some) is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters (a 10 MB value must not become a 10 MB message)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    return shorten(repr(value))


def validation_problems(exc: ValidationError, limit: int = 5, *, root: str | None = None) -> str:
    """The first ``limit`` errors of ``exc`` for a message: ``"missing field 'first'; nodes.a: <msg>"``.

    :param root: what to say of an error about the value as a whole (e.g. ``"expected an object, got list"``).
    """
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:limit]:
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        elif loc:
            parts.append(f"{loc}: {error['msg']}")
        else:
            parts.append(root or str(error["msg"]))
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


#: Words a flag may be given as (connection extras, templated operator arguments).
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def parse_bool(text: str) -> bool | None:
    """``True``/``False`` for a true/false word (any case, surrounding blanks ignored), else ``None``."""
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else None


def _invalid(argument: str, task_id: str | None) -> str:
    """The start of a message: ``Invalid `prompt` for task 'ask'`` (or ``Invalid argument `prompt```, from a hook)."""
    return f"Invalid `{argument}` for task '{task_id}'" if task_id is not None else f"Invalid argument `{argument}`"


def is_resolved(value: Any) -> bool:
    """Whether ``value`` is a plain value that can be validated now (at DAG parse time).

    ``False`` for Jinja templates (strings containing ``{{`` or ``{%``), ``XComArg`` objects and
    containers holding any of them: those are rendered by Airflow just before ``execute``.
    """
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, Mapping):
        return all(is_resolved(k) and is_resolved(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_resolved(v) for v in value)
    return isinstance(value, _PLAIN)


def _parse_structured_text(text: str) -> Any:
    """A dict or list rendered by Jinja (``"{'scope': ...}"``) or JSON text back into a dict or list."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise ValueError(f"{text!r} looks like a dict but could not be parsed ({err})") from None


def when_resolved(value: Any, check: Callable[[Any], object]) -> None:
    """``check(value)`` at parse, unless ``value`` is still a template or an XComArg (checked when the task runs)."""
    if is_resolved(value):
        check(value)


def coerce_object_id(value: Any, *, argument: str, task_id: str | None = None) -> ObjectId:
    """Turn any accepted id form into a validated :class:`ObjectId`.

    :param value: an ``ObjectId``, an ``ObjectMetadata`` (or its dict), a ``{scope, identifier,
        version}`` dict, or a ``scope/identifier[:version]`` string (a JSON or Python-literal dict
        rendered by a template is accepted too).
    :param argument: name of the operator argument, for the error message.
    :param task_id: the task, for the error message (``None`` from a hook method).
    :raises CandelaInputError: naming the argument, the task and the accepted forms.
    """
    try:
        parsed: Any = value
        if isinstance(parsed, str) and parsed.strip().startswith("{"):
            parsed = _parse_structured_text(parsed.strip())
        if isinstance(parsed, ObjectMetadata):
            parsed = parsed.obj_id
        if isinstance(parsed, ObjectId):
            return ObjectId.checked(parsed.scope, parsed.identifier, parsed.version)
        if isinstance(parsed, str):
            return ObjectId.parse(parsed)
        if isinstance(parsed, Mapping):
            data = dict(parsed)
            if "obj_id" in data:  # an ObjectMetadata dict, e.g. the XCom of a start task
                data = data["obj_id"]
                if isinstance(data, ObjectId):
                    return coerce_object_id(data, argument=argument, task_id=task_id)
                if not isinstance(data, Mapping):
                    raise ValueError(f"'obj_id' must be a dict, got {type(data).__name__}")
                data = dict(data)
            unknown = sorted(set(data) - {"scope", "identifier", "version"})
            if unknown:
                raise ValueError(f"unexpected keys {unknown}")
            if data.get("version") == "":
                data["version"] = None
            oid = ObjectId.model_validate(data)
            return ObjectId.checked(oid.scope, oid.identifier, oid.version)
        raise ValueError(f"got a {type(value).__name__}")
    except (ValueError, TypeError, ValidationError) as err:
        reason = validation_problems(err) if isinstance(err, ValidationError) else str(err)
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: {reason}. Pass {_ID_FORMS} (got {_shown(value)})."
        ) from None


def coerce_model(value: Any, model: type[M], *, argument: str, task_id: str | None = None, example: str = "") -> M:
    """``value`` (a ``model`` instance or a dict) validated as ``model`` (e.g. a dev session's circuit).

    :raises CandelaInputError: listing the fields that did not fit.
    """
    if isinstance(value, model):
        return value
    try:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a {model.__name__} or a dict, got {type(value).__name__}")
        return TypeAdapter(model).validate_python(dict(value))
    except (TypeError, ValidationError) as err:
        reason = validation_problems(err) if isinstance(err, ValidationError) else str(err)
        such_as = f" such as {example}" if example else ""
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: {reason}. Pass a {model.__name__} or a dict{such_as}."
        ) from None


def coerce_session(
    session: Any,
    *,
    session_id: str | None = None,
    scope: str | None = None,
    version: str | None = None,
    task_id: str | None = None,
    argument: str = "session",
) -> ObjectId:
    """The session a prompt/stop/delete/sensor task works on.

    Either ``session`` (any form accepted by :func:`coerce_object_id`, typically ``start.output``)
    or ``session_id`` (the session identifier) plus an optional ``scope`` (default ``"default"``);
    ``version`` (optional, already checked with :func:`coerce_name`) narrows either to one version.

    :raises CandelaInputError: when neither or both are given, or a value is malformed or contradicts another.
    """
    oid = _session(session, session_id=session_id, scope=scope, task_id=task_id, argument=argument)
    if not version:
        return oid
    if oid.version and oid.version != version:
        raise CandelaInputError(
            f"{_who(task_id)}: `version`={version!r} contradicts the version of `{argument}` ({oid.version!r})."
        )
    return ObjectId.checked(oid.scope, oid.identifier, version)


def _who(task_id: str | None) -> str:
    return f"Task '{task_id}'" if task_id is not None else "The call"


def _session(session: Any, *, session_id: Any, scope: str | None, task_id: str | None, argument: str) -> ObjectId:
    who = _who(task_id)
    if session is not None and session_id:
        raise CandelaInputError(
            f"{who} got both `{argument}` and `session_id`: pass one of them "
            f"(`{argument}=start.output` or `session_id=...` with `scope=...`)."
        )
    if session is not None:
        oid = coerce_object_id(session, argument=argument, task_id=task_id)
        if scope and scope != oid.scope:
            raise CandelaInputError(
                f"{who}: `scope`={scope!r} contradicts the scope of `{argument}` ({oid.scope!r}). "
                f"Drop `scope` or make them equal."
            )
        return oid
    if session_id:
        if not isinstance(session_id, str):
            raise CandelaInputError(
                f"{_invalid('session_id', task_id)}: expected the session identifier as a string, "
                f"got {type(session_id).__name__} ({_shown(session_id)})."
            )
        scope = coerce_name(scope, kind="scope", argument="scope", task_id=task_id)
        try:
            return ObjectId.checked(scope or DEFAULT_SCOPE, session_id.strip())
        except ValueError as err:
            raise CandelaInputError(f"{_invalid('session_id', task_id)}: {err} (got {session_id!r}).") from None
    raise CandelaInputError(
        f"{who} needs a session: pass `{argument}=start.output` (the XCom of a "
        "CandelaStartSessionOperator), or `session_id='<identifier>'` (and `scope=` when not 'default')."
    )


def id_json(oid: ObjectId) -> dict[str, Any]:
    """The JSON form of a session id, as put in XCom and events."""
    return oid.model_dump(mode="json")


def coerce_unicode(value: str, *, argument: str, task_id: str | None = None) -> str:
    """``value``, when it is Unicode text (a string with a lone surrogate cannot be sent or logged).

    :raises CandelaInputError: naming the argument, the task, the position of the bad character and the fix.
    """
    problem = text_problem(value)
    if problem is not None:
        raise CandelaInputError(f"{_invalid(argument, task_id)}: {problem}.")
    return value


def coerce_text(value: Any, *, argument: str, task_id: str | None = None) -> str:
    """A non-empty string argument of Unicode text (e.g. ``prompt``).

    :param task_id: the task, for the message; ``None`` when a hook method is called directly.
    :raises CandelaInputError: when ``value`` is not a string, is blank or is not Unicode text.
    """
    where = _invalid(argument, task_id)
    if not isinstance(value, str):
        raise CandelaInputError(f"{where}: expected a string, got {type(value).__name__} ({_shown(value)}).")
    if not value.strip():
        raise CandelaInputError(f"{where}: it is empty. Pass a non-empty string.")
    return coerce_unicode(value, argument=argument, task_id=task_id)


def coerce_prompt(value: Any, *, task_id: str | None = None, max_bytes: int = MAX_PROMPT_BYTES) -> str:
    """A prompt: a non-empty string of Unicode text of at most ``max_bytes`` (UTF-8).

    The one check of a prompt, for the operators and the hook (``task_id=None``).

    :raises CandelaInputError: naming the task and the fix.
    """
    text = coerce_text(value, argument="prompt", task_id=task_id)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise CandelaInputError(
            f"{_invalid('prompt', task_id)}: it is {size:,} bytes (UTF-8), more than the {max_bytes:,} a prompt "
            "may have. Shorten it or split it into several prompts."
        )
    return text


def coerce_returned_prompt(value: Any, *, decorator: str, task_id: str) -> str:
    """The prompt a decorated function returned: a string (then checked as any prompt).

    :raises CandelaInputError: naming the decorator, the task and what the function returned.
    """
    if not isinstance(value, str):
        raise CandelaInputError(
            f"The function of {decorator} task '{task_id}' must return the prompt as a string, "
            f"got {type(value).__name__} ({_shown(value)}). Return the prompt text, e.g. f'Summarise {{ds}}'."
        )
    return coerce_prompt(value, task_id=task_id)


def coerce_batch_inputs(value: Any, *, task_id: str, argument: str = "prompts") -> list[tuple[str, str]]:
    """The inputs of a batch task as ``(key, prompt)`` pairs, in order; every prompt checked.

    An input is a prompt string, or a dict ``{"prompt": str, "key": str}`` (``key`` defaults to the input's
    index, as a string, and must be unique).  Any sequence but a string is taken as a list: a tuple, or the
    lazy sequence Airflow passes for the outputs of a mapped task (read once, here).

    :raises CandelaInputError: naming the argument, the input (its index) and the fix.
    """
    where = _invalid(argument, task_id)
    if isinstance(value, str) and value.strip().startswith("["):  # a list rendered by Jinja, or JSON text
        try:
            value = _parse_structured_text(value.strip())
        except ValueError:
            raise CandelaInputError(f"{where}: {shorten(value)!r} looks like a list but could not be parsed.") from None
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Sequence):
        raise CandelaInputError(
            f"{where}: expected a list of prompts (strings, or dicts {{'prompt': ..., 'key': ...}}; any "
            "sequence but a string), "
            f"got {type(value).__name__} ({_shown(value)})."
        )
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        here = f"{argument}[{index}]"
        key: Any = str(index)
        text: Any = item
        if isinstance(item, Mapping):
            unknown = sorted(set(map(str, item)) - {"prompt", "key"})
            if "prompt" not in item or unknown:
                problem = "has no 'prompt'" if "prompt" not in item else f"has unknown keys {unknown}"
                raise CandelaInputError(
                    f"{_invalid(here, task_id)}: the dict {problem}; an input is a prompt string or "
                    "{'prompt': '...', 'key': '...'}."
                )
            key = item.get("key", key)
            if not isinstance(key, str) or not key.strip():
                raise CandelaInputError(
                    f"{_invalid(here, task_id)}: its 'key' must be a non-empty string, got {_shown(key)}."
                )
            text = item["prompt"]
        try:
            prompt = coerce_prompt(text, task_id=task_id)
        except CandelaInputError as err:
            raise CandelaInputError(str(err).replace("`prompt`", f"`{here}`", 1)) from None
        if key in seen:
            raise CandelaInputError(
                f"{_invalid(here, task_id)}: key {key!r} is also the key of input {seen[key]}; keys must be unique."
            )
        seen[key] = index
        pairs.append((key, prompt))
    return pairs


def coerce_conn_ids(value: Any, *, task_id: str) -> list[str]:
    """``candela_conn_ids``: a non-empty list of distinct connection ids (one Candela user each)."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise CandelaInputError(
            f"{_invalid('candela_conn_ids', task_id)}: expected a non-empty list of connection ids such as "
            f"['candela_u1', 'candela_u2'], got {_shown(value)}."
        )
    ids = [coerce_conn_id(item, task_id=task_id) for item in value]
    twice = sorted({item for item in ids if ids.count(item) > 1})
    if twice:
        raise CandelaInputError(
            f"{_invalid('candela_conn_ids', task_id)}: {', '.join(map(repr, twice))} appears more than once; "
            "each connection (Candela user) runs one session, so list each once."
        )
    return ids


def check_session_form(
    *, running: bool, app: Any, model: Any, start_options: list[str], task_id: str, argument: str = "session"
) -> None:
    """Exactly one form of a prompt task's session: a running one, or ``app`` + ``model`` (a one-task session).

    :param running: whether ``session`` or ``session_id`` was given.
    :param start_options: the names of the start options given (e.g. ``slot_type``): one-task sessions only.
    :raises CandelaInputError: for both forms, neither, half of ``app`` + ``model``, or start options
        without ``app``.
    """
    one_task = app is not None or model is not None
    forms = (
        f"`{argument}=start.output` (or `session_id=...`) to prompt a running session, or `app=` and `model=` "
        "for a session that this task starts and stops"
    )
    if running and one_task:
        given = ", ".join(f"`{name}`" for name, value in (("app", app), ("model", model)) if value is not None)
        raise CandelaInputError(f"Task '{task_id}' got both a running session and {given}: pass one of {forms}.")
    if not running and not one_task:
        raise CandelaInputError(f"Task '{task_id}' needs a session: pass {forms}.")
    if one_task and (app is None or model is None):
        missing, given = ("model", "app") if model is None else ("app", "model")
        raise CandelaInputError(
            f"Task '{task_id}' got `{given}` but no `{missing}`: a session that the task starts needs both "
            f"(e.g. app='default/demo-pipeline', model='default/demo-model'), or pass `{argument}=` instead."
        )
    if not one_task and start_options:
        names = ", ".join(f"`{name}`" for name in start_options)
        raise CandelaInputError(
            f"Task '{task_id}' got {names}, which apply only to a session the task starts: pass `app=` and "
            f"`model=` instead of `{argument}`, or drop them (the start task of `{argument}` takes them)."
        )


def coerce_output_type(value: Any, *, task_id: str, argument: str = "output_type") -> type[BaseModel] | None:
    """``None``, or a pydantic model class (the answer is validated into it).

    :raises CandelaInputError: naming the argument, the task and what was given.
    """
    if value is None or (isinstance(value, type) and issubclass(value, BaseModel)):
        return value
    what = f"an instance of {type(value).__name__}" if isinstance(value, BaseModel) else _shown(value)
    raise CandelaInputError(
        f"{_invalid(argument, task_id)}: expected a pydantic model class (a subclass of pydantic.BaseModel), "
        f"got {what}. Pass the class itself, e.g. output_type=TradeSummary."
    )


def coerce_answer(
    value: Any,
    output_type: type[M],
    *,
    what: str,
    task_id: str,
    advice: str = "The answer is in the task log: make `output_type` match it, or change the prompt or the app.",
) -> dict[str, Any]:
    """``value`` (a dict, or JSON text) validated as ``output_type``, in its JSON form (for XCom).

    The JSON form is by alias (``model_dump(mode="json", by_alias=True)``), as the answer came: a model
    with aliases (e.g. ``alias_generator=to_camel``) reads it back with ``output_type.model_validate``.

    :param what: what ``value`` is, for the message (e.g. "the pipeline's `result`").
    :param advice: what to do about it, the end of the message.
    :raises CandelaOutputError: listing the fields that did not fit.
    """
    try:
        if isinstance(value, str | bytes):
            model = output_type.model_validate_json(value)
        else:
            model = output_type.model_validate(value)
    except ValidationError as err:
        root = None if isinstance(value, str | bytes) else f"expected an object, got {type(value).__name__}"
        raise CandelaOutputError(
            f"Task '{task_id}': {what} does not fit `output_type` {output_type.__name__}: "
            f"{validation_problems(err, root=root)}. {advice}"
        ) from None
    return model.model_dump(mode="json", by_alias=True)


_NAME_HINTS: Final = {
    "scope": "Use letters, digits, '-', '_' and '.', starting with a letter, digit or '_' (e.g. 'default').",
    "version": "Use a semver-like string such as '1.0.0', or leave it empty for the latest.",
}


def coerce_name(
    value: Any, *, kind: Literal["scope", "version"], argument: str, task_id: str | None = None
) -> str | None:
    """An optional scope-like name (``scope``, ``slot_type``) or version: ``None``, or a well-formed string.

    :raises CandelaInputError: naming the argument, the task and the form expected.
    """
    if value is None or value == "":
        return None
    name = coerce_text(value, argument=argument, task_id=task_id)
    if name_problem(kind, name) is not None:  # checked as given: "default\n" is not "default"
        raise CandelaInputError(f"{_invalid(argument, task_id)}: {name!r} is not a valid {kind}. {_NAME_HINTS[kind]}")
    return name


def coerce_choice(value: Any, choices: tuple[str, ...], *, argument: str, task_id: str | None = None) -> str:
    """One of ``choices`` (e.g. ``if_session_running``)."""
    if value not in choices:
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: expected one of {', '.join(map(repr, choices))}, got {_shown(value)}."
        )
    return str(value)


def coerce_positive_seconds(value: Any, *, argument: str, task_id: str | None = None) -> float:
    """A positive number of seconds (a timeout, a poll interval)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: expected a positive number of seconds, got {_shown(value)}."
        )
    return float(value)


def time_limit(seconds: float) -> float | None:
    """``seconds`` (from :func:`coerce_positive_seconds`) as a deadline: ``None``, no limit, for a wait without end.

    ``float("inf")`` or anything beyond a century (:data:`LONGEST_LIMIT`) waits without a deadline:
    the locks, timers and datetimes on the way overflow a few centuries on (``threading.TIMEOUT_MAX`` is 292 years).
    """
    return seconds if seconds <= LONGEST_LIMIT else None


def coerce_optional_name(value: Any, *, argument: str, task_id: str | None = None) -> str | None:
    """An optional scope / user name / identifier prefix: ``None``, or a non-blank string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: expected a string, got {type(value).__name__} ({_shown(value)})."
        )
    return coerce_unicode(value.strip(), argument=argument, task_id=task_id)


def coerce_flag(value: Any, *, argument: str, task_id: str | None = None) -> bool:
    """A flag that is not templated: ``True`` or ``False`` only."""
    if not isinstance(value, bool):
        raise CandelaInputError(f"{_invalid(argument, task_id)}: expected True or False, got {_shown(value)}.")
    return value


def coerce_bool(value: Any, *, argument: str, task_id: str | None = None) -> bool:
    """A flag given as a bool, or as text rendered by a template (``"True"``, ``"false"``, ``"1"`` ...).

    :raises CandelaInputError: naming the argument, the task and the accepted values.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        # A template that renders nothing (or None) means "not set": False.
        flag = False if value.strip().lower() in ("", "none") else parse_bool(value)
        if flag is not None:
            return flag
    raise CandelaInputError(
        f"{_invalid(argument, task_id)}: expected True or False (or 'true'/'false' from a template), "
        f"got {_shown(value)}."
    )


def coerce_older_than(value: Any, *, task_id: str, argument: str = "older_than") -> timedelta | None:
    """A minimum session age for cleanup.

    Accepts a ``timedelta``, a number of **seconds**, or a string: a number of seconds (``"3600"``)
    or a number with a unit (``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2 days"``), as a template
    may render.  A duration beyond ``timedelta.max`` (``float("inf")``, ``"99999999999d"``) is
    ``timedelta.max``: older than any session, so it matches none.

    :raises CandelaInputError: naming the argument, the task and the accepted forms (also for ``nan``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, timedelta) and value >= timedelta(0):
        return value
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(max(min(value, _LONGEST_SECONDS), -1.0))  # an int too large for a float is no error
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.lower())
        if match:
            unit = (match["unit"] or "s")[0]
            seconds = float(match["number"]) * _UNIT_SECONDS[unit]
    if seconds is None or not seconds >= 0:  # nan is not >= 0
        raise CandelaInputError(
            f"{_invalid(argument, task_id)}: {_shown(value)} is not a non-negative duration. "
            "Pass a timedelta, a number of seconds, or a string such as '7d', '12h', '30m' or '3600'."
        )
    return timedelta.max if seconds >= _LONGEST_SECONDS else timedelta(seconds=seconds)
