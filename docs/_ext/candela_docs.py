"""The documentation site's own Sphinx extension: generated pages and the checks ``make docs`` fails on.

- ``candela-config`` (reST directive): the ``[candela]`` options, from the provider info's ``config`` section.
- ``candela-bench``: the figures of the last ``make bench`` run, from bench/results.json, with when and where
  they were measured.
- Docstrings: every public name of :data:`PUBLIC_MODULES` (the module's ``__all__``, else its names without a
  leading underscore) and every public method of its classes has a docstring, and its ``:param:`` lines name
  exactly the parameters of its signature (for a class, of ``__init__``). Each miss is a warning, so ``-W``
  fails the build.
- Internal links: after the HTML is written, every relative link and ``#anchor`` of every page must lead to a
  file and an id that exist (nothing outside the build is requested).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from collections.abc import Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]

#: The modules of the API reference: what a user imports. Every one must be documented by an ``automodule``.
PUBLIC_MODULES = (
    "airflow_provider_candela.hooks.candela",
    "airflow_provider_candela.hooks.managed_agent",
    "airflow_provider_candela.operators.sessions",
    "airflow_provider_candela.operators.batch",
    "airflow_provider_candela.operators.stored_sessions",
    "airflow_provider_candela.decorators.sessions",
    "airflow_provider_candela.sensors.sessions",
    "airflow_provider_candela.triggers.sessions",
    "airflow_provider_candela.triggers.slots",
    "airflow_provider_candela.models",
    "airflow_provider_candela.exceptions",
    "airflow_provider_candela.testing",
    "airflow_provider_candela.emulator",
    "airflow_provider_candela.connection_form",
    "airflow_provider_candela.get_provider_info",
    "airflow_provider_candela.plugins.candela_page",
)

#: Private classes whose docstrings hold the options of the public classes built on them; documented and
#: checked like public names (the reference shows them as the bases of the public operators).
DOCUMENTED_BASES = (
    "airflow_provider_candela.operators._base.CandelaOperator",
    "airflow_provider_candela.operators.sessions._StartOperatorBase",
    "airflow_provider_candela.operators.sessions._PromptOperatorBase",
    "airflow_provider_candela.operators.batch._BatchOperatorBase",
)

_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\*{0,2}\w+)\s*:", re.MULTILINE)


# --------------------------------------------------------------------------------------------------
# Docstrings


def public_names(module: Any) -> list[str]:
    """The module's ``__all__``, else the names it defines that do not start with an underscore."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    ]


def _signature(func: Any, *, drop_first: bool) -> list[inspect.Parameter] | None:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    return params[1:] if drop_first and params else params


def _check_params(
    where: str,
    doc: str,
    params: list[inspect.Parameter] | None,
    *,
    required: bool = True,
    passed_on: set[str] = frozenset(),  # type: ignore[assignment]
) -> Iterator[str]:
    """``:param:`` lines of ``doc`` against the signature's ``params``.

    Names starting with ``_`` are not the caller's business. ``*args`` / ``**kwargs`` may go undocumented, and
    with ``**kwargs`` the docstring may document what it passes on (``passed_on``: a base's ``__init__``
    parameters). ``required=False`` (a method): a docstring without any ``:param:`` line passes; one with them
    must list every parameter.
    """
    if params is None:
        return
    variadic = {p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    names = [p.name for p in params if not p.name.startswith("_")]
    documented = [name.lstrip("*") for name in _PARAM.findall(doc)]
    if not documented and (not names or not required):
        return
    missing = [n for n in names if n not in documented and n not in variadic]
    allowed_extra = passed_on if any(p.kind == p.VAR_KEYWORD for p in params) else set()
    extra = [n for n in documented if n not in names and n not in allowed_extra]
    twice = sorted({n for n in documented if documented.count(n) > 1})
    parts = []
    if missing:
        parts.append(f"no :param: line for {', '.join(missing)}")
    if extra:
        parts.append(f":param: line(s) for {', '.join(extra)}, which the signature does not take")
    if twice:
        parts.append(f"{', '.join(twice)} documented twice")
    if parts:
        yield f"{where}: {'; '.join(parts)}"


def _generated_init(cls: type) -> bool:
    """A pydantic model or a dataclass: ``__init__`` takes the fields, documented as attributes."""
    if dataclasses.is_dataclass(cls):
        return True
    return any(base.__name__ == "BaseModel" and base.__module__.startswith("pydantic") for base in cls.__mro__)


def _base_init_params(cls: type) -> set[str]:
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        init = base.__dict__.get("__init__")
        params = _signature(init, drop_first=True) if init is not None else None
        names.update(p.name for p in params or ())
    return names


def check_class(qualname: str, cls: type) -> Iterator[str]:
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        yield f"{qualname}: no docstring"
        return
    init = cls.__dict__.get("__init__")
    if init is not None and not _generated_init(cls):
        init_doc = "\n".join(filter(None, [doc, inspect.getdoc(init)]))
        yield from _check_params(
            f"{qualname}.__init__", init_doc, _signature(init, drop_first=True), passed_on=_base_init_params(cls)
        )
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            func, drop = member.__func__, isinstance(member, classmethod)
        elif inspect.isfunction(member):
            func, drop = member, True
        elif isinstance(member, property):
            func, drop = member.fget, True
            if not (func.__doc__ or "").strip():
                yield f"{qualname}.{name}: no docstring"
            continue
        else:
            continue
        if not (func.__doc__ or "").strip():
            yield f"{qualname}.{name}: no docstring"
            continue
        yield from _check_params(f"{qualname}.{name}", func.__doc__, _signature(func, drop_first=drop), required=False)


def check_function(qualname: str, func: Any) -> Iterator[str]:
    doc = func.__doc__
    if not doc or not doc.strip():
        yield f"{qualname}: no docstring"
        return
    yield from _check_params(qualname, doc, _signature(func, drop_first=False))


def docstring_problems() -> list[str]:
    """Every public name of :data:`PUBLIC_MODULES` (and :data:`DOCUMENTED_BASES`) whose docstring is lacking."""
    problems: list[str] = []
    targets: list[tuple[str, Any]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            problems.append(f"{module_name}: no module docstring")
        for name in public_names(module):
            value = getattr(module, name, None)
            if value is None:
                problems.append(f"{module_name}.{name}: in __all__ but not defined")
                continue
            targets.append((f"{module_name}.{name}", value))
    for path in DOCUMENTED_BASES:
        module_name, _, name = path.rpartition(".")
        targets.append((path, getattr(importlib.import_module(module_name), name)))
    seen: set[int] = set()
    for qualname, value in targets:
        if id(value) in seen:
            continue
        seen.add(id(value))
        if inspect.isclass(value):
            problems.extend(check_class(qualname, value))
        elif inspect.isfunction(value):
            problems.extend(check_function(qualname, value))
    return problems


def _report_docstrings(app: Sphinx) -> None:
    for problem in docstring_problems():
        logger.warning("docstring of %s", problem, type="candela", subtype="docstring")


def _check_api_documented(app: Sphinx, env: Any) -> None:
    documented = set(env.domaindata["py"]["modules"])
    for module_name in PUBLIC_MODULES:
        if module_name not in documented:
            logger.warning("public module %s has no automodule in docs/api/", module_name, type="candela")


# --------------------------------------------------------------------------------------------------
# Generated content


class _GeneratedRst(SphinxDirective):
    """A directive whose content is reST made from a file of the project (parsed like the page around it)."""

    def rst_lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(self.rst_lines(), source=self.get_source_info()[0]), 0, container)
        return list(container.children)


class ConfigDirective(_GeneratedRst):
    """Every option of the provider info's ``config`` section: description, type, default, example."""

    def rst_lines(self) -> list[str]:
        from airflow_provider_candela.get_provider_info import get_provider_info

        config = get_provider_info()["config"]
        self.env.note_dependency(str(ROOT / "airflow_provider_candela" / "get_provider_info.py"))
        lines: list[str] = []
        for section, spec in config.items():
            lines += [f".. rubric:: [{section}]", "", spec["description"], ""]
            for name, option in spec["options"].items():
                env_var = f"AIRFLOW__{section.upper()}__{name.upper()}"
                lines += [
                    f".. confval:: {name}",
                    f"   :type: {option['type']}",
                    f"   :default: ``{option['default']}``",
                    "",
                    f"   {option['description']}",
                    "",
                    f"   Example: ``{option.get('example', option['default'])}``. "
                    f"Environment variable: ``{env_var}``. Added in {option.get('version_added') or '0.1.0'}.",
                    "",
                ]
        return lines


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 0.1 or magnitude == 0:
        text = f"{value:.2f}".rstrip("0").rstrip(".") if magnitude < 1 else f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*") or "-"


class BenchDirective(_GeneratedRst):
    """The figures of bench/results.json (the last ``make bench``), with when and where they were measured."""

    def rst_lines(self) -> list[str]:
        path = ROOT / "bench" / "results.json"
        self.env.note_dependency(str(path))
        if not path.exists():
            return ["No ``bench/results.json`` yet: run ``make bench`` to measure the figures.", ""]
        data = json.loads(path.read_text(encoding="utf-8"))
        machine = data.get("machine", {})
        when = datetime.fromisoformat(data["generated_at"]).strftime("%Y-%m-%d %H:%M UTC")
        airflow = machine.get("airflow") or "not recorded by this run"
        load = machine.get("load_average")
        lines = [
            f"Measured {when} by ``make bench``{' --quick' if data.get('quick') else ''} "
            f"in {data.get('duration_s', 0):.0f} s, on {machine.get('cpus', '?')} cores "
            f"(``{machine.get('platform', '?')}``, Python {machine.get('python', '?')}"
            + (f", load average {load[0]:.1f} at the end" if load else "")
            + f"); Airflow {airflow}.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - figure",
            "     - ours",
            "     - reference",
            "     - ratio",
            "     - target",
            "     - met",
        ]
        notes: list[str] = []
        for figure in data["figures"]:
            unit = figure.get("unit", "")
            reference = _number(figure.get("reference"), unit) if figure.get("reference") is not None else ""
            if figure.get("reference_name"):
                reference = f"{reference} ({figure['reference_name']})" if reference else figure["reference_name"]
            ratio = figure.get("ratio")
            lines += [
                f"   * - {_cell(figure['figure'])}",
                f"     - {_cell(_number(figure.get('ours'), unit))}",
                f"     - {_cell(reference)}",
                f"     - {'-' if ratio is None else f'{ratio:.2f}x'}",
                f"     - {_cell(figure.get('target', ''))}",
                f"     - {'yes' if figure.get('met') else '**no**'}",
            ]
            if figure.get("note"):
                notes.append(f"- {_cell(figure['figure'].split(' ', 1)[0])}: {_cell(figure['note'])}")
        lines.append("")
        if notes:
            lines += ["Notes of this run:", "", *notes, ""]
        return lines


# --------------------------------------------------------------------------------------------------
# Internal links of the built HTML


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            elif value and ((name == "href" and tag in ("a", "link")) or (name == "src" and tag in ("img", "script"))):
                self.links.append(value)


def broken_links(outdir: Path) -> list[str]:
    """Every relative link or ``#anchor`` of the HTML under ``outdir`` that leads to no file or no id."""
    pages: dict[Path, _Links] = {}
    for page in outdir.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        pages[page.resolve()] = parser
    broken: list[str] = []
    for page, parser in pages.items():
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("data:"):
                continue  # an external address: never requested here
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = page.relative_to(outdir.resolve())
            if not target.exists():
                broken.append(f"{where}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: {link} (no such anchor)")
    return sorted(set(broken))


def _check_links(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for problem in broken_links(Path(app.outdir)):
        logger.warning("broken internal link in %s", problem, type="candela", subtype="link")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("candela-config", ConfigDirective)
    app.add_directive("candela-bench", BenchDirective)
    app.connect("builder-inited", _report_docstrings)
    app.connect("env-check-consistency", _check_api_documented)
    app.connect("build-finished", _check_links)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
