"""Fused inverted-residual blocks (csrc/ops.h FusedBlock): bit-exact with their layers run one by one, on every
ISA this CPU has, for any band height and thread count; the executor's fused plan gives the same logits from a
smaller arena, which nas.kernels.memory predicts exactly."""

import numpy as np
import pytest

from nas.kernels import _C
from nas.kernels import random_specs as R
from nas.kernels import reference as ref
from nas.kernels.isa import ISAS, available_isas
from nas.kernels.ops import FusedBlockSpec, compile_op, fused_scratch_bytes, out_shape

ACTS = ["none", "relu", "relu6", "hswish", "swish"]
SUPPORTED = available_isas()


def _isa_param(isa: str):
    """Every ISA the kernels have; those this CPU lacks are skipped with the reason (the aarch64 driver and the
    AVX-512 machines cover them)."""
    return pytest.param(isa, marks=pytest.mark.skipif(isa not in SUPPORTED, reason=f"this CPU cannot run {isa}"))


ALL_ISAS = [_isa_param(i) for i in ISAS]


def _block(rng: np.random.Generator, cin: int, expand: int, cout: int, k: int, stride: int, *, bits: int = 8,
           residual: bool = False, band_rows: int = 0) -> FusedBlockSpec:
    """A random block: expand (absent for ratio 1) -> dw -> project, each with a random activation."""
    c = cin * expand
    group = int(rng.choice([0, 4, 8])) if bits == 4 else 0
    ex = None
    if expand > 1:
        ex = R.random_gemm(rng, c, cin, bits=bits, group_size=group, act=ACTS[int(rng.integers(0, 5))])
    dw = R.random_depthwise(rng, c, k, stride, ACTS[int(rng.integers(0, 5))])
    if ex is not None:
        dw.in_zp = ex.requant.out_zp
    pr = R.random_gemm(rng, cout, c, bits=bits, group_size=group, residual=residual)
    pr.in_zp = dw.requant.out_zp
    return FusedBlockSpec(ex, dw, pr, band_rows)


def _layer_by_layer(spec: FusedBlockSpec, x: np.ndarray, isa: str, threads: int) -> np.ndarray:
    """The fused step's layers one after the other (a residual project adds the block input `x`)."""
    t = x
    for part in spec.parts():
        res = x if getattr(part, "residual", None) is not None else None
        t = compile_op(part, isa).run(t, residual=res, threads=threads)
    return t


def _check_fused(spec: FusedBlockSpec, x: np.ndarray, isa: str, threads: int, reference: bool, what: str) -> None:
    """The fused step on `threads` threads gives its layers' bits (and, with `reference`, the NumPy reference's)."""
    got = compile_op(spec, isa).run(x, threads=threads)
    want = _layer_by_layer(spec, x, isa, 1)
    assert got.shape == want.shape == out_shape(spec, x.shape)
    np.testing.assert_array_equal(got, want, err_msg=f"{what} {x.shape} threads {threads}")
    if reference:
        np.testing.assert_array_equal(ref.run(spec, x), want)


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_fused_block_matches_layer_by_layer_random_shapes(isa):
    """Odd sizes, stride 2 on odd sizes, k 3/5/7, expand ratio 1, int8 and W4A8, residual or not, batch 1-3, bands
    of 1-3 rows or automatic, 1-3 threads; the NumPy reference of the fused spec agrees too."""
    rng = np.random.default_rng(33)
    banded = 0
    for trial in range(48):
        k, stride = (3, 5, 7)[trial % 3], 1 + (trial // 3) % 2
        expand = (1, 3, 6)[(trial // 6) % 3]
        cin = int(rng.choice([1, 3, 8, 16, 17]))
        residual = stride == 1 and trial % 4 != 3
        cout = cin if residual else int(rng.choice([4, 8, 19]))
        bits = 4 if trial % 5 == 2 else 8
        band = int(rng.choice([0, 1, 2, 3]))
        spec = _block(rng, cin, expand, cout, k, stride, bits=bits, residual=residual, band_rows=band)
        b, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 14)), int(rng.integers(1, 14))
        x = rng.integers(0, 256, size=(b, h, w, cin), dtype=np.uint8)
        _check_fused(spec, x, isa, 1 + trial % 3, trial % 6 == 0,
                     f"trial {trial}: {spec.dw.weight.shape} s{stride} e{expand} band {band}")
        banded += _C.fused_band_rows(h, w, cin * expand, k, stride, band) < (h - 1) // stride + 1
    assert banded >= 15  # most trials really run several bands per image


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize(("h", "w", "stride", "expand", "bits"),
                         [(33, 29, 1, 6, 8), (31, 27, 2, 6, 4), (40, 17, 1, 1, 8)])
def test_fused_block_automatic_bands(isa, h, w, stride, expand, bits):
    """Shapes large enough that the cache-sized band covers only part of each image, threads 1/2/3."""
    rng = np.random.default_rng(h * w + stride)
    cin = 24 if expand > 1 else 96
    spec = _block(rng, cin, expand, cin if stride == 1 else 32, 3, stride, bits=bits, residual=stride == 1)
    c = cin * expand
    assert 1 <= _C.fused_band_rows(h, w, c, 3, stride) < (h - 1) // stride + 1
    x = rng.integers(0, 256, size=(2, h, w, cin), dtype=np.uint8)
    want = _layer_by_layer(spec, x, isa, 2)
    op = compile_op(spec, isa)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(op.run(x, threads=threads), want)


def test_fused_block_scratch_slots_and_sizes():
    """Caller-given scratch: any number of slots (fewer slots than threads runs fewer strips), same bits; too small
    a scratch is refused; the per-thread size is the band buffers, far below the expanded tensor."""
    rng = np.random.default_rng(5)
    spec = _block(rng, 16, 6, 16, 5, 1, residual=True)
    x = rng.integers(0, 256, size=(2, 23, 19, 16), dtype=np.uint8)
    op = compile_op(spec)
    want = op.run(x, threads=1)
    per = fused_scratch_bytes(spec, 23, 19)
    assert per == op._op.scratch_bytes(23, 19) and per % 64 == 0
    for slots in (1, 2, 5):
        out = np.empty_like(want)
        op._op.run(x, out, 3, np.zeros(per * slots, dtype=np.uint8))
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="scratch"):
        op._op.run(x, np.empty_like(want), 1, np.zeros(per - 1, dtype=np.uint8))
    band = _C.fused_band_rows(23, 19, 96, 5, 1)
    assert per == -(-min(23, band - 1 + 5) * 19 * 96 // 64) * 64 + -(-band * 19 * 96 // 64) * 64
    no_expand = FusedBlockSpec(None, spec.dw, spec.project)
    assert fused_scratch_bytes(no_expand, 23, 19) == -(-band * 19 * 96 // 64) * 64  # the depthwise band only


def test_fused_block_rejects_parts_that_do_not_chain():
    rng = np.random.default_rng(6)
    good = _block(rng, 8, 3, 8, 3, 1, residual=True)
    with pytest.raises(ValueError, match="expand"):
        compile_op(FusedBlockSpec(R.random_gemm(rng, 20, 8), good.dw, good.project))
    with pytest.raises(ValueError, match="project"):
        compile_op(FusedBlockSpec(good.expand, good.dw, R.random_gemm(rng, 8, 20)))
    strided = _block(rng, 8, 3, 8, 3, 2)
    with pytest.raises(ValueError, match="residual"):
        compile_op(FusedBlockSpec(good.expand, strided.dw, good.project))
    with pytest.raises(ValueError, match="residual"):
        compile_op(good).run(rng.integers(0, 256, size=(1, 5, 5, 8), dtype=np.uint8),
                             residual=np.zeros((1, 5, 5, 8), np.uint8))


@pytest.mark.parametrize("space", ["small32", "small32-v3"])
def test_fused_networks_give_the_same_logits_from_the_predicted_smaller_arena(space):
    """Random networks (SE blocks stay unfused, residual, stride 2, expand ratio 1): the default (fused) logits equal
    the layer-by-layer ones bit for bit on every ISA and thread count; the executor's default arena is the fused one
    `activation_plan` predicts from the architecture, at batch 1 and 3 and 1 or 3 threads, and never above the
    layer-by-layer arena on as many threads (`fused=False`, predicted alike)."""
    import random

    import search_spaces as ss
    from latency_models.kernel_runner import kernel_network
    from nas.kernels.memory import activation_plan, fusion_groups

    rng = random.Random(2)
    sp = ss.get_space(space)
    smaller = 0
    for arch in [sp.random_arch(rng) for _ in range(3)]:
        net = kernel_network(arch)
        assert any(len(g) > 1 for g in fusion_groups([layer.name for layer in net.layers]))
        for batch in (1, 3):
            shape = (batch, arch.resolution, arch.resolution, arch.in_channels)
            for threads in (1, 3):  # both plans grow with the threads (band buffers, in-place depthwise waves)
                layerwise = net.memory_plan(shape, fused=False, threads=threads)
                assert layerwise == activation_plan(arch, batch, fused=False, threads=threads)
                unfused = layerwise.arena_bytes
                got = net.memory_plan(shape, threads=threads)  # the default: fused where it pays
                assert got == net.memory_plan(shape, fused=True, threads=threads)
                assert got == activation_plan(arch, batch, threads=threads)
                assert got.arena_bytes <= unfused
                smaller += got.arena_bytes < unfused
        x = np.random.default_rng(0).integers(0, 256, size=(2, arch.resolution, arch.resolution, arch.in_channels),
                                              dtype=np.uint8)
        want = net.run(x, fused=False)
        np.testing.assert_array_equal(net.run_reference(x), want)
        for isa in SUPPORTED:
            for threads in (1, 2, 3):
                np.testing.assert_array_equal(net.run(x, threads=threads, isa=isa), want)
    assert smaller >= 2  # fusing really lowers the peak on some of these networks


def test_fusion_groups_skip_squeeze_excite_blocks():
    from nas.kernels.memory import fused_name, fusion_groups

    names = ["stem", "blocks.0.dw", "blocks.0.project", "blocks.1.expand", "blocks.1.dw", "blocks.1.se",
             "blocks.1.project", "blocks.2.expand", "blocks.2.dw", "blocks.2.project", "head", "pool", "classifier"]
    groups = fusion_groups(names)
    assert groups == [[0], [1, 2], [3], [4], [5], [6], [7, 8, 9], [10], [11], [12]]
    assert [fused_name(names, g) for g in groups][1:3] == ["blocks.0.fused", "blocks.1.expand"]


def test_a_block_is_fused_only_where_its_step_needs_no_more_memory():
    """An early block (bands much smaller than the image) is fused; a late one whose band buffers are as large as
    the tensors they replace is not, since its step would then also hold the block input and output."""
    from nas.kernels.memory import NOT_IN_PLACE, fusing_pays

    # input, expanded, depthwise output, output, scratch (bytes)
    no = NOT_IN_PLACE  # a stride-2 depthwise: its layer step holds its input and output
    assert fusing_pays(100, 600, 600, 100, 100, expand=True, residual=False, dw_headroom=no)
    assert not fusing_pays(100, 600, 600, 100, 1200, expand=True, residual=False, dw_headroom=no)
    # without expand the depthwise step reads the input itself; with a residual the input stays alive anyway
    assert fusing_pays(100, 0, 100, 100, 100, expand=False, residual=True, dw_headroom=no)
    assert not fusing_pays(100, 0, 100, 100, 101, expand=False, residual=True, dw_headroom=no)
    # the layers as they run: an in-place depthwise step holds its input + headroom (600 + 64), so the layers' fullest
    # step is expand's 700, and 100 + 100 + 600 bytes of band buffers no longer pay
    assert not fusing_pays(100, 600, 600, 100, 600, expand=True, residual=False, dw_headroom=64)
    assert fusing_pays(100, 600, 600, 100, 500, expand=True, residual=False, dw_headroom=64)
    # ... but the residual keeps the input of an expand-ratio-1 block: no in place, the same as a stride-2 one
    assert fusing_pays(100, 0, 100, 100, 100, expand=False, residual=True, dw_headroom=0) == \
        fusing_pays(100, 0, 100, 100, 100, expand=False, residual=True, dw_headroom=no)
    # a headroom as large as the tensor is no in place
    assert fusing_pays(100, 600, 600, 100, 1000, expand=True, residual=False, dw_headroom=600)
