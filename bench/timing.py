"""Timing helpers: interleaved runs, so drift on a shared machine hits every client alike.

``interleave`` times one call of each client in turn, in a fresh random order each
time, and repeats; per-call times are kept, and a client's figure is the median.
Medians, not means: a stray scheduler pause on a loaded machine moves a mean, not a
median. Each call is timed twice over: wall clock, and this process's CPU time. The
server runs in another process, so CPU time is what the client itself spends on a
call - its overhead - and, unlike wall time, it does not grow while the client waits
for a core on a busy machine.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Samples:
    """Seconds per call: wall clock and this process's CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def interleave(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    per_round: int,
    warmup: int = 5,
    seed: int = 6,
) -> dict[str, Samples]:
    """Per-call times for each client, calls interleaved one by one."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rng = random.Random(seed)
    names = list(calls)
    samples = {name: Samples() for name in names}
    wall, cpu = time.perf_counter, time.process_time
    for _ in range(rounds):
        gc.collect()
        for _ in range(per_round):
            rng.shuffle(names)
            for name in names:
                call = calls[name]
                w0, c0 = wall(), cpu()
                call()
                c1, w1 = cpu(), wall()
                samples[name].wall.append(w1 - w0)
                samples[name].cpu.append(c1 - c0)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def us(seconds: float) -> str:
    """Seconds as a short microsecond figure."""
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"
