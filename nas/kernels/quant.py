"""Quantization arithmetic shared by the kernels, the NumPy reference and the converter.

Scheme (see README.md in this folder):
- activations: per-tensor asymmetric uint8, ``real = scale * (q - zero_point)``;
- weights: symmetric int8 in [-127, 127] (or int4 in [-7, 7]) per output channel;
- bias: int32 at scale ``in_scale * w_scale[c]``;
- requantization: the real multiplier is stored as a TFLite-style pair (``M`` in [2^30, 2^31), shift ``s``,
  ``real = M * 2^(s - 31)``); the kernels apply it in IEEE float32: ``rne(float32(acc) * float32(M * 2^(s - 31)))``
  (round half to even, as ONNX Runtime / MLAS requantization);
- nonlinear activations (hswish, swish, hard-sigmoid) through a 256-entry uint8 -> uint8 lookup table applied
  after requantizing to a pre-activation scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESIDUAL_BITS = 8  # extra fraction bits kept when a residual is added to a GEMM output
GATE_SCALE = 1.0 / 255.0  # SE gate (hard-sigmoid output) is uint8 with this scale and zero point 0

ACTIVATIONS = ("none", "relu", "relu6", "hswish", "swish", "hsigmoid")
LUT_ACTIVATIONS = ("hswish", "swish", "hsigmoid")


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine uint8 quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    @staticmethod
    def from_range(lo: float, hi: float) -> QParams:
        """Asymmetric uint8 parameters covering [min(lo, 0), max(hi, 0)] (zero exactly representable)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if hi - lo < 1e-8:
            hi = lo + 1e-8
        scale = (hi - lo) / 255.0
        zp = int(np.clip(round(-lo / scale), 0, 255))
        return QParams(scale=scale, zero_point=zp)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: real = M * 2^(shift - 31), M in [2^30, 2^31); shift clamped to [-31, 30]."""
    if real < 0:
        raise ValueError(f"multiplier must be >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    frac, exp = math.frexp(real)
    m = int(round(frac * (1 << 31)))
    if m == 1 << 31:
        m //= 2
        exp += 1
    if exp < -31:  # too small to represent: the product rounds to 0 anyway
        return 0, 0
    if exp > 30:
        raise ValueError(f"multiplier {real} too large")
    return m, exp


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`; returns int32 arrays (multiplier, shift)."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).ravel()]
    m = np.array([p[0] for p in pairs], dtype=np.int32)
    s = np.array([p[1] for p in pairs], dtype=np.int32)
    return m, s


def act_fn(act: str) -> Callable[[np.ndarray], np.ndarray]:
    """Float definition of an activation (float64)."""
    if act == "none":
        return lambda v: v
    if act == "relu":
        return lambda v: np.maximum(v, 0.0)
    if act == "relu6":
        return lambda v: np.clip(v, 0.0, 6.0)
    if act == "hswish":
        return lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0
    if act == "swish":
        return lambda v: v / (1.0 + np.exp(-v))
    if act == "hsigmoid":
        return lambda v: np.clip(v + 3.0, 0.0, 6.0) / 6.0
    raise ValueError(f"act: expected one of {ACTIVATIONS}, got {act!r}")


def act_bounds(act: str, q: QParams) -> tuple[int, int]:
    """Integer clamp [lo, hi] implementing relu / relu6 / none on the output uint8 grid."""
    if act == "none":
        return 0, 255
    if act == "relu":
        return q.zero_point, 255
    if act == "relu6":
        return q.zero_point, int(min(255, q.zero_point + round(6.0 / q.scale)))
    raise ValueError(f"act {act!r} has no clamp form (use a lookup table)")


def make_lut(act: str, pre: QParams, out: QParams) -> np.ndarray:
    """256-entry table mapping a pre-activation uint8 (grid ``pre``) to the activated uint8 (grid ``out``)."""
    real = pre.scale * (np.arange(256, dtype=np.float64) - pre.zero_point)
    y = act_fn(act)(real)
    return np.clip(np.round(y / out.scale) + out.zero_point, 0, 255).astype(np.uint8)


def quantize_input(x: np.ndarray, q: QParams) -> np.ndarray:
    """Float array -> uint8 on grid ``q`` (round half to even, then clamp)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float32) / np.float32(q.scale)) + q.zero_point, 0, 255).astype(
        np.uint8
    )


def dequantize(x: np.ndarray, q: QParams) -> np.ndarray:
    """uint8 on grid ``q`` -> float32."""
    return (np.float32(q.scale) * (x.astype(np.float32) - np.float32(q.zero_point))).astype(np.float32)


def quantize_weights(
    w: np.ndarray, bits: int = 8, group_size: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Symmetric per-output-channel weight quantization (axis 0 is the output channel).

    Returns (q int8, scale float64 [Cout], sub_scales int32 [Cout, G] or None). With ``group_size > 0`` (int4 only)
    each group of ``group_size`` input values gets an integer sub-scale in [1, 255]:
    ``w ~= scale[c] * sub[c, g] * q``.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits}")
    qmax = 127 if bits == 8 else 7
    w2 = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    amax = np.abs(w2).max(axis=1)
    amax = np.where(amax > 0, amax, 1e-8)
    if group_size <= 0:
        scale = amax / qmax
        q = np.clip(np.round(w2 / scale[:, None]), -qmax, qmax).astype(np.int8)
        return q.reshape(w.shape), scale, None
    if bits != 4 or group_size % 4:
        raise ValueError("group scales need bits=4 and a group_size that is a multiple of 4")
    k = w2.shape[1]
    ng = (k + group_size - 1) // group_size
    scale = amax / (qmax * 255.0)
    sub = np.zeros((w2.shape[0], ng), dtype=np.int32)
    q = np.zeros(w2.shape, dtype=np.int8)
    for g in range(ng):
        sl = slice(g * group_size, min(k, (g + 1) * group_size))
        gmax = np.abs(w2[:, sl]).max(axis=1)
        sub[:, g] = np.clip(np.ceil(gmax / (qmax * scale) - 1e-9), 1, 255)
        step = scale[:, None] * sub[:, g : g + 1]
        q[:, sl] = np.clip(np.round(w2[:, sl] / step), -qmax, qmax)
    return q.reshape(w.shape), scale, sub
