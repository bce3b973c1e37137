"""Timing: warm-up, repeated runs, outlier rejection, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Summary of repeated runs of one op or network, in milliseconds."""

    median_ms: float
    p10_ms: float  # 10th percentile: the speed of the machine when other processes leave it alone
    mad_ms: float  # median absolute deviation of the kept samples
    min_ms: float
    max_ms: float
    n: int  # samples kept
    rejected: int  # samples dropped as outliers

    @property
    def spread(self) -> float:
        """Relative spread (MAD / median)."""
        return self.mad_ms / self.median_ms if self.median_ms > 0 else 0.0


def summarize(samples_ms: list[float], k: float = 3.0) -> Timing:
    """Median, 10th percentile and MAD after dropping samples more than `k` scaled MADs from the median (slow
    ones, mostly: another process taking the core)."""
    if not samples_ms:
        raise ValueError("summarize: no samples")
    med = statistics.median(samples_ms)
    mad = statistics.median(abs(s - med) for s in samples_ms)
    tol = k * 1.4826 * max(mad, 0.005 * med)
    kept = [s for s in samples_ms if abs(s - med) <= tol] or samples_ms
    med = statistics.median(kept)
    mad = statistics.median(abs(s - med) for s in kept)
    p10 = statistics.quantiles(kept, n=10, method="inclusive")[0] if len(kept) > 1 else kept[0]
    return Timing(med, p10, mad, min(kept), max(kept), len(kept), len(samples_ms) - len(kept))


def time_calls(fn: Callable[[], object], reps: int = 30, warmup: int = 5, min_sample_s: float = 2e-4,
               max_total_s: float = 2.0) -> list[float]:
    """Per-call times (ms) of `fn`: each sample averages enough back-to-back calls to last `min_sample_s`,
    so the timer's own cost stays negligible for microsecond ops; stops early after `max_total_s`."""
    for _ in range(max(1, warmup)):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample_s / one))
    samples = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter_ns() - t0) / inner / 1e6)
        if len(samples) >= 5 and time.perf_counter() - start > max_total_s:
            break
    return samples
