"""In-place steps (issue #33): a stride-1 depthwise writing its output D rows before its input in one buffer, and
squeeze-excite over its own input, give the bytes of the out-of-place op on every ISA and thread count, and the
arena plan that puts them there is the one predicted from the architecture."""

import random

import numpy as np
import pytest

import search_spaces as ss
from latency_models.kernel_runner import kernel_network
from nas.kernels import _C, available_isas, compile_op
from nas.kernels import random_specs as R
from nas.kernels.memory import ALIGN, NOT_IN_PLACE, activation_plan, in_place_headroom


def _in_place_dw(op, x: np.ndarray, headroom: int, threads: int) -> np.ndarray:
    """Runs the depthwise `op` with its output `headroom` bytes before its input in one buffer; returns the output."""
    n = x.size
    buf = np.full(headroom + n, 0x5A, dtype=np.uint8)
    buf[headroom:] = x.reshape(-1)
    op.run(buf[headroom:].reshape(x.shape), out=buf[:n].reshape(x.shape), threads=threads)
    return buf[:n].reshape(x.shape).copy()


def _heights(k: int) -> list[int]:
    return sorted({1, 2, k // 2 + 1, k // 2 + 2, 7, 13})  # band and thread edges: fewer rows than D, odd sizes


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("k", [3, 5, 7])
def test_in_place_depthwise_is_bit_exact_at_every_edge(isa, k):
    """Against the same op out of place: heights 1, 2, k // 2 + 1 ..., batch 1-3, 1-3 threads, the smallest D the
    thread count allows (rows, not rounded to 64 bytes, and rounded as the planner does), and more threads than that
    D was for (waves of fewer rows)."""
    rng = np.random.default_rng(k)
    for h in _heights(k):
        for c in (1, 17, 40):
            spec = R.random_depthwise(rng, c, k, 1, "hswish" if c == 17 else "relu6")
            op = compile_op(spec, isa)
            for batch in (1, 3):
                w = int(rng.integers(1, 12))
                x = rng.integers(0, 256, size=(batch, h, w, c), dtype=np.uint8)
                want = op.run(x, threads=1)
                for threads in (1, 2, 3):
                    rows = k // 2 + 1 if threads == 1 else threads * 2 + k // 2  # ops.h dw_in_place_rows
                    for headroom in (rows * w * c, -(-rows * w * c // 64) * 64):  # as planned: rounded to 64
                        got = _in_place_dw(op, x, headroom, threads)
                        assert np.array_equal(got, want), (isa, h, w, c, batch, threads, headroom)
                        # more threads than the plan's: waves of fewer rows, the same bytes
                        assert np.array_equal(_in_place_dw(op, x, headroom, 3), want)


def test_in_place_headroom_is_the_rule_of_the_kernels():
    assert in_place_headroom("dw", 1, 32, 192, 7, 1) == 4 * 32 * 192  # k // 2 + 1 rows on one thread
    assert in_place_headroom("dw", 1, 32, 192, 7, 2) == NOT_IN_PLACE  # its waves were slower on 2 threads
    assert in_place_headroom("dw", 1, 5, 3, 3, 1) == 64  # 2 rows of 15 bytes, rounded up to a cache line
    assert in_place_headroom("se", 1, 9, 9, 1, 3) == 0
    assert in_place_headroom("dw", 2, 32, 192, 7, 1) == NOT_IN_PLACE
    assert in_place_headroom("pw", 1, 32, 192, 1, 1) == NOT_IN_PLACE
    assert _C.in_place_pays(0, 100, False) and not _C.in_place_pays(0, 100, True)
    assert not _C.in_place_pays(100, 100, False) and not _C.in_place_pays(NOT_IN_PLACE, 100, False)


def test_overlapping_buffers_other_than_in_place_are_refused():
    rng = np.random.default_rng(0)
    op = compile_op(R.random_depthwise(rng, 8, 5, 1, "relu6"))
    x = rng.integers(0, 256, size=(1, 6, 4, 8), dtype=np.uint8)
    row = 4 * 8
    with pytest.raises(ValueError, match="out: overlaps x"):
        _in_place_dw(op, x, 2 * row, 1)  # 2 rows: output row 2 would overwrite input row 0 that row 2 reads
    buf = np.zeros(x.size + 3 * row, dtype=np.uint8)
    with pytest.raises(ValueError, match="out: overlaps x"):  # output after its input
        op.run(buf[:x.size].reshape(x.shape), out=buf[3 * row:].reshape(x.shape))
    s2 = compile_op(R.random_depthwise(rng, 8, 3, 2, "relu6"))
    buf = np.zeros(x.size * 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="out: overlaps x"):  # stride 2: never in place
        s2.run(buf[x.size:].reshape(x.shape), out=buf[x.size - 24:x.size + 24].reshape(1, 3, 2, 8))
    se = compile_op(R.random_se(rng, 8, 4, 6 * 4))
    buf = np.zeros(x.size + 8, dtype=np.uint8)
    with pytest.raises(ValueError, match="out: overlaps x"):
        se.run(buf[8:].reshape(x.shape), out=buf[:-8].reshape(x.shape))


@pytest.mark.parametrize("isa", available_isas())
def test_squeeze_excite_over_its_own_input_is_bit_exact(isa):
    rng = np.random.default_rng(1)
    for c, h, w in [(1, 1, 1), (17, 3, 5), (72, 7, 7), (40, 20, 20)]:
        op = compile_op(R.random_se(rng, c, max(1, c // 4), h * w), isa)
        for batch in (1, 3):
            x = rng.integers(0, 256, size=(batch, h, w, c), dtype=np.uint8)
            want = op.run(x, threads=1)
            for threads in (1, 2, 3):
                got = x.copy()
                op.run(got, out=got, threads=threads)
                assert np.array_equal(got, want), (isa, c, h, w, batch, threads)


def test_plan_arena_puts_in_place_outputs_over_their_inputs():
    """Random chains with in-place candidates: a candidate runs in place exactly where `in_place_pays` says so, sits
    `headroom` bytes before its input, and shares bytes with no other buffer alive with it."""
    rng = random.Random(3)
    for _ in range(300):
        n = rng.randint(2, 12)
        sizes = [rng.choice([64, 100, 640, 1000, rng.randint(1, 5000)]) for _ in range(n)]
        first = list(range(n))
        last = [min(n - 1, i + rng.choice([0, 1, 1, 1, 2, 3])) for i in range(n)]
        inputs = [0] + [i - 1 for i in range(1, n)]
        rooms = [NOT_IN_PLACE] + [rng.choice([NOT_IN_PLACE, 0, 64, 128, 4096]) for _ in range(1, n)]
        for i in range(1, n):
            if rooms[i] != NOT_IN_PLACE:
                sizes[i] = sizes[i - 1]  # as a depthwise or SE: the output has the input's size
        offsets, arena, in_place = _C.plan_arena(sizes, first, last, ALIGN, inputs, rooms)
        unit = list(range(n))
        for i in range(1, n):
            assert in_place[i] == _C.in_place_pays(rooms[i], sizes[i - 1], last[i - 1] > first[i])
            if in_place[i]:
                assert offsets[i] == offsets[i - 1] - rooms[i]
                unit[i] = unit[i - 1]
        assert arena == max(o + s for o, s in zip(offsets, sizes, strict=True))
        assert all(o % ALIGN == 0 for o in offsets)
        for i in range(n):
            for j in range(i):
                if unit[i] != unit[j] and first[i] <= last[j] and first[j] <= last[i]:
                    assert offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i], (i, j)
        without = _C.plan_arena(sizes, first, last, ALIGN)
        assert not any(without[2])
        if not any(in_place):
            assert (offsets, arena) == tuple(without[:2])  # no candidate taken: the plan of old


@pytest.mark.parametrize("space", ["small32", "small32-v3"])
def test_networks_run_in_place_in_the_predicted_arena_with_the_same_logits(space):
    """Random networks (SE, residual, expand ratio 1, stride 2), batch 1 and 3, 1-3 threads, fused and layer by
    layer: the executor's arena is the one `activation_plan` predicts, with in-place steps, and the logits are the
    reference's on every ISA."""
    rng = random.Random(7)
    sp = ss.get_space(space)
    archs = [sp.random_arch(rng) for _ in range(2)] + [sp.with_io(1, 10).largest()]
    for arch in archs:
        net = kernel_network(arch)
        x = np.random.default_rng(0).integers(0, 256, size=(3, arch.resolution, arch.resolution, arch.in_channels),
                                              dtype=np.uint8)
        ref = net.run_reference(x)
        for batch in (1, 3):
            shape = (batch, arch.resolution, arch.resolution, arch.in_channels)
            for threads in (1, 2, 3):
                for fused in (True, False):
                    got = net.memory_plan(shape, fused=fused, threads=threads)
                    assert got == activation_plan(arch, batch, fused=fused, threads=threads)
                    assert any(got.in_place) or threads > 1  # several threads: only SE (if any) in place
                    assert max(got.live_bytes()) <= got.arena_bytes
        for isa in available_isas():
            for threads in (1, 2, 3):
                assert np.array_equal(net.run(x, isa=isa, threads=threads), ref), (isa, threads)
                assert np.array_equal(net.run(x, isa=isa, threads=threads, fused=False), ref), (isa, threads)


def test_the_largest_small32_network_peaks_lower_in_place():
    """Its peak was the SE block's 7x7 depthwise at 32x32 (block input + expanded + depthwise output, 458,752 bytes
    layer by layer and fused); in place that step holds the expanded tensor and 4 rows instead of two tensors."""
    arch = ss.get_space("small32").with_io(1, 10).largest()
    for fused in (True, False):
        p = activation_plan(arch, fused=fused)
        assert p.arena_bytes == 262_144 < 458_752
        assert max(p.live_bytes()) <= p.arena_bytes
