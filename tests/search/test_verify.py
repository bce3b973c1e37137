"""Choosing the verify step's candidates: spread over the latency range, the most accurate trial always among them."""

import pandas as pd
import pytest

from nas.search.report import choose
from nas.search.verify import pick_candidates


def frame(rows: list[tuple[float, float]]) -> pd.DataFrame:
    """A trials frame of (val_acc, latency_ms) rows; trial i has architecture hash h<i>."""
    return pd.DataFrame([{"trial": i, "val_acc": a, "latency_ms": lat, "macs": lat * 1e7, "params": 1e5,
                          "arch_hash": f"h{i}", "arch": f"a{i}"} for i, (a, lat) in enumerate(rows)])


def test_one_candidate_per_latency_band_fastest_first():
    # bands of width 1 ms over 1..4 ms: [1, 2), [2, 3), [3, 4]
    df = frame([(0.80, 1.0), (0.85, 1.5), (0.70, 2.2), (0.75, 2.9), (0.60, 3.5), (0.65, 4.0)])
    got = pick_candidates(df, 3)
    assert got["trial"].tolist() == [1, 3, 5]
    assert got["latency_ms"].is_monotonic_increasing


def test_the_most_accurate_trial_is_always_a_candidate_and_k1_is_the_plain_choice():
    df = frame([(0.50, 1.0), (0.90, 2.6), (0.55, 2.8), (0.52, 4.0)])
    for k in (1, 2, 3, 5):
        assert choose(df)["trial"] in pick_candidates(df, k)["trial"].tolist()
    assert pick_candidates(df, 1)["trial"].tolist() == [choose(df)["trial"]]


def test_empty_bands_are_skipped_and_ties_go_to_the_faster():
    df = frame([(0.80, 1.0), (0.80, 1.1), (0.70, 10.0)])  # nothing between 2.8 and 7.3 ms
    assert pick_candidates(df, 4)["trial"].tolist() == [0, 2]


def test_repeated_architectures_count_once():
    df = frame([(0.80, 1.0), (0.82, 1.0), (0.70, 3.0)])
    df.loc[1, "arch_hash"] = "h0"  # the same network evaluated twice
    got = pick_candidates(df, 3)
    assert got["arch_hash"].is_unique and got["trial"].tolist() == [1, 2]


def test_one_latency_gives_one_candidate():
    assert len(pick_candidates(frame([(0.8, 2.0), (0.9, 2.0)]), 3)) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="verify: expected at least 1 candidate"):
        pick_candidates(frame([(0.8, 1.0)]), 0)
    with pytest.raises(ValueError, match="no completed trials"):
        pick_candidates(frame([]), 3)
