"""Sphinx configuration of the provider's documentation site (``make docs`` -> docs/_build/html).

Pages are Markdown (MyST) or reST; the API reference is autodoc over the installed package; example code is
included from example_dags/ between ``[START howto_...]`` / ``[END howto_...]`` markers. Nothing is fetched from
the internet: no intersphinx, so a reference to a name outside this package is not checked (and not linked).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

from airflow_provider_candela import __version__  # noqa: E402

project = "airflow-provider-candela"
author = "FINBOURNE"
copyright = "FINBOURNE Technology"
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "candela_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", ".venv", "**/.venv", "README.md"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
# `## Heading` gets an anchor, so pages link to each other's sections as page.md#anchor.
myst_heading_anchors = 3

# API reference: the public names of each module (its __all__, else the names not starting with "_"), with the
# classes they inherit from shown and linked; the operators' shared options are on their (documented) bases.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
autodoc_preserve_defaults = True
autosummary_generate = False
add_module_names = False

# -n (nitpicky): every cross-reference into this package must resolve. There is no intersphinx (no internet), so
# names of Python, Airflow, pydantic, requests, ... cannot be linked; they are left as text, not reported.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!airflow_provider_candela\b).*"),
    # private modules and names (a leading underscore), e.g. a base class or a type in a signature: shown as text
    (r"py:.*", r"airflow_provider_candela(\.\w+)*\._\w+.*"),
    # the emulator's catalogue: what load_catalog returns, an internal of the emulator (its JSON form is documented)
    (r"py:class", r"airflow_provider_candela\.emulator\.config\.Catalog"),
]

html_theme = "furo"
html_title = f"airflow-provider-candela {release}"
html_static_path: list[str] = []
html_show_sourcelink = True
html_copy_source = False
# Furo links to a repository's edit page only when told; the sources are read on the forge under docs/.
html_theme_options: dict[str, object] = {"navigation_with_keys": True}
