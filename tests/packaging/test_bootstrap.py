"""`make` on a stock Debian python3: uv comes from a private venv, nothing is installed into the interpreter.

The machine's ``/usr/bin/python3``, when it is marked externally managed (PEP 668), runs the Makefile's
``uv`` target (what ``make demo`` and ``make test`` run first) in a copy of the Makefile, with no uv on
PATH.  It must succeed without pip's ``externally-managed-environment`` refusal, leave uv in
``.venv-tools/`` and leave the interpreter's installed distributions exactly as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/bin:/bin"

_INFO = """
import importlib.metadata, json, os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
print(json.dumps({
    "version": sys.version_info[:2],
    "externally_managed": os.path.exists(marker),
    "distributions": sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()),
}))
"""


def _system_python() -> tuple[tuple[int, int], bool, list[str]]:
    """The system python3's version, whether it is externally managed, and its installed distributions."""
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", _INFO], capture_output=True, text=True, timeout=60, check=True)
    info = json.loads(done.stdout)
    return tuple(info["version"]), info["externally_managed"], info["distributions"]


def test_make_uv_on_an_externally_managed_system_python_installs_nothing_into_it() -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} does not exist on this machine")
    before = _system_python()
    version, externally_managed, _ = before
    if not externally_managed:
        pytest.skip(f"{SYSTEM_PYTHON} is not marked externally managed (PEP 668): nothing to prove here")
    if version < (3, 11):
        pytest.skip(f"{SYSTEM_PYTHON} is Python {version}; the project needs 3.11+")
    make = shutil.which("make", path=SYSTEM_PATH)
    if make is None or shutil.which("uv", path=SYSTEM_PATH):
        pytest.skip(f"needs make and no uv in {SYSTEM_PATH}")

    # This environment (index, proxy and certificate settings) without uv, a venv or an outer make.
    dropped = ("UV", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = SYSTEM_PATH
    with tempfile.TemporaryDirectory(prefix="candela-bootstrap-") as name:
        checkout = Path(name)
        for file in ("Makefile", "pyproject.toml"):
            shutil.copy(ROOT / file, checkout / file)
        command = [make, "uv", f"PYTHON={SYSTEM_PYTHON}"]
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=300, check=False)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "externally-managed-environment" not in out
        assert "Running pip as the 'root' user" not in out
        assert "installing it into .venv-tools/" in out
        uv = checkout / ".venv-tools" / "bin" / "uv"
        assert f"({uv})" in out  # the target names the uv it will use
        ran = subprocess.run([str(uv), "--version"], capture_output=True, text=True, timeout=60, check=True)
        assert ran.stdout.startswith("uv ")

    assert _system_python() == before, "the Makefile installed something into the system python3"
