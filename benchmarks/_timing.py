"""Timing shared by the benchmark scripts: medians of interleaved repeats, after a warm-up call."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function; interleaved so that machine load hits them all alike."""
    for f in fns.values():  # warm-up (allocator, thread pools, JIT caches)
        f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            samples[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in samples.items()}
