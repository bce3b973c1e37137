"""Fused-block keys timed on the kernels: the compiled fused op of the key's shapes, on the executor's scratch."""

import math
import random

import numpy as np
import pytest

import search_spaces as ss
from latency_models import DeviceSpec, OpKey, arch_ops, get_device
from latency_models.kernel_runner import time_kernel_op
from latency_models.ops import FUSED_OPS, fused_layers
from latency_models.profiling import measure_ops
from nas.kernels import compile_op
from nas.kernels import timing as kt


def _fused_keys(threads: int = 1) -> list[OpKey]:
    """Fused keys of small32 networks at 24 x 24: both kinds, stride 1 and 2, residual or not."""
    space, rng = ss.get_space("small32"), random.Random(2)
    keys: set[OpKey] = set()
    for _ in range(40):
        a = space.random_arch(rng).replace(resolution=24)
        keys |= {o for o in arch_ops(a, threads) if o.op in FUSED_OPS}
    return sorted(keys, key=lambda k: k.macs)


def test_fused_block_spec_has_the_keys_shapes_and_runs_like_its_layers() -> None:
    """The spec timed for a key is a real block: the fused op's output is its layers' run one by one (bit-exact,
    so its zero points chain like a lowered network's), int8 and W4A8."""
    # both thread counts: on one thread an expand-ratio-1 block's depthwise runs in place, which leaves its fused
    # step no cheaper than its layers in these networks (no mbconv1 key); on two it does not
    keys = sorted(set(_fused_keys(1)) | set(_fused_keys(2)), key=lambda k: k.macs)
    kinds = {(k.op, k.stride, k.residual) for k in keys}
    assert {"mbconv", "mbconv1"} <= {k[0] for k in kinds} and {1, 2} <= {k[1] for k in kinds}
    assert {True, False} <= {k[2] for k in kinds}
    assert kt.FUSED_OPS == FUSED_OPS
    for key in keys[:: max(1, len(keys) // 6)]:
        for bits in (8, 4):
            spec = kt.fused_block_spec(key, bits, np.random.default_rng(1))
            assert (spec.expand is None) == (key.op == "mbconv1")
            assert spec.dw.weight.shape == (key.hidden, key.kernel, key.kernel) and spec.dw.stride == key.stride
            assert spec.project.weight.shape == (key.out_channels, key.hidden)
            assert (spec.project.residual is not None) == key.residual and spec.project.bits == bits
            x = np.random.default_rng(2).integers(0, 256, size=(1, key.in_hw, key.in_hw, key.in_channels),
                                                  dtype=np.uint8)
            t = x if spec.expand is None else compile_op(spec.expand).run(x)
            t = compile_op(spec.dw).run(t)
            want = compile_op(spec.project).run(t, residual=x if key.residual else None)
            got = compile_op(spec).run(x, threads=2)
            assert got.shape == (1, key.out_hw, key.out_hw, key.out_channels)
            np.testing.assert_array_equal(got, want)
            assert len(fused_layers(key)) == (3 if spec.expand is not None else 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_fused_key_is_timed_and_positive(threads: int) -> None:
    keys = _fused_keys(threads)
    for key in (keys[0], keys[-1]):
        for bits in (8, 4):
            ms = time_kernel_op(key, DeviceSpec("kernels", bits, threads), reps=4)
            assert len(ms) == 4 and all(math.isfinite(t) and t > 0 for t in ms), (key, ms)
    with pytest.raises(ValueError, match="bits: expected 4 or 8"):
        kt.time_layer(keys[0], bits=2)
    with pytest.raises(ValueError, match="threads: expected a positive int"):
        kt.time_layer(keys[0], threads=0)
    one = next(k for k in keys + _fused_keys(2) if k.op == "mbconv1")  # one thread may fuse none (in-place dw)
    with pytest.raises(ValueError, match="hidden: an mbconv1 block"):
        kt.time_layer(one._replace(hidden=one.hidden + 8))


def test_a_two_thread_row_of_a_fused_key_carries_its_one_thread_time() -> None:
    """Like every op of an N-thread table, a fused block's row gets `serial_ms` from a 1-thread timing."""
    keys = _fused_keys(2)
    key = keys[-1]
    fp, rows = measure_ops(DeviceSpec("kernels", threads=2), [key], reps=5)
    assert fp["threads"] == 2 and len(rows) == 1
    row = rows[0]
    assert row["op"] == key.op and row["hidden"] == key.hidden and row["macs"] == key.macs
    assert row["p10_ms"] > 0 and row["serial_ms"] > 0 and row["serial_ms"] != row["p10_ms"]
    fp1, rows1 = measure_ops(DeviceSpec("kernels", threads=1), [key], reps=5)
    assert rows1[0]["serial_ms"] == rows1[0]["p10_ms"]  # a 1-thread row: its own time
    assert get_device("kernels").time_op(key, 3)[0] > 0
