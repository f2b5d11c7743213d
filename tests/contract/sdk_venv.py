"""Create (once) the isolated virtual environment holding the official Candela SDK.

``finbourne-candela-sdk==0.1.173`` pins ``urllib3<2``, so it can never share the project's venv.  It
lives in ``.venv-sdk`` at the repository root, rebuilt only when :data:`SDK_REQUIREMENT` changes (the
requirement is written to a stamp file inside the venv).

Installed with uv when it is available (``$UV``, as exported by the Makefile, or ``uv`` on PATH),
otherwise with ``python -m venv`` + pip.  Runnable on its own: ``python tests/contract/sdk_venv.py``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SDK_REQUIREMENT = "finbourne-candela-sdk==0.1.173"
ROOT = Path(__file__).resolve().parents[2]
SDK_VENV = ROOT / ".venv-sdk"
_STAMP = SDK_VENV / ".installed-requirement"


def _uv_command() -> list[str] | None:
    """The uv binary ($UV from the Makefile, or on PATH); `uv pip` is always given --python explicitly."""
    env_uv = os.environ.get("UV")
    if env_uv:
        return shlex.split(env_uv)
    found = shutil.which("uv")
    return [found] if found else None


def _base_python() -> str:
    """A Python interpreter outside any venv (the venv's own ``base`` interpreter)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_sdk_venv() -> Path:
    """Return the Python of ``.venv-sdk``, creating the venv first if it is missing or stale."""
    python = SDK_VENV / "bin" / "python"
    if python.exists() and _STAMP.exists() and _STAMP.read_text().strip() == SDK_REQUIREMENT:
        return python
    if SDK_VENV.exists():
        shutil.rmtree(SDK_VENV)
    uv = _uv_command()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    if uv is not None:
        subprocess.run([*uv, "venv", "-q", "--python", _base_python(), str(SDK_VENV)], check=True, env=env)
        env["VIRTUAL_ENV"] = str(SDK_VENV)
        subprocess.run([*uv, "pip", "install", "-q", "--python", str(python), SDK_REQUIREMENT], check=True, env=env)
    else:
        subprocess.run([_base_python(), "-m", "venv", str(SDK_VENV)], check=True, env=env)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SDK_REQUIREMENT], check=True, env=env)
    _STAMP.write_text(SDK_REQUIREMENT + "\n")
    return python


if __name__ == "__main__":
    print(ensure_sdk_venv())
