"""nas.timing, the one timer: warm-up and repetitions, sample sizing, robust summary, round-robin over candidates."""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import pytest

from nas.timing import round_robin, round_robin_rounds, summarize, time_calls

ROOT = Path(__file__).resolve().parents[1]


def _counter() -> tuple[list[int], object]:
    calls = [0]

    def fn() -> None:
        calls[0] += 1
    return calls, fn


def test_time_calls_warms_up_then_takes_one_call_per_sample_when_unsized():
    calls, fn = _counter()
    samples = time_calls(fn, reps=7, warmup=3, min_sample_s=0, max_total_s=math.inf)
    assert len(samples) == 7 and calls[0] == 3 + 7
    assert all(s >= 0 for s in samples)


def test_time_calls_batches_microsecond_calls_into_samples_of_min_sample_s():
    calls, fn = _counter()
    samples = time_calls(fn, reps=5, warmup=1, min_sample_s=1e-3, max_total_s=math.inf)
    assert len(samples) == 5
    assert calls[0] > 5 * 50  # a sub-microsecond call: many calls per 1 ms sample
    assert max(samples) < 0.1  # per-call ms, not per-sample


def test_time_calls_stops_early_after_max_total_s_with_at_least_five_samples():
    samples = time_calls(lambda: time.sleep(0.01), reps=1000, warmup=0, min_sample_s=0, max_total_s=0.05)
    assert 5 <= len(samples) < 50
    assert min(samples) >= 9.0  # ms: a 10 ms sleep never takes less


def test_time_calls_refuses_no_repetitions():
    with pytest.raises(ValueError, match="reps >= 1"):
        time_calls(lambda: None, reps=0)


def test_summarize_drops_outliers_and_reports_median_p10_mad():
    t = summarize([1.0] * 10 + [1.2] * 10 + [50.0])
    assert t.rejected == 1 and t.n == 20
    assert t.median_ms == pytest.approx(1.1) and t.max_ms == 1.2 and t.min_ms == 1.0
    assert t.p10_ms == pytest.approx(1.0)
    assert t.mad_ms == pytest.approx(0.1) and t.spread == pytest.approx(0.1 / 1.1)
    assert summarize([2.0]).p10_ms == 2.0
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_round_robin_takes_turns_round_by_round():
    log: list[str] = []
    fns = {name: (lambda n=name: log.append(n)) for name in ("a", "b", "c")}
    best = round_robin(fns, reps=2, rounds=3, warmup=1)
    # each round: every candidate in turn, warm-up call then its repetitions
    assert log == (["a"] * 3 + ["b"] * 3 + ["c"] * 3) * 3
    assert set(best) == {"a", "b", "c"} and all(t.n + t.rejected == 2 for t in best.values())


def test_round_robin_keeps_each_candidates_best_round():
    """A candidate slowed in two rounds of three (a burst of load) is reported at its undisturbed speed."""
    seconds = iter([0.03] * 4 + [0.003] * 4 + [0.03] * 4)  # round 2 of 3 is fast (warm-up + 3 reps per round)

    best = round_robin({"x": lambda: time.sleep(next(seconds))}, reps=3, rounds=3, warmup=1, stat="median_ms")
    assert 2.9 <= best["x"].median_ms < 20


def test_round_robin_sizes_rounds_to_last_round_s():
    calls = {"fast": 0, "slow": 0}

    def fast() -> None:
        calls["fast"] += 1

    def slow() -> None:
        calls["slow"] += 1
        time.sleep(0.01)

    round_robin({"fast": fast, "slow": slow}, reps=2, rounds=2, warmup=1, round_s=0.02)
    probe = 1 + 3
    # the 10 ms candidate needs no more than its 2 repetitions (~20 ms); the no-op is run ~10**4 times a round
    assert calls["slow"] == probe + 2 * (1 + 2)
    assert calls["fast"] > probe + 2 * 1000


def test_round_robin_refuses_an_unknown_statistic():
    with pytest.raises(ValueError, match="stat: expected one of"):
        round_robin({"a": lambda: None}, stat="mean_ms")


def test_timer_and_results_folder_depend_on_nothing_of_ours():
    """nas.timing sits below the kernel library, nas.io below everything; nas/__init__ runs before any nas.X."""
    for rel in ("nas/timing.py", "nas/io.py", "nas/__init__.py"):
        tree = ast.parse((ROOT / rel).read_text())
        ours = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                and any(name.split(".")[0] in ("nas", "latency_models", "search_spaces")
                        for name in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]))]
        assert not ours, (rel, ours)


def test_round_robin_rounds_keeps_every_round_in_order_and_round_robin_its_best():
    """`round_robin_rounds` is the measurement `round_robin` keeps the best round of: the same calls, every round."""
    seconds = iter([0.03] * 4 + [0.003] * 4 + [0.03] * 4)  # round 2 of 3 is fast (warm-up + 3 reps per round)
    every = round_robin_rounds({"x": lambda: time.sleep(next(seconds))}, reps=3, rounds=3, warmup=1)
    medians = [t.median_ms for t in every["x"]]
    assert len(medians) == 3 and medians[1] < 20 <= min(medians[0], medians[2])
    with pytest.raises(ValueError, match="rounds: expected >= 1"):
        round_robin_rounds({"x": lambda: None}, rounds=0)
