"""The official ``finbourne-candela-sdk`` in its own virtual environment (it pins urllib3<2).

Reuses the repository's ``.venv-sdk`` (made by the contract tests) when it holds exactly
:data:`SDK_REQUIREMENT`; otherwise creates ``bench/.venv-sdk`` (git-ignored) with uv, or with
``venv`` + pip when uv is absent.  Never installs anything into the project's venv.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

from bench.common import BENCH_DIR, ROOT, log

__all__ = ["SDK_REQUIREMENT", "sdk_python"]

SDK_REQUIREMENT: Final = "finbourne-candela-sdk==0.1.173"
_STAMP: Final = ".installed-requirement"


def _ready(venv: Path) -> bool:
    stamp = venv / _STAMP
    return (venv / "bin" / "python").exists() and stamp.exists() and stamp.read_text().strip() == SDK_REQUIREMENT


def sdk_python() -> Path:
    """The Python of a venv holding the pinned SDK (created on first use)."""
    for venv in (ROOT / ".venv-sdk", BENCH_DIR / ".venv-sdk"):
        if _ready(venv):
            return venv / "bin" / "python"
    venv = BENCH_DIR / ".venv-sdk"
    log(f"creating {venv} with {SDK_REQUIREMENT}")
    if venv.exists():
        shutil.rmtree(venv)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    uv = shlex.split(os.environ["UV"]) if os.environ.get("UV") else ([found] if (found := shutil.which("uv")) else None)
    if uv is not None:
        subprocess.run([*uv, "venv", "-q", "--python", base_python, str(venv)], check=True, env=env)
        subprocess.run(
            [*uv, "pip", "install", "-q", SDK_REQUIREMENT], check=True, env={**env, "VIRTUAL_ENV": str(venv)}
        )
    else:
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True, env=env)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", SDK_REQUIREMENT], check=True, env=env
        )
    (venv / _STAMP).write_text(SDK_REQUIREMENT + "\n")
    return venv / "bin" / "python"
