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


def test_parallel_fine_tunes_match_the_sequential_ones(ray_cluster, tmp_path):
    """--train-workers 2: the verify step's fine-tunes run as Ray tasks on the loopback cluster, with the same
    results as one after another in this process (same data, initial weights, seeds and thread count: one)."""
    import random

    import torch

    ray = pytest.importorskip("ray")
    import search_spaces as ss
    from nas.backend import TrainBackend
    from nas.data import DataSpec
    from nas.search.prepare import load_splits
    from nas.search.scoring import TrialScorer
    from nas.search.verify import verify
    from nas.supernet import SubnetEvaluator
    from nas.supernet.model import Supernet
    from nas.train import TrainRecipe

    data = load_splits(DataSpec.of("digits", 0, 256, 128))
    space = ss.SearchSpace(
        name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1,
        head_channels=32, num_classes=10, in_channels=1,
        stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
                ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5, 7), (1.0, 3.0, 6.0), (0.0, 0.25))))
    torch.manual_seed(0)
    scorer = TrialScorer(SubnetEvaluator(Supernet(space), data, "val", calib_images=64), supernet_key="k")
    rng = random.Random(0)
    archs = list({a.hash(): a for a in (space.random_arch(rng) for _ in range(8))}.values())[:3]
    candidates = pd.DataFrame([{"trial": i, "arch": ss.encode(a), "macs": ss.count_macs(a), "params": 1e4,
                                "latency_ms": 1.0 + i, "val_acc": 0.5} for i, a in enumerate(archs)])
    recipe = TrainRecipe(epochs=1, batch_size=64, threads=1, recalibrate_bn=64)

    sequential, _, _ = verify(candidates, scorer, recipe, TrainBackend(), tmp_path / "seq", lambda _: None)
    ray.init(address=ray_cluster[0], log_to_driver=False)
    try:
        parallel, _, _ = verify(candidates, scorer, recipe, TrainBackend(workers=2), tmp_path / "par",
                                lambda _: None)
    finally:
        ray.shutdown()
    cols = ["arch_hash", "verified_val_acc", "chosen"]
    pd.testing.assert_frame_equal(sequential[cols], parallel[cols])
    from safetensors.torch import load_file

    for a in archs:
        seq = load_file(str(next((tmp_path / "seq").glob(f"*/{a.hash()}.safetensors"))))
        par = load_file(str(next((tmp_path / "par").glob(f"*/{a.hash()}.safetensors"))))
        assert all(torch.equal(seq[k], par[k]) for k in seq), a.hash()  # bit-identical weights
