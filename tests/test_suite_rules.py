"""Rules of the suite itself: no wall-clock upper bound in an assertion, no system package installed by a test.

A bound on how long something took fails on a busy machine, not on a defect: tests assert an ordering, a count,
a state or a condition reached (timings are figures of ``make bench``).  Debian packages come from
``make system-deps`` before any suite starts; a test only checks that they are there.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).parent
#: Names and attributes that stand for a duration or a moment: a time.monotonic() difference, ``elapsed``,
#: ``took``, a ``.total_seconds()``, ``failed_after``, ``killed_at`` ...
TIMING = re.compile(
    r"^(elapsed|took|seconds|exited|duration|waited|spent|monotonic|perf_counter|time|now|timestamp|total_seconds)$"
    r"|_(after|at|seconds|elapsed|duration)$"
)
PACKAGE_MANAGERS = {"apt-get", "apt", "aptitude", "dpkg", "yum", "dnf", "apk"}


def _sources(suffix: str) -> Iterator[Path]:
    for path in sorted(TESTS.rglob(f"*{suffix}")):
        if path != Path(__file__) and not {"output", "__pycache__"} & set(path.relative_to(TESTS).parts):
            yield path


def _is_timing(node: ast.AST) -> bool:
    """Whether ``node`` mentions a duration or a moment (a name, attribute or key of :data:`TIMING`).

    The strings of a literal collection (``{"obj_id", "created_at"}``: field names) do not count.
    """
    if isinstance(node, ast.Set | ast.List | ast.Tuple | ast.Dict):
        return False
    name = (
        node.id
        if isinstance(node, ast.Name)
        else node.attr
        if isinstance(node, ast.Attribute)
        else node.value
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        else None
    )
    if name is not None and TIMING.search(name):
        return True
    return any(_is_timing(child) for child in ast.iter_child_nodes(node))


def upper_bounds(source: str) -> list[int]:
    """Lines of ``assert`` statements that bound a duration from above (``took < 5``, ``5 > elapsed``).

    A comparison of two timings (an ordering: ``started < expired_at < ended``) is allowed, and so is a
    lower bound (``waited >= 1``).
    """
    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [compare.left, *compare.comparators]
            for op, left, right in zip(compare.ops, operands, operands[1:], strict=False):
                if isinstance(op, ast.Gt | ast.GtE):
                    smaller, bound = right, left
                elif isinstance(op, ast.Lt | ast.LtE):
                    smaller, bound = left, right
                else:
                    continue
                if _is_timing(smaller) and not _is_timing(bound):
                    found.append(node.lineno)
    return sorted(set(found))


def package_installs_py(source: str) -> list[int]:
    """Lines with a command run by a test that names a package manager (``["apt-get", "install", ...]``)."""
    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split()
            if words[:1] == ["sudo"]:
                words = [word for word in words[1:] if not word.startswith("-")]
            if words and words[0] in PACKAGE_MANAGERS:  # a list element of its own, or a shell command
                found.append(node.lineno)
    return found


def package_installs_sh(source: str) -> list[int]:
    """Lines of a shell script that run a package manager (quoted text, e.g. a message, is left out)."""
    found: list[int] = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        try:
            words = shlex.split(re.sub(r"([\"']).*?\1", "", code))
        except ValueError:
            words = code.split()
        if PACKAGE_MANAGERS & set(words):
            found.append(number)
    return found


def test_no_assertion_bounds_a_duration_from_above() -> None:
    found = [f"{path.relative_to(TESTS)}:{line}" for path in _sources(".py") for line in upper_bounds(path.read_text())]
    assert found == [], (
        "wall-clock upper bounds fail on a busy machine: assert an ordering, a count, a state or a condition "
        f"reached instead (timings belong in make bench): {found}"
    )


def test_no_test_installs_a_system_package() -> None:
    checks = {".py": package_installs_py, ".sh": package_installs_sh}
    found = [
        f"{path.relative_to(TESTS)}:{line}"
        for suffix, check in checks.items()
        for path in _sources(suffix)
        for line in check(path.read_text())
    ]
    assert found == [], f"system packages come from make system-deps; tests only check for them: {found}"


def test_the_rules_catch_what_they_are_for() -> None:
    assert upper_bounds("assert took < 4") == [1]
    assert upper_bounds("assert time.monotonic() - began < 2.5") == [1]
    assert upper_bounds("assert 5 > elapsed") == [1]
    assert upper_bounds("assert abs((now - slot.created).total_seconds()) < 60") == [1]
    assert upper_bounds('assert result.pop("failed_after") < 1.0') == [1]
    assert upper_bounds("assert start.timestamp() < expired_at[0] < end.timestamp()") == []
    assert upper_bounds("assert time.monotonic() - started >= 0.9") == []
    assert upper_bounds("assert len(lines) <= limit and count < 20") == []
    assert upper_bounds('assert set(metadata) >= {"obj_id", "created_at"}') == []
    assert upper_bounds("assert before <= metadata.created_at <= datetime.now(UTC)") == []
    assert package_installs_py('cmd = ["sudo", "-n", "apt-get", "install", "-y", "chromium"]') == [1]
    assert package_installs_py('subprocess.run("apt-get install -y redis-server", shell=True)') == [1]
    assert package_installs_py('pytest.fail("make is missing (apt-get install make)")') == []
    assert package_installs_sh("    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server\n") == [1]
    assert package_installs_sh('echo "install as root: apt-get install redis-server"  # apt-get\n') == []
