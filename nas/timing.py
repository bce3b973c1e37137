"""The one timer: warm-up, repeated runs sized to outlast the clock's cost, round-robin over candidates, and a
robust summary (median, 10th percentile and MAD after dropping outliers).

Every latency figure in nas (op tables, whole networks on the kernels or PyTorch, exported checkpoints, ONNX
Runtime) is measured with `time_calls`, or `round_robin` when several candidates are compared (`round_robin_rounds`
keeps every round). This module imports
nothing of ours, so the kernel library below the latency models can use it too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

STATS = ("median_ms", "p10_ms", "min_ms")  # the statistics a round-robin can keep the best round of


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
    """Per-call times (ms) of `fn` after `warmup` untimed calls: `reps` samples, each averaging enough
    back-to-back calls to last `min_sample_s`, so the clock's own cost stays negligible for microsecond ops
    (`min_sample_s=0`: one call per sample). Stops early, after at least 5 samples, once `max_total_s` has
    passed (`math.inf`: always `reps` samples)."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"time_calls: expected reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    inner = 1
    if min_sample_s > 0:  # one more call, timed, to size the samples
        t0 = time.perf_counter()
        fn()
        inner = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
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


def round_robin(fns: Mapping[K, Callable[[], object]], reps: int = 9, rounds: int = 10, warmup: int = 2,
                round_s: float = 0.0, max_round_s: float = math.inf, stat: str = "p10_ms",
                progress: Callable[[int, Iterable[K]], Iterable[K]] | None = None) -> dict[K, Timing]:
    """The best round (lowest `stat`) of each candidate over `rounds` rounds, the candidates taking turns.

    A burst of load on a shared machine (seconds of 1.6-1.9x slowness on a 2-core VM) then slows one round of
    many candidates rather than every round of one, and the best round is the machine's undisturbed speed. Each
    round times a candidate `reps` times one call each, and at least for `round_s` seconds (sized from a short
    probe; the rounds of a sub-millisecond candidate would otherwise all fall inside one burst), stopping a
    candidate's round early after `max_round_s` (see `time_calls`). `progress(round, keys)` may wrap each round's
    iteration (a progress bar).
    """
    if stat not in STATS:
        raise ValueError(f"stat: expected one of {list(STATS)}, got {stat!r}")
    every = round_robin_rounds(fns, reps, rounds, warmup, round_s, max_round_s, progress)
    return {key: min(ts, key=lambda t: getattr(t, stat)) for key, ts in every.items()}


def round_robin_rounds(fns: Mapping[K, Callable[[], object]], reps: int = 9, rounds: int = 10, warmup: int = 2,
                       round_s: float = 0.0, max_round_s: float = math.inf,
                       progress: Callable[[int, Iterable[K]], Iterable[K]] | None = None) -> dict[K, list[Timing]]:
    """Every round's `Timing` of each candidate, in round order (`round_robin`'s measurement, which keeps the
    best): callers that judge the measurement itself compare rounds, e.g. the best of the odd rounds against the
    best of the even ones."""
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    per = {key: reps for key in fns}
    if round_s > 0:
        for key, fn in fns.items():
            ms = statistics.median(time_calls(fn, reps=3, warmup=1, min_sample_s=0, max_total_s=math.inf))
            per[key] = max(reps, math.ceil(round_s * 1e3 / max(ms, 1e-3)))
    every: dict[K, list[Timing]] = {key: [] for key in fns}
    for r in range(rounds):
        keys: Iterable[K] = list(fns)
        for key in progress(r, keys) if progress else keys:
            every[key].append(summarize(time_calls(fns[key], reps=per[key], warmup=warmup, min_sample_s=0,
                                                   max_total_s=max_round_s)))
    return every
