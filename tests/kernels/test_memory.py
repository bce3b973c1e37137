"""The activation arena: `_C.plan_arena` never lets two live buffers share a byte; the executor runs on exactly the
plan `nas.kernels.memory.activation_plan` computes from the architecture alone, with unchanged (bit-exact) logits."""

import random

import numpy as np
import pytest

import search_spaces as ss
from latency_models.kernel_runner import kernel_network
from nas.kernels import _C, available_isas
from nas.kernels.memory import ALIGN, activation_plan, peak_activation_bytes, plan, weight_bytes, wiring


def _check(sizes, first, last, offsets, arena, align=ALIGN):
    assert all(o % align == 0 for o in offsets)
    assert arena == max((o + s for o, s in zip(offsets, sizes, strict=True)), default=0)
    for i in range(len(sizes)):
        for j in range(i):
            if first[i] <= last[j] and first[j] <= last[i] and sizes[i] and sizes[j]:  # alive together
                assert offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i], (i, j)
    steps = max(last, default=-1) + 1
    live = max((sum(s for s, f, la in zip(sizes, first, last, strict=True) if f <= t <= la) for t in range(steps)),
               default=0)
    assert arena >= live  # no plan beats the bytes alive at one step


def test_random_lifetimes_never_share_bytes_while_alive():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 14)
        sizes = [rng.choice([0, 1, 63, 64, 65, 1000, rng.randint(1, 5000)]) for _ in range(n)]
        first = [rng.randint(0, 10) for _ in range(n)]
        last = [f + rng.randint(0, 4) for f in first]
        offsets, arena, in_place = _C.plan_arena(sizes, first, last, ALIGN)
        assert not any(in_place)
        _check(sizes, first, last, offsets, arena)
        assert _C.plan_arena(sizes, first, last, ALIGN) == (offsets, arena, in_place)  # deterministic


def test_a_chain_reuses_memory_and_a_residual_keeps_its_block_input():
    # input -> a -> b -> c (+ input): the input lives until c, a's bytes are free again once b has run
    p = plan([100, 200, 300, 100], wiring(["blocks.0.expand", "blocks.0.dw", "blocks.0.project"], [False, False, True]))
    assert p.last == (3, 2, 3, 3)
    assert p.arena_bytes < p.unplanned_bytes
    assert max(p.live_bytes()) == 300 + 200 + 100  # step 2: a is read, b written, the input still held
    _check(p.sizes, p.first, p.last, p.offsets, p.arena_bytes)


def test_bad_plans_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="same length"):
        _C.plan_arena([1, 2], [0], [0, 1], 64)
    with pytest.raises(ValueError, match="last read before it is written"):
        _C.plan_arena([1], [2], [1], 64)
    with pytest.raises(ValueError, match="power of two"):
        _C.plan_arena([1], [0], [0], 48)
    with pytest.raises(ValueError, match="buffers"):
        plan([1, 2, 3], wiring(["stem"], [False]))


@pytest.mark.parametrize("space", ["small32", "small32-v3"])
def test_the_executor_runs_on_the_plan_predicted_from_the_architecture(space):
    """Random networks (SE, residual, stride 2, hidden layers): the executor's arena is the one `activation_plan`
    gives for the architecture alone, at batch 1 and 3, and its logits stay those of the reference."""
    rng = random.Random(1)
    sp = ss.get_space(space)
    for arch in [sp.random_arch(rng) for _ in range(3)]:
        net = kernel_network(arch)
        for batch in (1, 3):
            shape = (batch, arch.resolution, arch.resolution, arch.in_channels)
            assert net.memory_plan(shape).arena_bytes == peak_activation_bytes(arch, batch)
            assert net.memory_plan(shape) == activation_plan(arch, batch)
            assert net.memory_plan(shape, fused=False) == activation_plan(arch, batch, fused=False)
        x = np.random.default_rng(0).integers(0, 256, size=(2, arch.resolution, arch.resolution, arch.in_channels),
                                              dtype=np.uint8)
        ref = net.run_reference(x)
        for isa in available_isas():
            assert np.array_equal(net.run(x, isa=isa), ref), isa
            assert np.array_equal(net.run(x, isa=isa, fused=False), ref), isa
            assert np.array_equal(net.run(x, threads=2, isa=isa), ref), isa
        plan_ = activation_plan(arch)
        assert plan_.arena_bytes < plan_.unplanned_bytes
        assert net.weight_bytes() == weight_bytes(arch)  # the int8 weights as stored


@pytest.mark.parametrize("space", ["small32", "small32-v3"])
def test_plan_executor_and_latency_tables_take_one_fusing_decision(space):
    """`block_fuses` (one block's shapes) is the rule: the executor's steps for real lowered networks are
    `arch_steps` at batch 1 and 3 on 1-3 threads, and each block's decision is `fusing_pays` of its buffer sizes
    and band-buffer scratch, as `activation_plan` computed it before the rule had its own function."""
    from latency_models.ops import fused_block_op, fuses
    from nas.kernels.memory import arch_steps, block_fuses, fused_scratch, fusing_pays, in_place_headroom

    rng = random.Random(4)
    sp = ss.get_space(space)
    decided, decided_stem = set(), set()
    for arch in [sp.random_arch(rng) for _ in range(3)]:
        net = kernel_network(arch)
        ls = ss.layers(arch)
        for batch in (1, 3):
            for threads in (1, 2, 3):
                shape = (batch, arch.resolution, arch.resolution, arch.in_channels)
                assert [g for g, _ in net.steps(shape, threads)] == arch_steps(arch, batch, threads=threads)
                for g in (g for g in arch_steps(arch, batch, fused=False) if ls[g[0]].name.endswith(".dw")):
                    dw, project = ls[g[0]], ls[g[0] + 1]
                    if project.op != "pw":
                        continue  # squeeze-excite between: never fused
                    expand = ls[g[0] - 1].name.endswith(".expand")
                    cin = ls[g[0] - 1].in_channels if expand else dw.in_channels
                    x = batch * dw.in_hw ** 2 * cin
                    mid = [batch * dw.in_hw ** 2 * dw.in_channels if expand else 0,
                           batch * dw.out_hw ** 2 * dw.out_channels, batch * dw.out_hw ** 2 * project.out_channels]
                    scratch = fused_scratch(batch, dw.in_hw, dw.in_hw, dw.in_channels, dw.kernel, dw.stride, expand,
                                            threads)
                    headroom = in_place_headroom("dw", dw.stride, dw.in_hw, dw.in_channels, dw.kernel, threads)
                    want = fusing_pays(x, *mid, scratch, expand, project.residual, headroom)
                    got = block_fuses(batch, dw.in_hw, dw.in_hw, cin, dw.in_channels, project.out_channels,
                                      dw.kernel, dw.stride, expand, project.residual, threads)
                    assert got == want
                    decided.add(got)
        for threads in (1, 2):  # the latency tables' decision for a block (batch 1) is the same rule
            steps = arch_steps(arch, threads=threads)
            fused = {ls[g[0]].name.split(".")[1] for g in steps if len(g) > 1 and g[0] != 0}
            c, hw = arch.stem_channels, (arch.resolution - 1) // arch.stem_stride + 1
            with_stem = len(steps[0]) > 1
            decided_stem.add(with_stem)
            for i, b in enumerate(arch.blocks()):
                key = fused_block_op(c, hw, b)  # inside the stem's step the first block is priced as it would run
                assert (key is not None and fuses(key, threads)) == (str(i) in fused) or (i == 0 and with_stem)
                c, hw = b.out_channels, (hw - 1) // b.stride + 1
    assert decided == {True, False}
    assert decided_stem == {False}  # small32 at 24-32 px: the stem step is rarely the peak; -v3: residual blocks
