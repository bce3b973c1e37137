import math
import random
import time
from dataclasses import replace

import pytest

import search_spaces as ss
from latency_models import LatencyTable, OpKey, Overhead, Predictor, arch_ops
from latency_models.predictor import OpSums, op_features


def test_prediction_is_table_sum_plus_overhead(fp32_table: LatencyTable, archs: list[ss.Arch]) -> None:
    overhead = Overhead(scale=0.9, per_op=0.002, per_input=1e-6, const=0.05, per_weight=2e-7, per_output=3e-7)
    pred = Predictor(fp32_table, overhead)
    raw = Predictor(fp32_table, Overhead())
    assert pred.stat == raw.stat == "p10_ms"
    lookup = fp32_table.lookup(pred.stat)
    assert Predictor(fp32_table, Overhead(), stat="median_ms").predict_ms(archs[0]) > raw.predict_ms(archs[0])
    for a in archs:
        ops = arch_ops(a)
        total = sum(lookup[o] for o in ops)
        assert math.isclose(raw.predict_ms(a), total, rel_tol=1e-12)
        px = a.resolution ** 2 * a.in_channels
        weights = sum(op_features(o)[4] for o in ops)
        outputs = sum(o.out_hw ** 2 * o.out_channels for o in ops)
        assert math.isclose(pred.predict_ms(a), 0.9 * total + 0.002 * len(ops) + 1e-6 * px + 2e-7 * weights
                            + 3e-7 * outputs + 0.05, rel_tol=1e-12)
        assert pred.ops_ms(a) == OpSums(pytest.approx(total, rel=1e-12), len(ops), weights, outputs,
                                        pytest.approx(total, rel=1e-12))  # a 1-thread table: serial = its times
        assert all(measured for _, _, measured in pred.breakdown(a))
        assert pred.predict_ms(a) == pred.predict_ms(a)  # cached path agrees with the first computation


def test_unseen_channel_counts_are_interpolated_monotone_ish(fp32_table: LatencyTable) -> None:
    pred = Predictor(fp32_table, Overhead())
    base = max((k for k in fp32_table.keys() if k.op == "pw" and not k.residual), key=lambda k: k.macs)
    values = []
    for cout in range(8, 2 * base.out_channels + 8, 8):
        op = base._replace(out_channels=cout)
        ms = pred.op_ms(op)
        assert math.isfinite(ms) and ms > 0
        values.append(ms)
    # non-negative least squares on MACs/bytes: more output channels never predict much less time
    assert all(b >= 0.8 * max(values[:i + 1]) for i, b in enumerate(values[1:]))
    assert values[-1] > values[0]


def test_interpolation_tracks_held_out_measurements(fp32_table: LatencyTable) -> None:
    keys = sorted((k for k in fp32_table.keys() if k.op in ("pw", "dw")), key=lambda k: k.macs)
    held = set(keys[1::4])
    train = LatencyTable(fp32_table.frame[[OpKey(*r) not in held for r in
                                           fp32_table.frame[list(OpKey._fields)].itertuples(index=False)]])
    pred = Predictor(train, Overhead())
    truth = fp32_table.lookup()
    errs = sorted(abs(pred.op_ms(k) / truth[k] - 1) for k in held)
    assert errs[len(errs) // 2] < 0.35, errs  # median relative error of ops never seen


def test_pruned_architecture_predicts(fp32_table: LatencyTable, archs: list[ss.Arch]) -> None:
    pred = Predictor(fp32_table, Overhead())
    a = archs[0]
    stages, c = [], a.stem_channels
    for stage in a.stages:  # prune every expansion by 8 channels (widths no space contains)
        blocks = []
        for b in stage:
            blocks.append(replace(b, mid_channels=b.mid(c) - 4) if b.expand != 1 else b)
            c = b.out_channels
        stages.append(tuple(blocks))
    pruned = a.replace(stages=tuple(stages))
    assert pruned != a
    ms = pred.predict_ms(pruned)
    assert math.isfinite(ms) and ms > 0
    assert any(not m for _, _, m in pred.breakdown(pruned))


def test_predictions_per_second(fp32_table: LatencyTable) -> None:
    space = ss.get_space("small32")
    rng = random.Random(0)
    pool = [space.random_arch(rng) for _ in range(3000)]
    pred = Predictor(fp32_table, Overhead(1.0, 0.001, 0.0, 0.01))
    pred.predict_ms(pool[0])
    t, cpu = time.perf_counter(), time.process_time()
    for a in pool:
        pred.predict_ms(a)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    rate = len(pool) / cpu  # CPU time of this process: other jobs sharing the cores do not count against it
    print(f"{rate:,.0f} predictions/s per CPU second ({len(pool) / wall:,.0f}/s wall), cold block cache")
    assert rate >= 2000


def test_overhead_fit_recovers_a_planted_relation() -> None:
    rng = random.Random(1)
    sums = [OpSums(ms, rng.randint(40, 90), rng.uniform(1e5, 2e6), rng.uniform(5e4, 5e5), ms)
            for ms in (rng.uniform(0.5, 3.0) for _ in range(40))]
    pixels = [rng.choice([576, 784, 1024]) for _ in range(40)]
    measured = [0.95 * s.ms + 0.003 * s.ops + 2e-5 * p + 3e-8 * s.weights + 5e-8 * s.outputs + 0.04
                for s, p in zip(sums, pixels, strict=True)]
    o = Overhead.fit(sums, pixels, measured)
    assert (o.scale, o.per_op, o.per_input, o.per_weight, o.per_output, o.const) == pytest.approx(
        (0.95, 0.003, 2e-5, 3e-8, 5e-8, 0.04), rel=1e-6)
    assert o.fitted_on == 40 and Overhead.from_dict(o.to_dict()) == o
    # a table fitted before the weight and output terms existed still loads, with both zero
    old = {k: v for k, v in o.to_dict().items() if k not in ("per_weight", "per_output")}
    assert (Overhead.from_dict(old).per_weight, Overhead.from_dict(old).per_output) == (0.0, 0.0)
    # one input size: its term is left out (part of the constant), not a singular fit
    same = Overhead.fit(sums, [784] * 40, [m - 2e-5 * (p - 784) for m, p in zip(measured, pixels, strict=True)])
    assert same.per_input == 0.0 and same.per_weight == pytest.approx(3e-8, rel=1e-6)
    assert o.per_serial == 0.0  # a 1-thread table's 1-thread sums are its sums: no term


def test_overhead_fit_prices_the_thread_hand_off_of_a_multi_thread_table() -> None:
    rng = random.Random(2)
    sums = [OpSums(ms, rng.randint(40, 90), rng.uniform(1e5, 2e6), rng.uniform(5e4, 5e5), ms * rng.uniform(1.2, 2))
            for ms in (rng.uniform(0.5, 3.0) for _ in range(40))]
    pixels = [784] * 40
    measured = [0.7 * s.ms + 0.002 * s.ops + 3e-8 * s.weights + 0.25 * s.serial + 0.03 for s in sums]
    o = Overhead.fit(sums, pixels, measured)
    assert (o.scale, o.per_op, o.per_serial, o.const) == pytest.approx((0.7, 0.002, 0.25, 0.03), rel=1e-6)
    assert Overhead.from_dict(o.to_dict()) == o and "1 thread" in o.describe()
    assert Overhead.from_dict({k: v for k, v in o.to_dict().items() if k != "per_serial"}).per_serial == 0.0


def test_a_multi_thread_table_sums_its_ops_one_thread_times(fp32_table: LatencyTable, archs: list[ss.Arch]
                                                            ) -> None:
    """A table of 2 threads whose rows carry 1-thread times: the sums hold both; ops outside the table get
    their estimate times the table's median 1-thread / 2-thread ratio. Without the column: the table's own."""
    frame = fp32_table.frame.copy()
    frame["serial_ms"] = frame["p10_ms"] * 1.5
    two = LatencyTable(frame, {**fp32_table.fingerprint, "threads": 2})
    pred = Predictor(two, Overhead())
    a = archs[0]
    ops = arch_ops(a)
    sums = pred.ops_ms(a)
    assert sums.serial == pytest.approx(1.5 * sums.ms, rel=1e-9)
    unseen = max((k for k in two.keys() if k.op == "pw"), key=lambda k: k.macs)._replace(out_channels=1000)
    assert pred.serial_ms(unseen) == pytest.approx(1.5 * pred.op_ms(unseen), rel=1e-9)
    frame["serial_ms"] = 0.0  # written before the column existed
    old = Predictor(LatencyTable(frame, {**fp32_table.fingerprint, "threads": 2}), Overhead())
    assert old.ops_ms(a).serial == pytest.approx(old.ops_ms(a).ms, rel=1e-12) and len(ops) == sums.ops
