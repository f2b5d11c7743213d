"""Figure 4c, the agent transcript: time to turn one large chat chunk into log lines.

An agent may stream a whole report as a single chat event; the agent prompt operator writes it to the
task log through ``AgentTranscript``.  Chunks of 256 KiB, 512 KiB and 1 MiB of words without sentence
ends (cut at word boundaries: the slowest path) are formatted side by side (interleaved rounds,
medians).  Linear time means the 1 MiB chunk takes about four times the 256 KiB one: the figure is
that ratio (per round, median), with the 1 MiB time as ``ours``.  No emulator and no Airflow are
needed: the lines go to a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from bench.common import Row, interleave, log, median, paired_ratio

__all__ = ["run"]

RATIO_TARGET: Final = 4.5  # linear: 4
SECONDS_TARGET: Final = 1.0
KIB: Final = 1024
SIZES: Final = {"256 KiB": 256 * KIB, "512 KiB": 512 * KIB, "1 MiB": 1024 * KIB}
WORDS: Final = "lorem ipsum dolor sit amet consectetur adipiscing elit "


def _format_seconds(text: str) -> tuple[float, int, int]:
    """Seconds to format ``text`` as one chat event, the number of lines and the longest line."""
    from airflow_provider_candela.operators._transcript import AgentTranscript

    lines: list[str] = []
    transcript = AgentTranscript(lambda fmt, line: lines.append(line))
    began = time.perf_counter()
    transcript.add("chat", text)
    transcript.flush()
    return time.perf_counter() - began, len(lines), max(map(len, lines))


def _timer(text: str) -> Callable[[], float]:
    return lambda: _format_seconds(text)[0]


def run(*, rounds: int = 7) -> list[Row]:
    log(f"figure 4c: formatting one chat chunk of {', '.join(SIZES)} ({rounds} rounds)")
    texts = {name: (WORDS * (size // len(WORDS) + 1))[:size] for name, size in SIZES.items()}
    shape = {name: _format_seconds(text)[1:] for name, text in texts.items()}
    samples = interleave({name: _timer(text) for name, text in texts.items()}, rounds=rounds)
    seconds = {name: median(values) for name, values in samples.items()}
    ratio = paired_ratio(samples["1 MiB"], samples["256 KiB"])
    return [
        Row(
            figure="4c transcript: 1 MiB chat chunk",
            ours=seconds["1 MiB"] * 1e3,
            reference=seconds["256 KiB"] * 1e3,
            reference_name="256 KiB chunk",
            unit="ms",
            ratio=ratio,
            target=f"ratio <= {RATIO_TARGET:g} (linear: 4), 1 MiB < {SECONDS_TARGET * 1e3:g} ms",
            met=ratio <= RATIO_TARGET and seconds["1 MiB"] < SECONDS_TARGET,
            details={
                "metric": "seconds to format one chat event and flush (median of interleaved rounds)",
                "seconds": seconds,
                "ratio_512k_to_256k": paired_ratio(samples["512 KiB"], samples["256 KiB"]),
                "lines_and_longest_line": shape,
                "samples": samples,
            },
        )
    ]
