"""The end of ``make test``: each Airflow version's time, its test counts and its slowest tests.

Reads the junit XML each pytest run of ``make test`` writes (``--junitxml``, its suite named after the
Airflow version) and prints one block per run, then the total::

    python tests/timings.py .out/test-times/1-py3.xml .out/test-times/2-af2.xml ...

A test's time is its setup, call and teardown, as pytest's ``--durations`` counts them; the run's time is
the pytest session's (the test files run side by side, so it is less than the sum of its tests).
Standard library only: it runs with any Python.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SLOWEST = 5


def summary(path: Path) -> tuple[float, list[str]]:
    """(the run's seconds, the lines that describe it) for one junit XML file."""
    suite = ET.parse(path).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    seconds = float(suite.get("time", 0))
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    passed = tests - skipped - failed
    lines = [f"{suite.get('name')}: {seconds:6.1f} s  {passed} passed, {skipped} skipped, {failed} failed"]
    cases = [
        (float(case.get("time", 0)), f"{case.get('classname')}::{case.get('name')}") for case in suite.iter("testcase")
    ]
    cases.sort(reverse=True)
    lines += [f"    {case_seconds:6.1f} s  {name}" for case_seconds, name in cases[:SLOWEST]]
    return seconds, lines


def main(paths: list[str]) -> int:
    total = 0.0
    for name in paths:
        path = Path(name)
        if not path.is_file():
            print(f"{path}: missing (that run did not finish)")
            continue
        seconds, lines = summary(path)
        total += seconds
        print("\n".join(lines))
    print(f"pytest, every Airflow version: {total:.1f} s ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
