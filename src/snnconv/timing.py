"""Timing for the benchmark scripts: warm up, repeat, report the median (timings here vary by about 20%)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (s) of `repeats` calls of fn() after `warmup` untimed calls. Synchronise CUDA inside fn."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
