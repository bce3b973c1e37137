"""Pure-NumPy reference of the kernels' arithmetic (bit-exact target for every ISA path).

Integer accumulation (int32, exact); requantization in IEEE float32: ``v = float32(acc) * float32(scale)``,
``y = rne(clamp(v, lo - zp, hi - zp)) + zp`` with round half to even (see README.md).
"""

from __future__ import annotations

import numpy as np

from nas.kernels.ops import (
    ConvSpec,
    DepthwiseSpec,
    FusedBlockSpec,
    GemmSpec,
    PoolSpec,
    Requant,
    SESpec,
    Spec,
    out_shape,
)
from nas.kernels.quant import RESIDUAL_BITS


def scale32(m, shift) -> np.ndarray:
    """Float32 scale of a fixed-point multiplier: ``float32(M * 2^(shift - 31))`` (exact in float64, one rounding
    to nearest even)."""
    m = np.asarray(m, dtype=np.float64)
    return np.ldexp(m, np.asarray(shift, dtype=np.int64) - 31).astype(np.float32)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


def mulf(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``float32(x) * scale`` in IEEE float32 (x wrapped to int32 first, as the kernels' int32 accumulators)."""
    return _wrap32(x).astype(np.float32) * np.asarray(scale, dtype=np.float32)


def round_clamp(v: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """``rne(min(max(v, lo - zp), hi - zp)) + zp`` (round half to even), int64."""
    v = np.minimum(np.maximum(v, np.float32(lo - zp)), np.float32(hi - zp))
    return np.rint(v).astype(np.int64) + zp


def _requant(acc: np.ndarray, rq: Requant, res: np.ndarray | None = None, residual=None) -> np.ndarray:
    """acc already includes the bias; channels on the last axis."""
    shift = rq.shift.astype(np.int64)
    if residual is None:
        v = mulf(acc, scale32(rq.multiplier, shift))
    else:  # both multipliers carry 2^RESIDUAL_BITS; the scales divide it out exactly
        v = mulf(acc, scale32(rq.multiplier, shift - RESIDUAL_BITS))
        v = v + mulf(res.astype(np.int64) - residual.zp, scale32(residual.multiplier, residual.shift - RESIDUAL_BITS))
    v = round_clamp(v, rq.out_zp, rq.act_min, rq.act_max)
    if rq.lut is not None:
        v = np.asarray(rq.lut, dtype=np.uint8)[v]
    return v.astype(np.uint8)


def gemm(x: np.ndarray, spec: GemmSpec, residual: np.ndarray | None = None) -> np.ndarray:
    """x uint8 [..., K] -> uint8 [..., N] (or int32 when ``spec.out_int32``)."""
    k = spec.weight.shape[1]
    x2 = x.reshape(-1, k).astype(np.int64) - spec.in_zp
    w = spec.weight.astype(np.int64)
    if spec.sub_scales is None:
        acc = x2 @ w.T
    else:
        acc = np.zeros((x2.shape[0], w.shape[0]), dtype=np.int64)
        g = spec.group_size
        for gi in range(spec.sub_scales.shape[1]):
            sl = slice(gi * g, min(k, (gi + 1) * g))
            acc += (x2[:, sl] @ w[:, sl].T) * spec.sub_scales[:, gi].astype(np.int64)
    acc = acc + spec.bias.astype(np.int64)
    shape = (*x.shape[:-1], w.shape[0])
    if spec.out_int32:
        return acc.astype(np.int32).reshape(shape)
    res = None if residual is None else residual.reshape(-1, w.shape[0])
    return _requant(acc, spec.requant, res, spec.residual).reshape(shape)


def _windows(x: np.ndarray, k: int, stride: int, pad_value: int) -> np.ndarray:
    """NHWC -> [N, Ho, Wo, k, k, C] patches with padding k//2 filled with ``pad_value``."""
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=pad_value)
    n, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    out = np.empty((n, ho, wo, k, k, c), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            ys = slice(ky, ky + stride * (ho - 1) + 1, stride)
            xs = slice(kx, kx + stride * (wo - 1) + 1, stride)
            out[:, :, :, ky, kx, :] = xp[:, ys, xs, :]
    return out


def conv(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Full kxk convolution, NHWC uint8; padded positions hold the input zero point."""
    cout, k, _, cin = spec.weight.shape
    win = _windows(x, k, spec.stride, spec.in_zp)
    cols = win.reshape(*win.shape[:3], k * k * cin)
    g = GemmSpec(spec.weight.reshape(cout, -1), spec.bias, spec.in_zp, spec.requant)
    return gemm(cols, g)


def depthwise(x: np.ndarray, spec: DepthwiseSpec) -> np.ndarray:
    """Depthwise kxk convolution, NHWC uint8; padded positions contribute zero."""
    c, k, _ = spec.weight.shape
    win = _windows(x, k, spec.stride, spec.in_zp).astype(np.int64) - spec.in_zp
    w = np.transpose(spec.weight, (1, 2, 0)).astype(np.int64)  # [k, k, C]
    acc = np.einsum("nhwijc,ijc->nhwc", win, w) + spec.bias.astype(np.int64)
    return _requant(acc, spec.requant)


def pool(x: np.ndarray, spec: PoolSpec) -> np.ndarray:
    """Global average pool, NHWC uint8 -> [N, C] uint8."""
    n, h, w, c = x.shape
    s = x.reshape(n, h * w, c).astype(np.int64).sum(axis=1) - spec.hw * spec.in_zp
    return round_clamp(mulf(s, scale32(spec.multiplier, spec.shift)), spec.out_zp, 0, 255).astype(np.uint8)


def squeeze_excite(x: np.ndarray, spec: SESpec) -> np.ndarray:
    """Squeeze-and-excitation on NHWC uint8."""
    gate = gemm(gemm(pool(x, spec.pool), spec.fc1), spec.fc2).astype(np.int64)  # [N, C]
    prod = (x.astype(np.int64) - spec.in_zp) * gate[:, None, None, :]
    return round_clamp(mulf(prod, scale32(spec.multiplier, spec.shift)), spec.out_zp, 0, 255).astype(np.uint8)


def run(spec: Spec, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """Reference execution of any op spec (mirrors ``compile_op(spec).run``)."""
    if isinstance(spec, GemmSpec):
        return gemm(x, spec, residual)
    if isinstance(spec, ConvSpec):
        return conv(x, spec)
    if isinstance(spec, DepthwiseSpec):
        return depthwise(x, spec)
    if isinstance(spec, PoolSpec):
        return pool(x, spec)
    if isinstance(spec, SESpec):
        return squeeze_excite(x, spec)
    if isinstance(spec, FusedBlockSpec):  # its parts layer by layer
        t = x
        for part in (spec.stem, spec.expand, spec.dw):
            t = t if part is None else run(part, t)
        if spec.project is None:
            return t
        return gemm(t, spec.project, x if spec.project.residual is not None else None)
    raise TypeError(f"spec: unknown op spec {type(spec).__name__}")


__all__ = ["conv", "depthwise", "gemm", "mulf", "out_shape", "pool", "round_clamp", "run", "scale32", "squeeze_excite"]
