import math
import random
import time
from dataclasses import replace

import pytest

import search_spaces as ss
from latency_models import LatencyTable, OpKey, Overhead, Predictor, arch_ops
from latency_models.ops import FUSED_OPS, fused_layers
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


# ---------------------------------------------------------------- fused blocks (issue #33)


def _fused_keys(archs: list[ss.Arch], threads: int) -> list[OpKey]:
    return sorted({o for a in archs for o in arch_ops(a, threads) if o.op in FUSED_OPS}, key=lambda k: k.macs)


def _layer_sum(lookup: dict[OpKey, float], key: OpKey) -> float:
    return sum(lookup[x] for x in fused_layers(key))


def test_a_table_with_fused_rows_prices_each_fused_block_as_one_op(fp32_table: LatencyTable, archs: list[ss.Arch],
                                                                   with_fused_rows) -> None:
    """Each block the executor fuses at the table's thread count is its fused row, one op with the block's
    weights and output elements; a fused row set to a known value moves the prediction by exactly that much per
    block using it. The same table without fused rows sums layers, as before."""
    lookup = fp32_table.lookup("p10_ms")
    keys = _fused_keys(archs, 1)
    assert len(keys) >= 3
    values = {k: 0.6 * _layer_sum(lookup, k) for k in keys}
    table = with_fused_rows(fp32_table, values)
    pred, plain = Predictor(table, Overhead()), Predictor(fp32_table, Overhead())
    assert pred.fused_threads == 1 and plain.fused_threads is None
    full = {**lookup, **values}
    assert all(len(arch_ops(a, 1)) < len(arch_ops(a)) for a in archs)  # every one of them fuses some block
    for a in archs:
        ops = arch_ops(a, 1)
        assert pred.predict_ms(a) == pytest.approx(sum(full[o] for o in ops), rel=1e-12)
        weights = sum(op_features(o)[4] for o in ops)
        outputs = sum(o.out_hw ** 2 * o.out_channels for o in ops)
        assert pred.ops_ms(a) == OpSums(pytest.approx(sum(full[o] for o in ops), rel=1e-12), len(ops),
                                        pytest.approx(weights), pytest.approx(outputs), pytest.approx(
                                            sum(full[o] for o in ops), rel=1e-12))
        assert weights == sum(op_features(o)[4] for o in arch_ops(a))  # a fused block keeps its layers' weights
        assert outputs < sum(o.out_hw ** 2 * o.out_channels for o in arch_ops(a))  # not its inner tensors
        assert [(o, measured) for o, _, measured in pred.breakdown(a)] == [(o, True) for o in ops]
        # without fused rows: the layer sums, exactly as before fused rows existed
        assert plain.predict_ms(a) == pytest.approx(sum(lookup[o] for o in arch_ops(a)), rel=1e-12)
        assert [o for o, _, _ in plain.breakdown(a)] == arch_ops(a)
    a = archs[0]
    key = next(o for o in arch_ops(a, 1) if o.op in FUSED_OPS)
    uses = arch_ops(a, 1).count(key)
    bumped = Predictor(with_fused_rows(fp32_table, {**values, key: values[key] + 0.25}), Overhead())
    assert bumped.predict_ms(a) - pred.predict_ms(a) == pytest.approx(0.25 * uses, rel=1e-9)
    with_overhead = Predictor(table, Overhead(scale=0.9, per_op=0.002, const=0.05))
    assert with_overhead.predict_ms(a) == pytest.approx(
        0.9 * sum(full[o] for o in arch_ops(a, 1)) + 0.002 * len(arch_ops(a, 1)) + 0.05, rel=1e-12)


def test_fused_rows_follow_the_tables_thread_count(fp32_table: LatencyTable, archs: list[ss.Arch],
                                                   with_fused_rows) -> None:
    """A 2-thread table fuses what the executor fuses on 2 threads (and sums its 1-thread times); a 1-thread
    table what it fuses on 1."""
    lookup = fp32_table.lookup("p10_ms")
    values = {k: 0.5 * _layer_sum(lookup, k) for k in _fused_keys(archs, 1) + _fused_keys(archs, 2)}
    two = Predictor(with_fused_rows(fp32_table, values, threads=2, serial=1.5), Overhead())
    assert two.fused_threads == 2
    full = {**lookup, **values}
    for a in archs:
        ops = arch_ops(a, 2)
        assert two.predict_ms(a) == pytest.approx(sum(full[o] for o in ops), rel=1e-12)
        layer_serial = sum(lookup[o] for o in ops if o.op not in FUSED_OPS)  # the layers' serial_ms is their p10
        assert two.ops_ms(a).serial == pytest.approx(layer_serial + 1.5 * sum(values[o] for o in ops
                                                                              if o.op in FUSED_OPS), rel=1e-12)
    one = Predictor(with_fused_rows(fp32_table, values, threads=1), Overhead())
    differ = [a for a in archs if arch_ops(a, 1) != arch_ops(a, 2)]
    assert differ  # some block fuses on one thread but not on two: the thread count matters
    for a in differ:
        assert one.predict_ms(a) != pytest.approx(two.predict_ms(a), rel=1e-9)
        assert one.predict_ms(a) == pytest.approx(sum(full[o] for o in arch_ops(a, 1)), rel=1e-12)


def test_a_missing_fused_row_is_interpolated(fp32_table: LatencyTable, archs: list[ss.Arch], with_fused_rows) -> None:
    """A fused block without its row gets the fused rows' `OpModel` estimate (near the truth of a clean
    relation); a table with no row of the block's kind at all estimates it as its layers' sum."""
    lookup = fp32_table.lookup("p10_ms")
    keys = _fused_keys(archs, 1)
    values = {k: 0.7 * _layer_sum(lookup, k) for k in keys}
    held = [k for k in keys if k.op == "mbconv"][1::3]
    pred = Predictor(with_fused_rows(fp32_table, {k: v for k, v in values.items() if k not in held}), Overhead())
    for k in held:
        assert not pred.in_table(k)
        assert pred.op_ms(k) == pytest.approx(values[k], rel=0.5)
    a = next(a for a in archs if set(arch_ops(a, 1)) & set(held))
    assert any(not measured for _, _, measured in pred.breakdown(a))
    only = {k: v for k, v in values.items() if k.op == "mbconv"}
    one = next((k for k in keys if k.op == "mbconv1"), None)
    if one is not None:
        no_kind = Predictor(with_fused_rows(fp32_table, only), Overhead())
        assert no_kind.op_ms(one) == pytest.approx(_layer_sum(lookup, one), rel=1e-12)


def test_fused_table_predictions_per_second(fp32_table: LatencyTable, archs: list[ss.Arch], with_fused_rows) -> None:
    """The block cache keeps a table with fused rows as fast as one without (the fusing decision is made once
    per block configuration)."""
    space = ss.get_space("small32")
    rng = random.Random(0)
    pool = [space.random_arch(rng) for _ in range(3000)]
    lookup = fp32_table.lookup("p10_ms")
    table = with_fused_rows(fp32_table, {k: 0.6 * _layer_sum(lookup, k) for k in _fused_keys(archs, 1)})
    pred = Predictor(table, Overhead(1.0, 0.001, 0.0, 0.01))
    pred.predict_ms(pool[0])
    cpu = time.process_time()
    for a in pool:
        pred.predict_ms(a)
    rate = len(pool) / (time.process_time() - cpu)
    cpu = time.process_time()
    for a in pool:
        pred.predict_ms(a)
    warm = len(pool) / (time.process_time() - cpu)
    print(f"fused table: {rate:,.0f} predictions/s per CPU second cold, {warm:,.0f} warm")
    assert rate >= 2000 and warm >= 10_000
