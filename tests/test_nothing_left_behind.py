"""The suite's own check (``_nothing_left_behind`` in tests/conftest.py) catches what a test leaves behind.

An inner pytest session, with this suite's conftest, runs one test that leaves a ``candela-*`` file in the
temporary directory and a process running.  The session must fail, name both, and remove both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from airflow_provider_candela.testing import wait_until

LEAKY_TEST = """
import subprocess
import tempfile
from pathlib import Path


def test_leaks() -> None:
    tempfile.mkstemp(prefix="candela-leak-")
    process = subprocess.Popen(["sleep", "300"])
    Path(tempfile.gettempdir()).parent.joinpath("leak-pid").write_text(str(process.pid))
"""


def test_a_leaked_file_and_process_fail_the_session_and_are_removed(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), suite / "conftest.py")
    (suite / "test_leaky.py").write_text(textwrap.dedent(LEAKY_TEST))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'b'}"]
    command.append(str(suite))
    done = subprocess.run(command, cwd=suite, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 passed, 1 error" in out, out
    assert "The test session left things behind" in out
    assert "left in the temporary directory (now removed): candela-leak-" in out
    assert "process still running (now killed): " in out and "sleep 300" in out
    # Removed: the session's temporary folder (and the leaked file in it), and the process.
    assert [entry.name for entry in temp.iterdir()] == ["leak-pid"], out
    pid = (temp / "leak-pid").read_text()
    # Killed; its zombie goes once the exited session's orphan is reaped.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=5, interval=0.05)
    assert not Path(f"/proc/{pid}").exists()
