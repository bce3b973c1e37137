"""The stem fused into the first block (csrc/ops.h FusedBlock with a stem head, issue #33): bit-exact with the stem,
depthwise and project (or the stem and depthwise alone) run layer by layer, on every ISA this CPU has, for bands of
one row up, odd heights, stride 1/2 stems and depthwise, k 3/5/7 stems, the image edges, 1-3 threads, batch 1/3,
int8 and W4A8; bad parts are refused in one line."""

import numpy as np
import pytest

from nas.kernels import _C
from nas.kernels import random_specs as R
from nas.kernels import reference as ref
from nas.kernels.isa import ISAS, available_isas
from nas.kernels.ops import FusedBlockSpec, compile_op, fused_scratch_bytes, out_shape

ACTS = ["none", "relu", "relu6", "hswish", "swish"]
SUPPORTED = available_isas()
ALL_ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in SUPPORTED, reason=f"this CPU cannot run {i}"))
            for i in ISAS]


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


def _layer_by_layer(spec: FusedBlockSpec, x: np.ndarray, isa: str, threads: int) -> np.ndarray:
    t = x
    for part in spec.parts():
        t = compile_op(part, isa).run(t, threads=threads)
    return t


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
        threads = 1 + trial % 3
        got = compile_op(spec, isa).run(x, threads=threads)
        want = _layer_by_layer(spec, x, isa, 1)
        assert got.shape == want.shape == out_shape(spec, x.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}: stem {stem_k}/s{stem_s} dw {k}/s{stride} "
                                      f"{x.shape} project {cout} band {band} threads {threads}")
        if trial % 6 == 0:
            np.testing.assert_array_equal(ref.run(spec, x), want)
        h1 = (h - 1) // stem_s + 1
        banded += _C.fused_band_rows(h1, (w - 1) // stem_s + 1, c, k, stride, band) < (h1 - 1) // stride + 1
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
