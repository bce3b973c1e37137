"""Random but realistic quantized op specs: used by ``time_layer`` (profiling) and by the tests."""

from __future__ import annotations

import numpy as np

from nas.kernels.ops import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, Requant, Residual, SESpec, Spec
from nas.kernels.quant import GATE_SCALE, LUT_ACTIVATIONS, QParams, act_bounds, make_lut, quantize_multiplier

_PRE = QParams(scale=8.0 / 255.0, zero_point=128)  # pre-activation grid used by random LUT activations


def random_requant(rng: np.random.Generator, n: int, fan_in: int, act: str = "none", wmax: int = 127) -> Requant:
    """Per-channel multipliers that map a typical accumulator (std ~ sqrt(fan_in) * 74 * wmax / 2) to ~40 LSB."""
    typical = np.sqrt(fan_in) * 74.0 * wmax / 2.0
    reals = rng.uniform(0.3, 3.0, size=n) * 40.0 / typical
    pairs = [quantize_multiplier(float(r)) for r in reals]
    m = np.array([p[0] for p in pairs], dtype=np.int32)
    s = np.array([p[1] for p in pairs], dtype=np.int32)
    out_zp = int(rng.integers(0, 256))
    if act in LUT_ACTIVATIONS:
        out = QParams(scale=0.03, zero_point=int(rng.integers(0, 64)))
        return Requant(m, s, _PRE.zero_point, 0, 255, make_lut(act, _PRE, out))
    if act == "none":
        return Requant(m, s, out_zp)
    lo, hi = act_bounds(act, QParams(scale=float(rng.uniform(0.02, 0.1)), zero_point=out_zp))
    return Requant(m, s, out_zp, lo, hi)


def random_gemm(
    rng: np.random.Generator, n: int, k: int, *, bits: int = 8, group_size: int = 0, act: str = "none",
    residual: bool = False, out_int32: bool = False,
) -> GemmSpec:
    """Random pointwise / linear spec."""
    wmax = 127 if bits == 8 else 7
    w = rng.integers(-wmax, wmax + 1, size=(n, k), dtype=np.int8)
    subs = None
    fan = k
    if group_size:
        subs = rng.integers(1, 256, size=(n, (k + group_size - 1) // group_size), dtype=np.int32)
        fan = k * 128 * 128
    rq = random_requant(rng, n, fan, act, wmax)
    res = None
    if residual:
        rq.multiplier, rq.shift = _scale_requant(rq, 2.0**8)
        rm, rs = quantize_multiplier(float(rng.uniform(0.5, 2.0)) * 2.0**8)
        res = Residual(zp=int(rng.integers(0, 256)), multiplier=rm, shift=rs)
    bias = rng.integers(-20000, 20000, size=n, dtype=np.int32)
    return GemmSpec(w, bias, int(rng.integers(0, 256)), rq, bits, subs, group_size, out_int32, res)


def _scale_requant(rq: Requant, factor: float) -> tuple[np.ndarray, np.ndarray]:
    real = rq.multiplier.astype(np.float64) * 2.0 ** (rq.shift.astype(np.float64) - 31) * factor
    pairs = [quantize_multiplier(float(r)) for r in real]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def random_conv(
    rng: np.random.Generator, cout: int, cin: int, k: int = 3, stride: int = 2, act: str = "relu6"
) -> ConvSpec:
    """Random stem (full convolution) spec."""
    w = rng.integers(-127, 128, size=(cout, k, k, cin), dtype=np.int8)
    rq = random_requant(rng, cout, k * k * cin, act)
    return ConvSpec(w, stride, rng.integers(-20000, 20000, size=cout, dtype=np.int32), int(rng.integers(0, 256)), rq)


def random_depthwise(
    rng: np.random.Generator, c: int, k: int = 3, stride: int = 1, act: str = "relu6"
) -> DepthwiseSpec:
    """Random depthwise spec."""
    w = rng.integers(-127, 128, size=(c, k, k), dtype=np.int8)
    rq = random_requant(rng, c, k * k, act)
    return DepthwiseSpec(w, stride, rng.integers(-5000, 5000, size=c, dtype=np.int32), int(rng.integers(0, 256)), rq)


def random_pool(rng: np.random.Generator, hw: int) -> PoolSpec:
    """Random global-average-pool spec (output scale ~ input scale)."""
    m, s = quantize_multiplier(float(rng.uniform(0.5, 2.0)) / hw)
    return PoolSpec(hw, int(rng.integers(0, 256)), m, s, int(rng.integers(0, 256)))


def random_se(rng: np.random.Generator, c: int, hidden: int, hw: int) -> SESpec:
    """Random squeeze-excite spec: fc2 requantizes to a pre-activation grid and applies hard-sigmoid by LUT."""
    pool = random_pool(rng, hw)
    fc1 = random_gemm(rng, hidden, c, act="relu")
    fc2 = random_gemm(rng, c, hidden)
    fc2.requant = Requant(fc2.requant.multiplier, fc2.requant.shift, _PRE.zero_point, 0, 255,
                          make_lut("hsigmoid", _PRE, QParams(GATE_SCALE, 0)))
    m, s = quantize_multiplier(float(rng.uniform(0.5, 1.5)) * GATE_SCALE)
    return SESpec(pool, fc1, fc2, pool.in_zp, m, s, int(rng.integers(0, 256)))


def spec_for_layer(layer, bits: int = 8, rng: np.random.Generator | None = None) -> tuple[Spec, tuple[int, ...]]:
    """Random spec + per-image input shape for a ``search_spaces.Layer`` (the fused variant the executor uses)."""
    rng = rng or np.random.default_rng(0)
    hw, cin, cout = layer.in_hw, layer.in_channels, layer.out_channels
    if layer.op == "conv":
        return random_conv(rng, cout, cin, layer.kernel, layer.stride, layer.act), (hw, hw, cin)
    if layer.op == "pw":
        return random_gemm(rng, cout, cin, bits=bits, act=layer.act, residual=layer.residual), (hw, hw, cin)
    if layer.op == "dw":
        return random_depthwise(rng, cin, layer.kernel, layer.stride, layer.act), (hw, hw, cin)
    if layer.op == "se":
        return random_se(rng, cin, layer.hidden, hw * hw), (hw, hw, cin)
    if layer.op == "pool":
        return random_pool(rng, hw * hw), (hw, hw, cin)
    if layer.op == "linear":
        classifier = layer.act == "none"
        return random_gemm(rng, cout, cin, bits=bits, act=layer.act, out_int32=classifier), (cin,)
    raise ValueError(f"layer.op: unknown op {layer.op!r}")
