"""Figure 1, DAG-parse cost: the extra import time of our operator, sensor and decorator modules over ``airflow.sdk``.

Each sample is a fresh interpreter that imports ``airflow.sdk`` and then the candidate's modules,
timing the second step (CPU time of the process, and wall time for information).  Candidates are
interleaved round by round (shuffled order, two interpreters at a time on the two cores), the warm-up
round is dropped, medians are compared.  CPU time is the figure because the machine is shared: wall
time also counts the time other processes held the CPU.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from bench.common import ROOT, Row, log, median

CANDIDATES: Final[dict[str, tuple[str, ...]]] = {
    "ours": (
        "airflow_provider_candela.operators.sessions",
        "airflow_provider_candela.operators.batch",
        "airflow_provider_candela.sensors.sessions",
        "airflow_provider_candela.decorators.sessions",
    ),
    "http": ("airflow.providers.http.operators.http",),
    "databricks": ("airflow.providers.databricks.operators.databricks",),
}
TARGET_MS: Final = 20.0

_CHILD: Final = """
import importlib, json, sys, time
c0, w0 = time.process_time(), time.perf_counter()
import airflow.sdk
c1, w1 = time.process_time(), time.perf_counter()
before = len(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
c2, w2 = time.process_time(), time.perf_counter()
print(json.dumps({"base_cpu": c1 - c0, "base_wall": w1 - w0, "cpu": c2 - c1, "wall": w2 - w1,
                  "modules": len(sys.modules) - before}))
"""


def _sample(modules: tuple[str, ...]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *modules], capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"importing {modules} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def top_imports(modules: tuple[str, ...], count: int = 8) -> list[dict[str, Any]]:
    """The costliest modules (cumulative microseconds, ``-X importtime``) imported after ``airflow.sdk``."""
    code = "import airflow.sdk, importlib, sys\nprint('--bench-mark--', file=sys.stderr)\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in modules
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    lines = proc.stderr.split("--bench-mark--", 1)[-1].splitlines()
    rows: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, self_us, cumulative_us, name = (part.strip() for part in line.replace("import time:", "|").split("|"))
        if self_us.isdigit():
            rows.append({"module": name, "self_us": int(self_us), "cumulative_us": int(cumulative_us)})
    rows.sort(key=lambda row: row["cumulative_us"], reverse=True)
    return rows[:count]


def compile_package() -> None:
    """Byte-compile the provider once, as a wheel install would (``PYTHONDONTWRITEBYTECODE`` may be set)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "airflow_provider_candela")],
        check=True,
        capture_output=True,
    )


def run(*, rounds: int = 10, warmup: int = 1, workers: int = 2) -> list[Row]:
    compile_package()
    rng = random.Random(1)
    jobs: list[tuple[int, str]] = []
    for index in range(warmup + rounds):
        names = list(CANDIDATES)
        rng.shuffle(names)
        jobs += [(index, name) for name in names]
    log(f"figure 1: {len(jobs)} fresh interpreters ({workers} at a time)")
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: _sample(CANDIDATES[job[1]]), jobs))
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CANDIDATES}
    for (index, name), result in zip(jobs, results, strict=True):
        if index >= warmup:
            samples[name].append(result)
    cpu_ms = {name: median([s["cpu"] * 1e3 for s in rows]) for name, rows in samples.items()}
    wall_ms = {name: median([s["wall"] * 1e3 for s in rows]) for name, rows in samples.items()}
    base_ms = median([s["base_cpu"] * 1e3 for rows in samples.values() for s in rows])
    ours = cpu_ms["ours"]
    best_peer = min(cpu_ms["http"], cpu_ms["databricks"])
    met = ours <= TARGET_MS and ours < cpu_ms["http"] and ours < cpu_ms["databricks"]
    details: dict[str, Any] = {
        "metric": "median CPU ms of importing the modules after `import airflow.sdk`, fresh interpreter each",
        "rounds": rounds,
        "cpu_ms": cpu_ms,
        "wall_ms_info": wall_ms,
        "airflow_sdk_cpu_ms_info": base_ms,
        "modules_added": {name: median([s["modules"] for s in rows]) for name, rows in samples.items()},
        "candidates": {name: list(mods) for name, mods in CANDIDATES.items()},
        "samples_cpu_ms": {name: [round(s["cpu"] * 1e3, 2) for s in rows] for name, rows in samples.items()},
        "top_imports_ours": top_imports(CANDIDATES["ours"]),
    }
    return [
        Row(
            figure="1 DAG-parse: extra import (ops incl. batch + sensor + decorators)",
            ours=ours,
            reference=best_peer,
            reference_name=f"http {cpu_ms['http']:.1f} / databricks {cpu_ms['databricks']:.1f} ms",
            unit="ms CPU",
            ratio=ours / best_peer,
            target=f"<= {TARGET_MS:g} ms and below both peers",
            met=met,
            details=details,
        )
    ]
