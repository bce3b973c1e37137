"""The stem fused into the first block (csrc/ops.h FusedBlock with a stem head, issue #33): bit-exact with the stem,
depthwise and project (or the stem and depthwise alone) run layer by layer, on every ISA this CPU has, for bands of
one row up, odd heights, stride 1/2 stems and depthwise, k 3/5/7 stems, the image edges, 1-3 threads, batch 1/3,
int8 and W4A8; bad parts are refused in one line."""

import numpy as np
import pytest

from nas.kernels import _C
from nas.kernels import random_specs as R
from nas.kernels.ops import FusedBlockSpec, compile_op, fused_scratch_bytes

from .test_fused import ACTS, ALL_ISAS, SUPPORTED, _check_fused, _layer_by_layer


def _stem_block(rng: np.random.Generator, cin: int, c: int, stem_k: int, stem_s: int, k: int, stride: int,
                cout: int | None, *, bits: int = 8, band_rows: int = 0) -> FusedBlockSpec:
    """A random stem (cin -> c, stem_k x stem_k, stride stem_s) -> depthwise -> project to `cout` (None: no
    project), each with a random activation and the next input zero point its producer's output zero point."""
    stem = R.random_conv(rng, c, cin, stem_k, stem_s, ACTS[int(rng.integers(0, 5))])
    dw = R.random_depthwise(rng, c, k, stride, ACTS[int(rng.integers(0, 5))])
    dw.in_zp = stem.requant.out_zp
    pr = None
    if cout is not None:
        group = int(rng.choice([0, 4, 8])) if bits == 4 else 0
        pr = R.random_gemm(rng, cout, c, bits=bits, group_size=group)
        pr.in_zp = dw.requant.out_zp
    return FusedBlockSpec(None, dw, pr, band_rows, stem)


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_stem_fused_matches_layer_by_layer(isa):
    """Random shapes: stem k 3/5/7 stride 1/2 on 1-4 channels, odd heights and widths down to 1, depthwise k 3/5/7
    stride 1/2, with or without project, bands of 1-3 rows or automatic, batch 1-3, threads 1-3, int8 and W4A8
    projects; the NumPy reference of the fused spec agrees too."""
    rng = np.random.default_rng(2033)
    banded = 0
    for trial in range(60):
        stem_k, stem_s = (3, 5, 7)[trial % 3], 1 + (trial // 3) % 2
        k, stride = (3, 5, 7)[(trial // 6) % 3], 1 + (trial // 2) % 2
        cin, c = int(rng.choice([1, 3, 4])), int(rng.choice([8, 16, 17]))
        cout = None if trial % 4 == 1 else int(rng.choice([4, 8, 19]))
        bits = 4 if trial % 5 == 2 else 8
        band = int(rng.choice([0, 1, 2, 3]))
        spec = _stem_block(rng, cin, c, stem_k, stem_s, k, stride, cout, bits=bits, band_rows=band)
        b, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30))
        x = rng.integers(0, 256, size=(b, h, w, cin), dtype=np.uint8)
        _check_fused(spec, x, isa, 1 + trial % 3, trial % 6 == 0,
                     f"trial {trial}: stem {stem_k}/s{stem_s} dw {k}/s{stride} project {cout} band {band}")
        h1 = (h - 1) // stem_s + 1
        banded += _C.fused_band_rows(h1, (w - 1) // stem_s + 1, c, k, stride, band, stem=True) < \
            (h1 - 1) // stride + 1
    assert banded >= 20  # most trials really run several bands per image


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize(("h", "w", "project"), [(224, 224, False), (144, 144, True), (37, 31, True)])
def test_stem_fused_first_stage_shapes(isa, h, w, project):
    """The first stages of MobileNetV3-Small (stem 3x3/2 -> 16, depthwise 3x3/2, no project: its SE follows) and
    MobileNetV2-0.35@144 (stem 3x3/2 -> 16, depthwise 3x3/1, project to 8) with automatic bands, batch 1 and 3,
    threads 1-3, and an odd-sized one; every band and strip edge is inside an image here."""
    rng = np.random.default_rng(h + w)
    spec = _stem_block(rng, 3, 16, 3, 2, 3, 1 if project else 2, 8 if project else None)
    for b in (1, 3):
        x = rng.integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)
        want = _layer_by_layer(spec, x, isa, 2)
        op = compile_op(spec, isa)
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(op.run(x, threads=threads), want, err_msg=f"b {b} threads {threads}")


def test_stem_fused_one_row_bands_at_the_image_edges():
    """Bands of one row over a 7x7 stem of stride 2 on odd heights: the first and last bands read padding rows
    above and below the image (the stem's zero point), every band recomputes no row and loses none."""
    rng = np.random.default_rng(7)
    for h in (1, 2, 3, 5, 9, 13):
        spec = _stem_block(rng, 3, 8, 7, 2, 5, 1, 8, band_rows=1)
        x = rng.integers(0, 256, size=(2, h, 11, 3), dtype=np.uint8)
        np.testing.assert_array_equal(compile_op(spec).run(x, threads=2), _layer_by_layer(spec, x, "reference", 1))


def test_stem_fused_scratch_is_the_same_on_every_isa():
    """The band buffers a stem step needs do not depend on the ISA (the stem's rows take the larger of the padded
    and the im2col forms), so the arena is predictable from the architecture; caller-given scratch of any number
    of slots gives the same bits, too little is refused."""
    rng = np.random.default_rng(9)
    spec = _stem_block(rng, 3, 16, 3, 2, 3, 2, None)
    x = rng.integers(0, 256, size=(1, 41, 37, 3), dtype=np.uint8)
    per = fused_scratch_bytes(spec, 41, 37)
    want = _layer_by_layer(spec, x, "reference", 1)
    for isa in SUPPORTED:
        op = compile_op(spec, isa)
        assert op._op.scratch_bytes(41, 37) == per and per % 64 == 0
        for slots in (1, 3):
            out = np.empty_like(want)
            op._op.run(x, out, 3, np.zeros(per * slots, dtype=np.uint8))
            np.testing.assert_array_equal(out, want)
        with pytest.raises(ValueError, match="scratch"):
            op._op.run(x, np.empty_like(want), 1, np.zeros(per - 1, dtype=np.uint8))


def test_stem_fused_refuses_parts_that_do_not_chain():
    rng = np.random.default_rng(6)
    good = _stem_block(rng, 3, 16, 3, 2, 3, 1, 16)
    wide = _stem_block(rng, 3, 24, 3, 2, 3, 1, 16)
    with pytest.raises(ValueError, match=r"^stem: must have as many output channels as the depthwise \(16\)"):
        compile_op(FusedBlockSpec(None, good.dw, good.project, 0, wide.stem))
    with pytest.raises(ValueError, match="^expand/stem: a fused step has one head op"):
        compile_op(FusedBlockSpec(R.random_gemm(rng, 16, 16), good.dw, good.project, 0, good.stem))
    with pytest.raises(ValueError, match="^project: required unless the head is the stem"):
        compile_op(FusedBlockSpec(None, good.dw, None))
    residual = R.random_gemm(rng, 16, 16, residual=True)
    with pytest.raises(ValueError, match="^project: a residual block does not fuse with the stem"):
        compile_op(FusedBlockSpec(None, good.dw, residual, 0, good.stem))
    op = compile_op(good)
    with pytest.raises(ValueError, match="x"):  # the network input's channels, not the depthwise's
        op.run(rng.integers(0, 256, size=(1, 9, 9, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="out"):
        op.run(rng.integers(0, 256, size=(1, 9, 9, 3), dtype=np.uint8), out=np.empty((1, 9, 9, 16), np.uint8))


def _check_network(arch, threads_list=(1, 2, 3), batches=(1, 3), reference=True) -> bool:
    """The executor's arena equals `activation_plan` (fused and `fused=False`) at each batch and thread count, and
    the default logits equal the layer-by-layer and reference ones on every ISA here; True where the stem fused."""
    from latency_models.kernel_runner import kernel_network
    from nas.kernels.memory import activation_plan, arch_steps

    net = kernel_network(arch)
    fused_stem = False
    for batch in batches:
        shape = (batch, arch.resolution, arch.resolution, arch.in_channels)
        for threads in threads_list:
            steps = [g for g, _ in net.steps(shape, threads)]
            assert steps == arch_steps(arch, batch, threads=threads)
            fused_stem |= len(steps[0]) > 1
            assert net.memory_plan(shape, threads=threads) == activation_plan(arch, batch, threads=threads)
            assert net.memory_plan(shape, fused=False, threads=threads) == \
                activation_plan(arch, batch, fused=False, threads=threads)
        x = np.random.default_rng(batch).integers(0, 256, size=shape, dtype=np.uint8)
        want = net.run(x, fused=False)
        if reference:
            np.testing.assert_array_equal(net.run_reference(x), want)
        for isa in SUPPORTED:
            for threads in threads_list:
                np.testing.assert_array_equal(net.run(x, threads=threads, isa=isa), want, err_msg=f"{isa} {threads}")
    return fused_stem


@pytest.mark.parametrize("space", ["small32", "small32-v3", "mobilenetv2", "mobilenetv3", "efficientnet"])
def test_random_networks_of_every_space_in_the_predicted_arena(space):
    """Random networks of every space (the large ones at their smallest resolution): arena == prediction and
    bit-exact logits, 1-3 threads, batch 1 and 3; the stem fuses in some of them where the space allows it."""
    import random

    import search_spaces as ss
    from nas.kernels.memory import arch_steps

    sp = ss.get_space(space)
    rng = random.Random(5)
    archs = [sp.random_arch(rng) for _ in range(3 if space.startswith("small32") else 2)]
    if not space.startswith("small32"):
        archs = [a.replace(resolution=min(sp.resolutions)) for a in archs]
    if space == "small32":  # at 24-32 px the stem step is rarely the peak; add a network where it is
        archs.append(next(a for a in (sp.random_arch(rng) for _ in range(200))
                          if len(arch_steps(a, 3, threads=2)[0]) > 1))
    fused = [_check_network(a, reference=space.startswith("small32")) for a in archs]
    # small32-v3: residual first blocks; mobilenetv3 and efficientnet: SE first blocks at the smallest resolution,
    # where the stem step is not the network's peak (the arena would not shrink)
    assert any(fused) == (space in ("small32", "mobilenetv2"))


@pytest.mark.parametrize("name", ["mobilenetv3-small", "mobilenetv3-large", "mobilenetv2"])
def test_presets_in_the_predicted_arena(name):
    """The presets at 96 px (the stem fuses in MobileNetV3-Small without project, in MobileNetV2 with; never in
    MobileNetV3-Large, whose first block adds its input); MobileNetV3-Small at 224 px on one thread too."""
    import search_spaces as ss

    arch = ss.scale(ss.preset(name), resolution=96)
    assert _check_network(arch, reference=False) == (name != "mobilenetv3-large")
    if name == "mobilenetv3-small":
        assert _check_network(ss.preset(name), threads_list=(1,), batches=(1,), reference=False)


def test_stem_fused_pays_compares_with_the_steps_it_replaces():
    """The rule on sizes: fewer bytes than the stem step (x + stem) and the block's steps as they run; ties and
    residual blocks stay unfused."""
    no = _C.NOT_IN_PLACE
    # x 300, stem 400, dw 100 (stride 2), no project: layers peak at the stem step, 700; fused 300 + 100 + scratch
    assert _C.stem_fused_pays(300, 400, 100, 100, 299, False, False, no, 0)
    assert not _C.stem_fused_pays(300, 400, 100, 100, 300, False, False, no, 0)  # a tie: the layers run
    assert not _C.stem_fused_pays(300, 400, 100, 100, 0, False, True, no, 0)  # residual: never
    # with project: the block's own fused step (stem 400 + out 200 + its scratch 250 = 850) sets the bar when it
    # pays against its layers (stem + dw 400 = 800, dw + out 600: 800 -> not fused, bar = max(700, 800))
    assert _C.stem_fused_pays(300, 400, 400, 200, 299, True, False, no, 250)
    assert not _C.stem_fused_pays(300, 400, 400, 200, 300, True, False, no, 250)
    # a block whose own fused step pays (400 + 200 + 50 = 650 <= 800): the bar is the stem step's 700
    assert _C.stem_fused_pays(300, 400, 400, 200, 199, True, False, no, 50)
    assert not _C.stem_fused_pays(300, 400, 400, 200, 200, True, False, no, 50)
    # an in-place depthwise (headroom 64): the block's layers peak at dw + out = 600, the bar stays 700
    assert _C.stem_fused_pays(300, 400, 400, 200, 199, True, False, 64, 10_000)


SMALL32_28 = ("r28_i1_n10:stem_c32_s1_re6:ds_k3_c16_re6:ir_k3_e6_c24_re6,ir_k7_e4_c24_se0.25_re6:"
              "ir_k7_s2_e3_c32_se0.25_re6,ir_r2_k5_e4_c32_re6,ir_k7_e3_c32_re6:ir_k7_s2_e3_c48_se0.25_re6,ir_k5_e6_c48_se0.25_re6,"
              "ir_k3_e4_c48_se0.25_re6,ir_k3_e6_c48_se0.25_re6:ir_k3_e3_c96_se0.25_re6,ir_k3_e6_c96_se0.25_re6,"
              "ir_k7_e6_c96_re6,ir_k7_e4_c96_se0.25_re6:ir_k3_s2_e6_c120_re6,ir_k5_e3_c120_se0.25_re6,"
              "ir_k3_e6_c120_re6,ir_k5_e3_c120_re6:ir_k3_e6_c400_re6,ir_k7_e4_c400_se0.25_re6:head_c1280_re6")


def test_the_stem_fuses_only_where_the_arena_shrinks(monkeypatch):
    """A small32 network (stem of stride 1 at 28 px, expand-ratio-1 first block) on one thread: the stem-fused step
    needs fewer bytes than the steps it replaces (ops.h stem_fused_pays), but the greedy placement fits the network
    into a larger arena with it (123,648 bytes against 112,896), so the stem runs alone there, in the executor too.
    MobileNetV2-0.35@144: fused on one thread (145,152 -> 123,712 bytes); on two the arena is 145,152 either way
    (a tie: not fused)."""
    import search_spaces as ss
    from latency_models.kernel_runner import kernel_network
    from nas.kernels import memory

    def forced(arch, threads):  # the plan with the stem fused wherever stem_fused_pays says so
        with monkeypatch.context() as m:
            m.setattr(memory, "stem_lowers_arena", lambda steps, without, arena: steps)
            return memory.arch_steps(arch, threads=threads), memory.activation_plan(arch, threads=threads).arena_bytes

    def alone(arch, threads):  # the plan with the stem never fused
        with monkeypatch.context() as m:
            m.setattr(memory, "stem_fuses", lambda *a, **k: False)
            return memory.activation_plan(arch, threads=threads).arena_bytes

    arch = ss.decode(SMALL32_28)
    steps, arena = forced(arch, 1)
    assert steps[0] == [0, 1, 2] and arena == 123_648 and alone(arch, 1) == 112_896
    assert memory.arch_steps(arch)[0] == [0] and memory.activation_plan(arch).arena_bytes == 112_896
    net = kernel_network(arch)
    assert [g for g, _ in net.steps((1, 28, 28, 1), 1)] == memory.arch_steps(arch)
    v2 = ss.scale(ss.preset("mobilenetv2"), width=0.35, resolution=144)
    for threads, fused, arena in ((1, True, 123_712), (2, False, 145_152)):
        steps, with_stem = forced(v2, threads)
        assert steps[0] == [0, 1, 2] and alone(v2, threads) == 145_152
        assert (memory.arch_steps(v2, threads=threads)[0] == [0, 1, 2]) == fused
        assert memory.activation_plan(v2, threads=threads).arena_bytes == arena == min(with_stem, 145_152)
