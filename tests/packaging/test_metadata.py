"""What the user reads about the package agrees with the package: one description, every CLI flag documented
(the emulator page of the docs), every option read declared."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from airflow_provider_candela.emulator.__main__ import build_parser
from airflow_provider_candela.get_provider_info import DESCRIPTION, DOCS_URL, get_provider_info

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EMULATOR_PAGE = (ROOT / "docs" / "emulator.md").read_text()


def test_one_description_in_pyproject_provider_info_and_readme() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == DESCRIPTION
    assert get_provider_info()["description"] == DESCRIPTION
    assert pyproject["project"]["urls"]["Documentation"] == DOCS_URL
    for guide in get_provider_info()["integrations"][0]["how-to-guide"]:
        assert (ROOT / "docs" / guide.removeprefix(DOCS_URL + "/")).exists(), guide
    first_paragraph = README.split("\n\n", 2)[1].replace("**", "").replace("\n", " ")
    assert first_paragraph.startswith(DESCRIPTION + ". ")
    # `airflow providers list` strips a final period: without one, it shows the description as written.
    assert not DESCRIPTION.endswith(".")


def test_every_emulator_flag_is_in_the_docs_table_and_help_shows_no_empty_defaults() -> None:
    parser = build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}
    flags.discard("--help")
    rows = [line for line in EMULATOR_PAGE.splitlines() if line.startswith("| `--")]
    documented = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row.split(" | ", 1)[0])}
    assert documented == flags
    help_text = parser.format_help()
    assert "(default: None)" not in help_text and "(default: [])" not in help_text
    assert "(default: from the prompt)" in " ".join(help_text.split())


def test_every_candela_option_the_code_reads_is_declared_in_the_provider_info() -> None:
    read = set()
    for source in (ROOT / "airflow_provider_candela").rglob("*.py"):
        read |= set(re.findall(r"""conf\.get\w*\(\s*["']candela["'],\s*["'](\w+)["']""", source.read_text()))
    declared = get_provider_info()["config"]["candela"]["options"]
    assert read == set(declared), "every [candela] option read is declared, and only those"
    for name, option in declared.items():
        assert str(option["default"]) and option["description"] and option["type"], name
