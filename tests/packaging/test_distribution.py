"""The distribution as a user gets it: the sdist and wheel that `uv build` makes from this checkout.

Both pass ``twine check``; the wheel built from the sdist is the wheel built from the checkout; the wheel
carries the licence, the project URLs and the classifiers; and, installed (not editable) into a fresh
venv with Airflow 3.3, Airflow lists the provider and its ``candela`` connection type, the
``candela-emulator`` command runs, and ``get_provider_info()`` validates against the
``provider_info.schema.json`` that Airflow ships.  Everything is built and installed in a temporary
folder that is removed afterwards; uv's cache makes the install take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

from airflow_provider_candela import __version__
from airflow_provider_candela.get_provider_info import DESCRIPTION

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
NAME = "airflow-provider-candela"
AIRFLOW_REQ = "apache-airflow==3.3.*"


def _uv() -> str:
    """The uv binary: as the Makefile exports it, on PATH, or the Makefile's own copy."""
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(ROOT / ".venv-tools" / "bin" / "uv")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("uv not found: run the suite with `make test` (it provides uv), or put uv on PATH")


def _run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@dataclass
class Dists:
    folder: Path
    wheel: Path
    sdist: Path
    wheel_from_sdist: Path
    uv: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def dists() -> Iterator[Dists]:
    uv = _uv()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    with tempfile.TemporaryDirectory(prefix="candela-packaging-") as name:
        folder = Path(name)
        build = [uv, "build", "-q", "--python", sys.executable]
        _run([*build, "--sdist", "--wheel", "--out-dir", str(folder / "direct"), str(ROOT)], env=env)
        (sdist,) = (folder / "direct").glob("*.tar.gz")
        (wheel,) = (folder / "direct").glob("*.whl")
        _run([*build, "--wheel", "--out-dir", str(folder / "from-sdist"), str(sdist)], env=env)
        (wheel_from_sdist,) = (folder / "from-sdist").glob("*.whl")
        yield Dists(folder, wheel, sdist, wheel_from_sdist, uv, env)


def _wheel_files(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {info.filename: hashlib.sha256(archive.read(info)).hexdigest() for info in archive.infolist()}


def _metadata(wheel: Path) -> tuple[str, dict[str, list[str]]]:
    """The wheel's METADATA: its text, and every header's values."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"airflow_provider_candela-{__version__}.dist-info/METADATA").decode()
    message = Parser().parsestr(text)
    return text, {key: message.get_all(key) or [] for key in set(message.keys())}


def test_the_sdist_builds_the_same_wheel(dists: Dists) -> None:
    assert dists.wheel.name == dists.wheel_from_sdist.name == f"airflow_provider_candela-{__version__}-py3-none-any.whl"
    assert _wheel_files(dists.wheel_from_sdist) == _wheel_files(dists.wheel)


def test_twine_check_passes_on_both(dists: Dists) -> None:
    twine = [dists.uv, "tool", "run", "--python", sys.executable, "--from", "twine>=6.1", "twine"]
    out = _run([*twine, "check", "--strict", str(dists.wheel), str(dists.sdist)], env=dists.env)
    assert out.count("PASSED") == 2, out


def test_wheel_and_sdist_carry_the_license_and_only_what_they_should(dists: Dists) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    files = _wheel_files(dists.wheel)
    dist_info = f"airflow_provider_candela-{__version__}.dist-info/"
    assert files[dist_info + "licenses/LICENSE"] == hashlib.sha256(license_text.encode()).hexdigest()
    assert {name.split("/", 1)[0] for name in files} == {"airflow_provider_candela", dist_info.rstrip("/")}
    assert "airflow_provider_candela/py.typed" in files
    assert "airflow_provider_candela/plugins/candela_page.html" in files, "the Candela page is served from the wheel"

    with tarfile.open(dists.sdist) as archive:
        names = {member.name.split("/", 1)[1] for member in archive.getmembers() if "/" in member.name}
    for expected in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO", "tests/conftest.py"):
        assert expected in names
    assert any(name.startswith("example_dags/") for name in names)
    assert {"docs/conf.py", "docs/emulator.md"} <= names, "the docs' sources (tests/packaging reads the emulator page)"
    assert not [name for name in names if name.startswith(("docs/.venv", "docs/_build"))]
    assert not [name for name in names if name.split("/", 1)[0] in {".ci", "bench", "Makefile", ".venv", "dist"}]


def test_wheel_metadata_urls_classifiers_and_one_description(dists: Dists) -> None:
    text, headers = _metadata(dists.wheel)
    assert headers["Summary"] == [DESCRIPTION]
    assert headers["License-Expression"] == ["Apache-2.0"]
    assert headers["License-File"] == ["LICENSE"]
    assert headers["Requires-Python"] == [">=3.11"]
    urls = dict(value.split(", ", 1) for value in headers["Project-URL"])
    assert set(urls) == {"Homepage", "Documentation", "Source", "Changelog", "Issues"}
    assert all(url.startswith("https://github.com/finbourne/airflow-provider-candela") for url in urls.values())
    for classifier in (
        "Framework :: Apache Airflow",
        "Framework :: Apache Airflow :: Provider",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    ):
        assert classifier in headers["Classifier"]
    assert "# airflow-provider-candela" in text  # the README is the long description


def test_installed_wheel_is_found_by_airflow_3_3(dists: Dists) -> None:
    venv = dists.folder / "venv"
    python = venv / "bin" / "python"
    _run([dists.uv, "venv", "-q", "--python", sys.executable, str(venv)], env=dists.env)
    install = [dists.uv, "pip", "install", "-q", "--python", str(python)]
    if importlib.metadata.version("apache-airflow").startswith("3.3."):
        # The versions of this venv, so that uv installs from its cache (the provider itself is left out).
        frozen = _run([dists.uv, "pip", "freeze", "--python", sys.executable, "--exclude-editable"], env=dists.env)
        constraints = dists.folder / "constraints.txt"
        constraints.write_text("".join(f"{line}\n" for line in frozen.splitlines() if not line.startswith(NAME)))
        install += ["--constraint", str(constraints)]
    _run([*install, f"{NAME}[emulator] @ {dists.wheel.as_uri()}", AIRFLOW_REQ], env=dists.env)

    home = dists.folder / "airflow-home"
    env = {k: v for k, v in dists.env.items() if not k.startswith("AIRFLOW") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow = str(venv / "bin" / "airflow")

    providers = json.loads(_run([airflow, "providers", "list", "--output", "json"], env=env, cwd=dists.folder))
    ours = [p for p in providers if p["package_name"] == NAME]
    assert ours == [{"package_name": NAME, "description": DESCRIPTION, "version": __version__}], providers

    hooks = json.loads(_run([airflow, "providers", "hooks", "--output", "json"], env=env, cwd=dists.folder))
    candela = [h for h in hooks if h["connection_type"] == "candela"]
    assert candela and candela[0]["class"] == "airflow_provider_candela.hooks.candela.CandelaHook", hooks
    assert candela[0]["package_name"] == NAME

    help_text = _run([str(venv / "bin" / "candela-emulator"), "--help"], env=env, cwd=dists.folder)
    assert "usage: candela-emulator" in help_text and "--ssl-certfile" in help_text

    check = """
import importlib.resources, json, sys
import jsonschema
import airflow, airflow_provider_candela
from airflow_provider_candela.get_provider_info import get_provider_info
schema = json.loads((importlib.resources.files("airflow") / "provider_info.schema.json").read_text())
info = get_provider_info()
jsonschema.validate(info, schema)
try:
    jsonschema.validate({k: v for k, v in info.items() if k != "description"}, schema)
    sys.exit("the schema accepted provider info without a description: it checks nothing")
except jsonschema.ValidationError:
    pass
import importlib.metadata
groups = {ep.group for ep in importlib.metadata.distribution("airflow-provider-candela").entry_points}
found = {"module": airflow_provider_candela.__file__, "airflow": airflow.__version__, "groups": sorted(groups)}
print(json.dumps(found))
"""
    found = json.loads(_run([str(python), "-c", check], env=env, cwd=dists.folder).splitlines()[-1])
    assert Path(found["module"]).is_relative_to(venv), found  # the installed wheel, not this checkout
    assert found["airflow"].startswith("3.3."), found
    # The pytest plugin is opt-in (pytest_plugins / -p): installing the provider adds nothing to a user's pytest runs.
    assert found["groups"] == ["airflow.plugins", "apache_airflow_provider", "console_scripts"], found
