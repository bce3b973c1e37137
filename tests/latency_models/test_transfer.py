import math

import numpy as np
import pandas as pd
import pytest

from latency_models import LatencyTable, Predictor, arch_ops
from latency_models.ops import FUSED_OPS, OpKey, fused_layers
from latency_models.table import STATS
from latency_models.transfer import (
    MIN_PER_TYPE,
    check_fraction,
    choose_sample,
    missing_ops,
    source_times,
    transfer_table,
)
from nas.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--space", "small32", "--resolution", "24", "--budget", "0.2MFLOPs", "--reps", "3", "--passes", "1",
         "--no-progress"]


def _derived(source: LatencyTable, ratio, keep: set[OpKey] | None = None) -> LatencyTable:
    """A target table whose every statistic is the source's times `ratio(op, source ms)` (rows in `keep`)."""
    f = source.frame.copy()
    keys = list(source.lookup())
    for s in (*STATS, "mad_ms", "max_ms"):
        f[s] = [ms * ratio(o, ms) for o, ms in zip(keys, f[s], strict=True)]
    if keep is not None:
        f = f[[k in keep for k in keys]].reset_index(drop=True)
    return LatencyTable(f, {**source.fingerprint, "table_id": "target", "device": "target"})


def test_sample_spreads_over_types_and_sizes(fp32_table: LatencyTable) -> None:
    ops = sorted(fp32_table.keys())
    ms = fp32_table.lookup("median_ms")
    sample = choose_sample(fp32_table, ops, 0.3, seed=1)
    assert len(set(sample)) == len(sample) and len(sample) >= math.ceil(0.3 * len(ops))
    assert len(sample) <= math.ceil(0.3 * len(ops)) + 6  # the per-type minimum adds at most one op per type
    for t in {o.op for o in ops}:
        of_type = sorted((o for o in ops if o.op == t), key=ms.get)
        got = [o for o in sample if o.op == t]
        assert len(got) >= min(len(of_type), MIN_PER_TYPE)
        assert of_type[0] in got and of_type[-1] in got  # the size range is covered: no extrapolation in size
    assert choose_sample(fp32_table, ops, 0.3, seed=1) == sample
    assert choose_sample(fp32_table, ops, 0.3, seed=2) != sample
    assert choose_sample(fp32_table, ops, 1.0) == sorted(ops, key=lambda k: (k.op, k.macs, k))


def test_transfer_recovers_a_size_dependent_ratio(fp32_table: LatencyTable) -> None:
    """Target = source x a per-type factor growing with MACs: the sampled ops keep their rows, the others are
    predicted within a few percent (a single ratio would be off by up to 2x), and the result is a normal table
    of the target device."""
    factor = {"conv": 3.0, "pw": 5.0, "dw": 12.0, "se": 2.0, "pool": 1.5, "linear": 0.8}

    def ratio(o: OpKey, ms: float) -> float:
        return factor[o.op] * (o.macs + 1) ** 0.15

    ops = sorted(fp32_table.keys())
    full = _derived(fp32_table, ratio)
    sample = set(choose_sample(fp32_table, ops, 0.4))
    measured = _derived(fp32_table, ratio, keep=sample)
    table, report = transfer_table(fp32_table, measured, ops)
    assert (report.measured, report.transferred) == (len(sample), len(ops) - len(sample))
    assert table.keys() == set(ops)
    f = table.frame.set_index(list(table.frame.columns[:10]))
    assert set(f["source"]) == {"measured", "transferred"}
    moved = f[f["source"] == "transferred"]
    assert (moved["passes"] == 0).all() and (moved["n"] == 0).all()
    assert (moved["min_ms"] <= moved["p10_ms"]).all() and (moved["p10_ms"] <= moved["median_ms"]).all()
    want, got = full.lookup("p10_ms"), table.lookup("p10_ms")
    for o in sample:
        assert got[o] == want[o]  # measured rows are kept as measured
    err = {o.describe(): got[o] / want[o] - 1 for o in ops if o not in sample}
    assert max(map(abs, err.values())) < 0.05, {k: e for k, e in err.items() if abs(e) >= 0.05}
    naive = np.median([want[o] / fp32_table.lookup("p10_ms")[o] for o in sample])
    naive_err = np.array([fp32_table.lookup("p10_ms")[o] * naive / want[o] - 1 for o in ops if o not in sample])
    assert np.abs(naive_err).max() > 0.5  # the test would catch a transfer that ignores op type and size
    assert table.fingerprint["device"] == "target" and table.fingerprint["transfer"]["measured"] == len(sample)
    assert table.fingerprint["transfer"]["from_fingerprint"] == fp32_table.fingerprint
    assert table.fingerprint["transfer"]["fraction"] == pytest.approx(len(sample) / len(ops), abs=1e-6)
    assert Predictor(table).table is table


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, float("nan"), float("inf")])
def test_fraction_outside_zero_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"sample: expected a fraction in \(0, 1\]"):
        check_fraction(bad)


def test_sample_too_small_or_source_lacking_ops_is_refused(fp32_table: LatencyTable) -> None:
    ops = sorted(fp32_table.keys())
    with pytest.raises(ValueError, match=r"sample: 0.001 of \d+ ops is 1 ops; the transfer fit needs at least"):
        choose_sample(fp32_table, ops, 0.001)
    half = LatencyTable(fp32_table.frame.iloc[: len(ops) // 2].reset_index(drop=True), fp32_table.fingerprint)
    with pytest.raises(ValueError, match=r"from: .* lacks \d+ of the \d+ ops"):
        choose_sample(half, ops, 0.5)
    moved = fp32_table.frame.assign(source=["transferred"] + ["measured"] * (len(ops) - 1))
    with pytest.raises(ValueError, match="from: .* has transferred rows"):
        choose_sample(LatencyTable(moved, fp32_table.fingerprint), ops, 0.5)


def test_measuring_replaces_a_transferred_row_and_old_tables_load(fp32_table: LatencyTable, tmp_path) -> None:
    frame = fp32_table.frame.assign(source="transferred", passes=0)
    table = LatencyTable(frame.copy(), fp32_table.fingerprint)
    row = fp32_table.frame.iloc[0].to_dict()
    table.add([{k: v for k, v in row.items() if k != "source"}])
    got = table.frame.iloc[[i for i, k in enumerate(table.lookup()) if k == OpKey(*list(row.values())[:10])]]
    assert len(got) == 1 and got["source"].item() == "measured" and got["passes"].item() == row["passes"]
    assert got["median_ms"].item() == row["median_ms"]  # not the min with the transferred value
    path = fp32_table.save(tmp_path / "old.csv")
    pd.read_csv(path).drop(columns=["source"]).to_csv(path, index=False)  # a table from before the column
    assert set(LatencyTable.load(path).frame["source"]) == {"measured"}


def test_profile_sample_from_table_resumes_and_completes(tmp_path, capsys) -> None:
    src, out = tmp_path / "kernels.csv", tmp_path / "torch-fp32.csv"
    assert main(["profile", "--device", "kernels", *FLAGS, "--out", str(src)]) == 0
    n_ops = len(LatencyTable.load(src))
    transfer = ["profile", "--device", "torch-fp32", *FLAGS, "--out", str(out), "--sample", "0.2", "--from", str(src)]
    capsys.readouterr()
    assert main([*transfer, "--max-ops", "3"]) == 0
    assert "still to measure: rerun to continue" in capsys.readouterr().out
    assert len(LatencyTable.load(out)) == 3
    assert main(transfer) == 0
    text = capsys.readouterr().out
    table = LatencyTable.load(out)
    measured = int((table.frame["source"] == "measured").sum())
    assert f"{measured} ops measured, {n_ops - measured} transferred from {src}" in text
    assert len(table) == n_ops and math.ceil(0.2 * n_ops) <= measured < n_ops
    fp = table.fingerprint
    assert fp["device"] == "torch-fp32" and fp["transfer"]["from"] == str(src) and fp["transfer"]["sample"] == 0.2
    assert fp["transfer"]["from_fingerprint"]["device"] == "kernels"
    before = out.read_bytes()
    assert main(transfer) == 0 and "0 to measure" in capsys.readouterr().out
    assert out.read_bytes() == before  # a rerun refits the same sample to the same table
    # plain profiling completes a transferred table: the ops it measures become measured rows
    assert main(["profile", "--device", "torch-fp32", *FLAGS, "--out", str(out), "--max-ops", "4"]) == 0
    assert int((LatencyTable.load(out).frame["source"] == "measured").sum()) == measured + 4


def test_bad_transfer_flags_are_one_line_errors(tmp_path, capsys) -> None:
    src = tmp_path / "kernels.csv"
    assert main(["profile", "--device", "kernels", *FLAGS, "--out", str(src)]) == 0
    capsys.readouterr()
    base = ["profile", "--device", "torch-fp32", "--space", "small32", "--resolution", "24", "--budget", "0.2MFLOPs",
            "--out", str(tmp_path / "t.csv"), "--dry-run"]
    for bad in ("0", "1.5", "nan", "-0.1"):
        with pytest.raises(SystemExit, match="2"):
            main([*base, "--sample", bad, "--from", str(src)])
        assert "--sample: expected a number in (0, 1]" in capsys.readouterr().err
    cases = [
        (["--sample", "0.1"], "--sample: --sample FRACTION and --from TABLE go together"),
        (["--from", str(src)], "--from: --sample FRACTION and --from TABLE go together"),
        (["--sample", "0.01", "--from", str(src)], "--sample: 0.01 of 130 ops is 2 ops; the transfer fit needs"),
        (["--sample", "0.1", "--from", str(tmp_path / "none.csv")], "--from: no latency table at"),
        (["--sample", "0.1", "--from", str(tmp_path / "t.csv")], "is the --out table itself"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    other_space = [*base[:6], "28", *base[7:], "--sample", "0.1", "--from", str(src)]
    assert main(other_space) == 2
    err = capsys.readouterr().err
    assert "--from: " in err and "lacks" in err and "same --space/--resolution" in err
    assert main([*base, "--sample", "0.2", "--from", str(src)]) == 0
    assert "130 distinct ops (26 sampled)" in capsys.readouterr().out


# ---------------------------------------------------------------- fused blocks (issue #33)


def test_transfer_to_a_table_with_fused_rows_from_one_without(fp32_table: LatencyTable, archs, with_fused_rows
                                                              ) -> None:
    """A kernels target's fused blocks from a source without fused rows (a PyTorch table here): the source lends
    each block's layers summed; the sample measures some fused blocks (a group of their own) and the ratio model
    predicts the others from their layer sums, as closely as it predicts layers."""
    factor = {"conv": 3.0, "pw": 5.0, "dw": 12.0, "se": 2.0, "pool": 1.5, "linear": 0.8, "mbconv": 4.0,
              "mbconv1": 6.0}

    def ratio(o: OpKey, ms: float) -> float:
        return factor[o.op] * (o.macs + 1) ** 0.15

    fused = sorted({o for a in archs for o in arch_ops(a, 1) if o.op in FUSED_OPS})
    assert len(fused) >= 2 * MIN_PER_TYPE
    ops = sorted(fp32_table.keys() | set(fused))
    src = fp32_table.lookup("p10_ms")
    assert missing_ops(fp32_table, ops) == []  # derivable from layers: not lacking
    times, derived = source_times(fp32_table, ops)
    assert derived == set(fused)
    assert all(times["p10_ms"][k] == pytest.approx(sum(src[x] for x in fused_layers(k))) for k in fused)
    truth = {k: times["p10_ms"][k] * ratio(k, 0) for k in fused}
    full = with_fused_rows(_derived(fp32_table, ratio), truth)
    sample = set(choose_sample(fp32_table, ops, 0.4))
    assert len(sample & set(fused)) >= MIN_PER_TYPE
    measured = LatencyTable(full.frame[[k in sample for k in full.lookup()]].reset_index(drop=True),
                            full.fingerprint)
    table, report = transfer_table(fp32_table, measured, ops)
    assert table.keys() == set(ops) and report.transferred == len(ops) - len(sample)
    assert table.fingerprint["transfer"]["fused_from_layers"] == len(fused)
    got = table.lookup("p10_ms")
    err = {k.describe(): got[k] / truth[k] - 1 for k in fused if k not in sample}
    # looser than the layers' max 0.05: the blocks are a group of their own with fewer sampled rows, and the source
    # table is timed, so the sample varies between runs (max errors of 5-8.4% seen; the naive transfer is off > 50%)
    assert err and np.mean(np.abs(list(err.values()))) < 0.04 and max(map(abs, err.values())) < 0.15, err
    # a source that has the fused rows lends them as they are
    with_rows = with_fused_rows(fp32_table, {k: 0.5 * times["p10_ms"][k] for k in fused})
    assert source_times(with_rows, ops)[1] == set()
    assert transfer_table(with_rows, measured, ops)[0].fingerprint["transfer"]["fused_from_layers"] == 0
    # a fused block whose layers the source lacks too is lacking
    k = fused[0]
    part = fused_layers(k)[0]
    keep = [o != part for o in fp32_table.lookup()]
    short = LatencyTable(fp32_table.frame[keep].reset_index(drop=True), fp32_table.fingerprint)
    assert k in missing_ops(short, ops) and part in missing_ops(short, ops)
