"""``make bench`` / ``python -m bench``: run every figure of the benchmark, print the table, write JSON.

Figures (each a ratio measured side by side in this run; see each module's docstring):

1. DAG-parse cost (``import_cost``)        4. streaming (``streaming``, ``transcript``)
2. per-call overhead (``call_overhead``)   5. deferral at scale (``triggers``)
3. lifecycle cost (``lifecycle``)          6. emulator throughput (``throughput``)
7. deferrable start: worker-slot seconds while a slot takes 60 s to start (``deferral``)
8. batch: 100 inputs in one batch task vs mapped tasks, fan-out over 4 users, memory with ``result_path``, the
   resume's memory, the task state store's cost per input against ``result_path`` (``batch``)
9. triggers that starve nobody: another trigger's ``asyncio.to_thread`` beside 200 Candela triggers on a
   silent Candela (``trigger_threads``)

The HTTP figures share one emulator subprocess on a free loopback port (reset between figures).
Exit status: 0 when every figure ran (targets met or not: the table says), 1 when a figure failed.

``--only 8 --merge`` runs figure 8 alone and replaces its rows in the existing JSON, keeping the others.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_provider_candela.testing import CandelaEmulator
from bench.common import BENCH_DIR, Row, airflow_env, bench_emulator, dump_json, log, private_stdout

__all__ = ["format_table", "main"]

FIGURES = (1, 2, 3, 4, 5, 6, 7, 8, 9)


def _emulator_figure(number: int, emulator: CandelaEmulator, quick: bool) -> list[Row]:
    """Run figure ``number`` (2-9; 9 needs no emulator) against ``emulator``; modules are imported when run."""
    if number == 2:
        from bench import call_overhead

        return call_overhead.run(emulator, rounds=8) if quick else call_overhead.run(emulator)
    if number == 3:
        from bench import lifecycle

        return lifecycle.run(emulator)
    if number == 4:
        from bench import streaming, transcript

        rows = streaming.run(emulator, rounds=5 if quick else 9, events=20_000 if quick else 100_000)
        return rows + transcript.run(rounds=3 if quick else 7)
    if number == 5:
        from bench import triggers

        return triggers.run(emulator, count=200 if quick else 1000)
    if number == 6:
        from bench import throughput

        return throughput.run(emulator, seconds=2.0 if quick else 5.0)
    if number == 7:
        from bench import deferral

        return deferral.run(emulator, slot_seconds=6.0 if quick else 60.0)
    if number == 8:
        from bench import batch

        if quick:
            return batch.run(emulator, inputs=40, many=2_000, resumed=500, state_inputs=20, state_rounds=2)
        return batch.run(emulator, inputs=100, many=10_000, resumed=2_000, state_inputs=100, state_rounds=5)
    if number == 9:
        from bench import trigger_threads

        return trigger_threads.run(rounds=1 if quick else 3)
    raise ValueError(f"no figure {number}: the figures are {FIGURES}")


def _failed(number: int, exc: BaseException) -> Row:
    return Row(
        figure=f"{number} FAILED: {type(exc).__name__}",
        ours=float("nan"),
        reference=None,
        reference_name="",
        unit="",
        ratio=None,
        target="runs",
        met=False,
        details={"error": "".join(traceback.format_exception(exc))[-4000:]},
    )


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "n/a"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[Row]) -> str:
    """The result table: figure, ours, reference, ratio, target, met."""
    header = ("figure", "ours", "reference", "ratio", "target", "met")
    lines = [header]
    for row in rows:
        reference = _number(row.reference, row.unit) if row.reference is not None else ""
        if row.reference_name:
            reference = f"{reference} ({row.reference_name})" if reference else row.reference_name
        lines.append(
            (
                row.figure,
                _number(row.ours, row.unit),
                reference,
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                row.target,
                "yes" if row.met else "NO",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    notes = [f"  {row.figure.split(' ', 1)[0]}: {row.note}" for row in rows if row.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _figure_number(row: Row) -> int:
    """The figure a row belongs to: ``"8a batch ..."`` -> 8."""
    head = row.figure.split(" ", 1)[0]
    return int("".join(char for char in head if char.isdigit()) or 0)


def _merged(output: Path, rows: list[Row], wanted: Sequence[int]) -> tuple[list[Row], dict[str, Any]]:
    """``rows`` in place of the rows of figures ``wanted`` in the JSON at ``output``: every row, and that JSON."""
    earlier: dict[str, Any] = json.loads(output.read_text())
    kept = [Row(**row) for row in earlier["figures"]]
    kept = [row for row in kept if _figure_number(row) not in wanted]
    return sorted(kept + rows, key=_figure_number), earlier


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--only", default="", help="comma-separated figure numbers to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (a smoke run)")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results.json", help="where to write the JSON")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace only those figures' rows in the existing JSON at --output, keep the others",
    )
    args = parser.parse_args(argv)
    out = private_stdout()  # the table goes here; Airflow's log lines (stdout) go to stderr with the progress
    wanted = [int(n) for n in args.only.split(",") if n.strip()] or list(FIGURES)
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    with airflow_env():
        if 1 in wanted:
            from bench import import_cost

            try:
                rows += import_cost.run(rounds=3 if args.quick else 10)
            except Exception as exc:
                failed = True
                rows.append(_failed(1, exc))
        http_figures = [n for n in wanted if n != 1]
        if http_figures:
            with bench_emulator() as emulator:
                for number in http_figures:
                    try:
                        rows += _emulator_figure(number, emulator, args.quick)
                    except Exception as exc:
                        failed = True
                        log(f"figure {number} failed: {type(exc).__name__}: {exc}")
                        rows.append(_failed(number, exc))
                    finally:
                        if emulator.running:
                            emulator.reset()
                            emulator.restore_config()
                        else:
                            emulator.start()
    elapsed = time.monotonic() - started
    table = format_table(rows)
    print(table, file=out)
    print(f"\n{sum(r.met for r in rows)}/{len(rows)} targets met; {elapsed:.0f} s; results in {args.output}", file=out)
    run: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1),
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "airflow": importlib.metadata.version("apache-airflow"),
        },
    }
    result: dict[str, Any] = {**run, "table": table.splitlines(), "figures": [row.to_json() for row in rows]}
    if args.merge and args.only and args.output.exists():
        every, earlier = _merged(args.output, rows, wanted)
        result = {
            **{key: value for key, value in earlier.items() if key not in ("table", "figures", "merged")},
            "table": format_table(every).splitlines(),
            "figures": [row.to_json() for row in every],
            # the runs whose figures are all replaced by this one are no longer in the file
            "merged": [
                *(m for m in earlier.get("merged", []) if not set(m["figures"]) <= set(wanted)),
                {**run, "figures": wanted},
            ],
        }
    dump_json(args.output, result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
