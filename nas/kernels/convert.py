"""Post-training quantization of a ``search_spaces.build(arch)`` float model into a :class:`QuantizedNetwork`.

BN is folded into the preceding convolution; activation ranges are per-tensor min/max over the calibration inputs
(asymmetric uint8); weights are symmetric per output channel (int8, or int4 for pointwise/linear with
``bits=4``); biases are int32 at ``in_scale * w_scale``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nas.kernels.executor import QuantizedLayer, QuantizedNetwork
from nas.kernels.ops import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, Requant, Residual, SESpec
from nas.kernels.quant import (
    GATE_SCALE,
    LUT_ACTIVATIONS,
    RESIDUAL_BITS,
    QParams,
    act_bounds,
    make_lut,
    quantize_multiplier,
    quantize_multipliers,
    quantize_weights,
)


class _Ranges:
    """Running per-tensor min/max by name."""

    def __init__(self) -> None:
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}

    def see(self, name: str, t: torch.Tensor) -> torch.Tensor:
        lo, hi = float(t.min()), float(t.max())
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))
        return t

    def q(self, name: str) -> QParams:
        return QParams.from_range(self.lo[name], self.hi[name])


def _conv_bn_act(m, x: torch.Tensor, r: _Ranges, name: str) -> torch.Tensor:
    pre = m.bn(m.conv(x))
    r.see(name + ".pre", pre)
    return r.see(name, m.act(pre))


@torch.no_grad()
def _calibrate(model, calib: torch.Tensor) -> _Ranges:
    """Run the float model step by step, recording the range of every tensor the executor quantizes."""
    r = _Ranges()
    x = r.see("input", calib)
    x = _conv_bn_act(model.stem, x, r, "stem")
    for i, blk in enumerate(model.blocks):
        n = f"blocks.{i}"
        inp = x
        y = _conv_bn_act(blk.expand, x, r, n + ".expand") if blk.expand is not None else x
        y = _conv_bn_act(blk.dw, y, r, n + ".dw")
        if blk.se is not None:
            s = r.see(n + ".se.pool", y.mean((2, 3), keepdim=True))
            s = r.see(n + ".se.fc1", torch.relu(blk.se.reduce(s)))
            s = r.see(n + ".se.fc2.pre", blk.se.expand(s))
            y = r.see(n + ".se", y * nn.functional.hardsigmoid(s))
        y = r.see(n + ".project", blk.project.bn(blk.project.conv(y)))
        x = r.see(n + ".out", inp + y) if blk.use_residual else y
    x = _conv_bn_act(model.head, x, r, "head")
    x = r.see("pool", x.mean((2, 3)))
    if model.hidden is not None:
        x = r.see("hidden.pre", model.hidden(x))
        r.see("hidden", model.hidden_act(x))
    return r


def _fold(m) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the following BatchNorm folded in (float64)."""
    w = m.conv.weight.detach().double().numpy()
    bn = m.bn
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    b = bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * g
    return w * g.reshape(-1, *([1] * (w.ndim - 1))), b


def requant_params(in_q: QParams, w_scale: np.ndarray, act: str, out_q: QParams, pre_q: QParams | None,
                   extra: float = 1.0) -> Requant:
    """Per-channel requantization (multiplier/shift pairs, applied as float32 scales) onto `out_q` (or onto
    `pre_q` + a LUT for nonlinear activations)."""
    if act in LUT_ACTIVATIONS:
        m, s = quantize_multipliers(in_q.scale * w_scale / pre_q.scale)
        return Requant(m, s, pre_q.zero_point, 0, 255, make_lut(act, pre_q, out_q))
    m, s = quantize_multipliers(in_q.scale * w_scale / out_q.scale * extra)
    lo, hi = act_bounds(act, out_q)
    return Requant(m, s, out_q.zero_point, lo, hi)


def bias_int32(b: np.ndarray | None, in_q: QParams, w_scale: np.ndarray) -> np.ndarray:
    """A float bias as int32 at the accumulator scale `in_q.scale * w_scale`."""
    if b is None:
        return np.zeros(len(w_scale), dtype=np.int32)
    return np.clip(np.round(b / (in_q.scale * w_scale)), -(2**28), 2**28).astype(np.int32)


def _gemm(w: np.ndarray, b: np.ndarray | None, in_q: QParams, act: str, out_q: QParams,
          pre_q: QParams | None = None, bits: int = 8, group_size: int = 0) -> GemmSpec:
    w2 = w.reshape(w.shape[0], -1)
    q, scale, subs = quantize_weights(w2, bits, group_size if bits == 4 else 0)
    # with group sub-scales the accumulator already carries the integer factor sub[c, g]; scale is per channel
    return GemmSpec(q, bias_int32(b, in_q, scale), in_q.zero_point, requant_params(in_q, scale, act, out_q, pre_q),
                    bits, subs, group_size if subs is not None else 0)


def quantize(model, arch, calib, bits: int = 8, group_size: int = 0) -> QuantizedNetwork:
    """Quantize a float ``search_spaces.build(arch)`` model with min-max calibration on ``calib``.

    ``calib``: float NCHW calibration inputs (tensor or array). ``bits``: 8, or 4 for W4A8 pointwise and linear
    weights (per-channel scales, or integer per-group sub-scales with ``group_size``). Stem, depthwise and SE
    weights stay int8.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 8 or 4, got {bits}")
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if not isinstance(calib, torch.Tensor) or calib.ndim != 4 or not calib.is_floating_point():
        raise TypeError("calib: expected a float NCHW tensor or array")
    model = model.eval()
    r = _calibrate(model, calib.float())
    layers: list[QuantizedLayer] = []
    pw_bits = dict(bits=bits, group_size=group_size)

    def pre(name: str, act: str) -> QParams | None:
        return r.q(name + ".pre") if act in LUT_ACTIVATIONS else None

    # stem
    x_q = r.q("input")
    w, b = _fold(model.stem)
    q, scale, _ = quantize_weights(w)
    out_q = r.q("stem")
    layers.append(QuantizedLayer("stem", "conv", ConvSpec(
        np.ascontiguousarray(q.transpose(0, 2, 3, 1)), model.stem.conv.stride[0], bias_int32(b, x_q, scale),
        x_q.zero_point, requant_params(x_q, scale, arch.stem_act, out_q, pre("stem", arch.stem_act)))))
    x_q = out_q
    hw = (arch.resolution - 1) // arch.stem_stride + 1  # spatial side of the current tensor
    for i, (blk, block) in enumerate(zip(model.blocks, arch.blocks(), strict=True)):
        n = f"blocks.{i}"
        in_q = x_q
        if blk.expand is not None:
            w, b = _fold(blk.expand)
            out_q = r.q(n + ".expand")
            layers.append(QuantizedLayer(n + ".expand", "pw", _gemm(w, b, x_q, block.act, out_q,
                                                                    pre(n + ".expand", block.act), **pw_bits)))
            x_q = out_q
        w, b = _fold(blk.dw)
        q, scale, _ = quantize_weights(w)
        out_q = r.q(n + ".dw")
        layers.append(QuantizedLayer(n + ".dw", "dw", DepthwiseSpec(
            np.ascontiguousarray(q[:, 0]), block.stride, bias_int32(b, x_q, scale), x_q.zero_point,
            requant_params(x_q, scale, block.act, out_q, pre(n + ".dw", block.act)))))
        x_q = out_q
        hw = (hw - 1) // block.stride + 1
        if blk.se is not None:
            pool_q, fc1_q, gate_pre = r.q(n + ".se.pool"), r.q(n + ".se.fc1"), r.q(n + ".se.fc2.pre")
            se_q = r.q(n + ".se")
            pm, ps = quantize_multiplier(x_q.scale / (hw * hw * pool_q.scale))
            pool = PoolSpec(hw * hw, x_q.zero_point, pm, ps, pool_q.zero_point)
            fc1 = _gemm(blk.se.reduce.weight.detach().double().numpy(), blk.se.reduce.bias.detach().double().numpy(),
                        pool_q, "relu", fc1_q)
            fc2 = _gemm(blk.se.expand.weight.detach().double().numpy(), blk.se.expand.bias.detach().double().numpy(),
                        fc1_q, "hsigmoid", QParams(GATE_SCALE, 0), gate_pre)
            sm, ss = quantize_multiplier(x_q.scale * GATE_SCALE / se_q.scale)
            layers.append(QuantizedLayer(n + ".se", "se", SESpec(pool, fc1, fc2, x_q.zero_point, sm, ss,
                                                                  se_q.zero_point)))
            x_q = se_q
        w, b = _fold(blk.project)
        if blk.use_residual:
            out_q = r.q(n + ".out")
            spec = _gemm(w, b, x_q, "none", out_q, **pw_bits)
            spec.requant = requant_params(x_q, _scale_of(w, bits, group_size), "none", out_q, None, 2.0**RESIDUAL_BITS)
            rm, rs = quantize_multiplier(in_q.scale / out_q.scale * 2.0**RESIDUAL_BITS)
            spec.residual = Residual(in_q.zero_point, rm, rs)
        else:
            out_q = r.q(n + ".project")
            spec = _gemm(w, b, x_q, "none", out_q, **pw_bits)
        layers.append(QuantizedLayer(n + ".project", "pw", spec))
        x_q = out_q
    w, b = _fold(model.head)
    out_q = r.q("head")
    layers.append(QuantizedLayer("head", "pw", _gemm(w, b, x_q, arch.head_act, out_q, pre("head", arch.head_act),
                                                     **pw_bits)))
    x_q = out_q
    pool_q = r.q("pool")
    pm, ps = quantize_multiplier(x_q.scale / (hw * hw * pool_q.scale))
    layers.append(QuantizedLayer("pool", "pool", PoolSpec(hw * hw, x_q.zero_point, pm, ps, pool_q.zero_point)))
    x_q = pool_q
    if model.hidden is not None:
        out_q = r.q("hidden")
        layers.append(QuantizedLayer("hidden", "linear", _gemm(
            model.hidden.weight.detach().double().numpy(), model.hidden.bias.detach().double().numpy(), x_q,
            arch.head_act, out_q, pre("hidden", arch.head_act), **pw_bits)))
        x_q = out_q
    w = model.classifier.weight.detach().double().numpy()
    spec = _gemm(w, model.classifier.bias.detach().double().numpy(), x_q, "none", QParams(1.0, 0), **pw_bits)
    spec.out_int32 = True
    logit_scale = (x_q.scale * _scale_of(w, bits, group_size)).astype(np.float32)
    layers.append(QuantizedLayer("classifier", "linear", spec))
    from search_spaces import encode

    return QuantizedNetwork(input_q=r.q("input"), layers=layers, logit_scale=logit_scale, bits=bits,
                            arch=encode(arch))


def _scale_of(w: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    return quantize_weights(w.reshape(w.shape[0], -1), bits, group_size if bits == 4 else 0)[1]
