"""Every kernel on every ISA is bit-exact against the NumPy reference over random shapes."""

import numpy as np
import pytest

from nas.kernels import random_specs as R
from nas.kernels import reference as ref
from nas.kernels.isa import available_isas
from nas.kernels.ops import DepthwiseSpec, GemmSpec, Requant, compile_op

ISAS = available_isas()
ACTS = ["none", "relu", "relu6", "hswish", "swish"]


def _x(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _check(spec, x, isa, residual=None, threads=1):
    got = compile_op(spec, isa).run(x, residual=residual, threads=threads)
    want = ref.run(spec, x, residual)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return want


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_random_shapes(isa):
    rng = np.random.default_rng(10)
    informative = 0
    for trial in range(60):
        n = int(rng.choice([1, 3, 8, 15, 16, 17, 24, 33, 63, 64, 65, 90, 96, 100, 160]))
        k = int(rng.choice([1, 2, 3, 4, 5, 7, 16, 27, 31, 64, 97]))
        bits = int(rng.choice([8, 4]))
        group = int(rng.choice([0, 4, 8, 32])) if bits == 4 else 0
        act = ACTS[trial % len(ACTS)]
        spec = R.random_gemm(rng, n, k, bits=bits, group_size=group, act=act, residual=trial % 3 == 0)
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6)), k)
        res = _x(rng, (*shape[:-1], n)) if spec.residual else None
        want = _check(spec, _x(rng, shape), isa, res)
        informative += np.unique(want).size > 2
    assert informative >= 45  # the random requantization mostly exercises non-saturated outputs


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_many_rows_every_tile_shape(isa):
    """Enough rows for every register tile and the int4 weight-panel path (AVX-512 unpacks int4 panels from 64 rows)."""
    rng = np.random.default_rng(19)
    for n in (16, 24, 40, 64, 96, 144, 160):
        for bits, group in ((8, 0), (4, 0), (4, 32)):
            spec = R.random_gemm(rng, n, 40, bits=bits, group_size=group, act="relu6", residual=n % 3 == 0)
            shape = (2, 7, 9, 40)
            res = _x(rng, (*shape[:-1], n)) if spec.residual else None
            _check(spec, _x(rng, shape), isa, res, threads=2)


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_few_rows_every_channel_tail(isa):
    """1-3 rows (linear layers, tiny maps) take their own tiles on some ISAs; every count of trailing 8-channel
    vectors of such a tile is computed (a tile of 4 vectors once left the 2nd and 3rd of a 24-channel tail out)."""
    rng = np.random.default_rng(23)
    for m in (1, 2, 3):
        for n in (1, 8, 10, 16, 24, 31, 40, 56, 100):
            for bits, group in ((8, 0), (4, 0), (4, 32)):
                spec = R.random_gemm(rng, n, 48, bits=bits, group_size=group, act="relu6", residual=n % 2 == 0)
                shape = (1, 1, m, 48)
                res = _x(rng, (*shape[:-1], n)) if spec.residual else None
                _check(spec, _x(rng, shape), isa, res)


@pytest.mark.parametrize("isa", ISAS)
def test_linear_int32_logits(isa):
    rng = np.random.default_rng(11)
    for n, k, b in [(10, 64, 1), (1000, 96, 2), (17, 5, 3)]:
        for bits in (8, 4):
            spec = R.random_gemm(rng, n, k, bits=bits, out_int32=True)
            _check(spec, _x(rng, (b, k)), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_depthwise_random_shapes(isa):
    rng = np.random.default_rng(12)
    for trial in range(30):
        k = [3, 5, 7][trial % 3]
        stride = 1 + (trial // 3) % 2
        c = int(rng.choice([1, 3, 8, 15, 16, 17, 31, 40, 72]))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        spec = R.random_depthwise(rng, c, k, stride, ACTS[trial % len(ACTS)])
        _check(spec, _x(rng, (int(rng.integers(1, 3)), h, w, c)), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_depthwise_channel_blocks_borders_and_extremes(isa):
    """The boundaries of the 16-channel / tap-pair kernels: channel counts around multiples of 8 and 16 (tails of
    1, 8 and 15 channels, whose 16-byte reads stop at the input's end), images narrower or shorter than the kernel,
    exactly one interior column (k = 7 on 7 px), odd tap counts (the last pair's zero partner), batch 2; then the
    extreme products (|x - in_zp| = 255 times |w| = 127 on every tap) at a scale that keeps them unsaturated."""
    rng = np.random.default_rng(21)
    for c in (1, 15, 16, 17, 24, 33):
        for k in (3, 5, 7):
            for stride in (1, 2):
                for h, w in ((1, 1), (2, k - 1), (k, k), (k + 1, k + 2), (9, 4)):
                    spec = R.random_depthwise(rng, c, k, stride, "none")
                    _check(spec, _x(rng, (2, h, w, c)), isa)
    for k in (3, 7):
        c = 33
        for in_zp, xv in ((0, 255), (255, 0)):
            for sign in (1, -1):
                wd = np.full((c, k, k), 127 * sign, np.int8)
                wd[::2] *= -1  # both signs of the product in one op
                rq = Requant(np.full(c, 1 << 30, np.int32), np.full(c, -13, np.int32), 128, 0, 255)
                spec = DepthwiseSpec(wd, 1, np.zeros(c, np.int32), in_zp, rq)
                want = _check(spec, np.full((1, k + 2, k + 2, c), xv, np.uint8), isa)
                # the center pixel sums k * k products of 255 * 127, about 2^-14 of that after the scale
                assert abs(int(want[0, k // 2 + 1, k // 2 + 1, 0]) - 128) == round(k * k * 255 * 127 / 2**14)


@pytest.mark.parametrize("isa", ISAS)
def test_stem_conv(isa):
    rng = np.random.default_rng(13)
    for cin in (1, 3, 4):
        for stride in (1, 2):
            for h, w in [(1, 1), (2, 3), (7, 9), (16, 16)]:
                spec = R.random_conv(rng, int(rng.choice([8, 16, 19, 32])), cin, 3, stride, "relu6")
                _check(spec, _x(rng, (2, h, w, cin)), isa)
    spec = R.random_conv(rng, 16, 3, 3, 2, "hswish")
    _check(spec, _x(rng, (1, 15, 13, 3)), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_pool_and_se(isa):
    rng = np.random.default_rng(14)
    for c, h, w, hidden in [(16, 1, 1, 8), (17, 3, 5, 4), (72, 7, 7, 24), (120, 2, 2, 32)]:
        b = int(rng.integers(1, 4))
        _check(R.random_pool(rng, h * w), _x(rng, (b, h, w, c)), isa)
        _check(R.random_se(rng, c, hidden, h * w), _x(rng, (b, h, w, c)), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_threads_do_not_change_output(isa):
    rng = np.random.default_rng(15)
    specs = [
        (R.random_gemm(rng, 40, 24, act="relu6"), (2, 9, 9, 24)),
        (R.random_gemm(rng, 1000, 64, out_int32=True), (1, 64)),
        (R.random_depthwise(rng, 40, 5, 2), (2, 9, 9, 40)),
        (R.random_conv(rng, 16, 3), (2, 10, 10, 3)),
        (R.random_se(rng, 40, 16, 81), (2, 9, 9, 40)),
    ]
    for spec, shape in specs:
        x = _x(rng, shape)
        op = compile_op(spec, isa)
        one = op.run(x, threads=1)
        for t in (2, 3, 8):
            np.testing.assert_array_equal(op.run(x, threads=t), one)


def test_scale32_is_one_rounding_of_the_fixed_point_multiplier():
    rng = np.random.default_rng(16)
    m = rng.integers(1 << 30, 1 << 31, size=5000)
    s = rng.integers(-31, 31, size=5000)
    want = np.array([np.float32(float(mi) * 2.0 ** (int(si) - 31)) for mi, si in zip(m, s, strict=True)])
    np.testing.assert_array_equal(ref.scale32(m, s), want)


@pytest.mark.parametrize("isa", ISAS)
def test_requant_ties_to_even_large_accumulators_and_clamps(isa):
    """acc * 0.5 and acc * 0.25 hit exact ties (round half to even); |acc + bias| > 2^24 exercises the int32 ->
    float32 rounding; relu6-style bounds clamp."""
    rng = np.random.default_rng(18)
    n, k = 72, 4  # 64 + 8 channels: the AVX-512 64-channel and 16-channel epilogues
    w = np.zeros((n, k), np.int8)
    w[:, 0] = 1  # acc = x[0] - in_zp
    cases = [(1 << 30, 0, 300), (1 << 30, -1, 600), (1 << 30, -24, 2**28), (1 << 30, -23, 0),
             (1 << 30, 30, 300)]  # the last: |v| up to 2^37, past int32 (clamped before the conversion)
    for mult, shift, bias_mag in cases:
        m = np.full(n, mult, np.int32)
        sh = np.full(n, shift, np.int32)
        bias = rng.integers(-bias_mag, bias_mag + 1, size=n, dtype=np.int32)
        for lo, hi in [(0, 255), (37, 200)]:
            spec = GemmSpec(w, bias, 128, Requant(m, sh, 131, lo, hi))
            x = _x(rng, (3, 7, k))
            want = _check(spec, x, isa)
            acc = x[..., :1].astype(np.int64) - 128 + bias.astype(np.int64)
            v = acc.astype(np.float32) * np.float32(mult * 2.0 ** (shift - 31))
            expect = np.clip(np.round(v.astype(np.float64)) + 131, lo, hi)  # np.round: half to even
            np.testing.assert_array_equal(want, expect.astype(np.uint8))
    for shift in (-8, 30):  # depthwise, with and without the no-overflow shortcut
        c = 72
        wd = rng.integers(-127, 128, size=(c, 3, 3), dtype=np.int8)
        rq = Requant(np.full(c, 1 << 30, np.int32), np.full(c, shift, np.int32), 100, 20, 230)
        spec = DepthwiseSpec(wd, 1, rng.integers(-5000, 5000, size=c, dtype=np.int32), 77, rq)
        want = _check(spec, _x(rng, (1, 6, 5, c)), isa)
        assert np.unique(want).size > (2 if shift < 0 else 1)


def test_input_quantization_matches_numpy():
    from nas.kernels import _C
    from nas.kernels.quant import QParams, quantize_input

    rng = np.random.default_rng(17)
    for scale, zp in [(0.02, 128), (0.0371, 3), (1.0, 0), (0.5, 255)]:
        x = (rng.standard_normal((2, 3, 11, 7)) * 200 * scale).astype(np.float32)
        x.ravel()[:60] = (np.arange(60) - 30) * np.float32(scale) * 0.5  # exact ties
        want = quantize_input(x.transpose(0, 2, 3, 1), QParams(scale, zp))
        got = np.empty(want.shape, np.uint8)
        _C.quantize_nchw(x, np.float32(scale), zp, got)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["main product inexact", "residual product inexact"])
@pytest.mark.parametrize("isa", ISAS)
def test_residual_epilogue_is_two_roundings_never_a_fused_multiply_add(isa, case):
    """v = float32(acc) * s + float32(r - zp) * rs with one product exact and the other just past a rounding tie:
    two float32 operations round it one way, a fused multiply-add (what a compiler contracts a * b + c into on a
    target with FMA, e.g. the AVX2 file) the other. Every ISA must give the two-rounding bytes (the AVX2 path once
    gave one LSB off in a real network; tests/kernels/aarch64/driver.cpp has the same cases for ARM)."""
    from nas.kernels.ops import Residual
    from nas.kernels.quant import quantize_multiplier

    scale, res, a, res_zp, r = {"main product inexact": (25.6, Residual(200, 1 << 30, 9), 1005, 200, 100),
                                "residual product inexact": (256.0, Residual(255, *quantize_multiplier(25.6)), 25,
                                                             255, 0)}[case]
    n, m = 16, 63
    pairs = [quantize_multiplier(scale * (1.0 + j / 4096.0)) for j in range(n)]  # off the tie by channel
    rq = Requant(np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32), 100)
    spec = GemmSpec(np.ones((n, 1), np.int8), np.full(n, a, np.int32), 128, rq, residual=res)
    rows = np.arange(m)
    x = (128 + rows % 5 - 2).astype(np.uint8)[:, None]  # acc = x - 128
    rv = np.repeat((r + (rows % 7 == 3))[:, None], n, axis=1).astype(np.uint8)
    s = np.array([np.float32(np.ldexp(np.float64(mm), int(sh) - 31 - 8)) for mm, sh in pairs], np.float32)
    rs = np.float32(np.ldexp(np.float32(np.ldexp(np.float64(res.multiplier), res.shift - 31)), -8))
    acc = (x.astype(np.float32) - 128 + a)
    p1, p2 = acc * s[None, :], (rv.astype(np.float32) - res_zp) * rs  # each product rounded to float32
    quant = lambda t: (np.rint(np.clip(t, -100, 155)) + 100).astype(np.uint8)  # noqa: E731
    want = quant(p1 + p2)
    fused = quant((acc.astype(np.float64) * s[None, :] + p2).astype(np.float32))  # one rounding of a * s + p2
    assert (fused != want).any() or (quant((rv.astype(np.float64) - res_zp) * rs + p1).astype(np.uint8) != want).any()
    np.testing.assert_array_equal(ref.run(spec, x, rv), want)
    np.testing.assert_array_equal(compile_op(spec, isa).run(x, residual=rv), want)
