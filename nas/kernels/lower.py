"""The one lowering of a float ``search_spaces.build(arch)`` model onto the kernels: :func:`lower`.

Every quantized network goes through it: the one the latency profiler times, the one trial scoring and
``finalize`` evaluate and the one a checkpoint ships. It folds BN into the preceding convolution, quantizes weights
symmetrically per output channel (int8, or int4 on pointwise / linear layers, optionally with integer group
sub-scales), stores biases as int32 at ``in_scale * w_scale``, puts activations on per-tensor asymmetric uint8 grids
and fuses requantization (fixed-point multipliers, lookup tables for nonlinear activations) into each op.

Where the grids come from is a setting, the :class:`Calibration`:
- :func:`minmax_calibration`: min/max of every stored tensor of the float model on calibration images, weight
  scales max|w| / qmax of the folded weights (what the profiler uses; plain PTQ);
- ``nas.compress.fakequant.QuantSim.calibration``: the ranges of a fake-quant simulator's observers (min-max,
  percentile or MSE; moved by QAT) and its per-channel weight scales (min-max, MSE or learned by LSQ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
from search_spaces import Arch, encode


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv / linear layer of an `MBConvNet` by module name (the units of per-layer bit widths)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def gemm_layers(model: nn.Module) -> list[str]:
    """Layers the kernels can run with int4 weights: 1x1 convolutions and linear layers (not stem, depthwise, SE)."""
    out = []
    for n, m in weight_layers(model).items():
        if isinstance(m, nn.Linear) or (m.kernel_size == (1, 1) and m.groups == 1 and ".se." not in n):
            out.append(n)
    return out


@dataclass(frozen=True)
class Calibration:
    """The quantization grid :func:`lower` puts a model on.

    ``ranges``: float (lo, hi) of every tensor the executor stores as uint8, by the executor's names (``input``,
    ``stem``, ``stem.pre`` before a lookup-table activation, ``blocks.i.expand``, ``blocks.i.dw``,
    ``blocks.i.se.pool``, ``blocks.i.se.fc1``, ``blocks.i.se.fc2.pre``, ``blocks.i.se``, ``blocks.i.project``,
    ``blocks.i.out`` after a residual add, ``head``, ``pool``, ``hidden``, ``hidden.pre``). A residual block's
    ``blocks.i.project`` (before the add) is optional: the kernels add before rounding and never use it; when
    present it is kept in ``act_qparams`` for ONNX export, which quantizes both terms of the add.
    ``bits``: weight bits (8 or 4) by module name (``blocks.1.expand.conv``, ``classifier``); unnamed layers int8.
    ``weight_scales``: per-output-channel scales on the unfolded weight by module name; the lowering multiplies
    them by |BN factor| (max|w| commutes with folding, and learned scales carry over the same way). Unnamed layers
    get max|w| / qmax of the folded weight.
    ``group_size``: int4 layers get integer per-group sub-scales over this many inputs (0: per channel only).
    """

    ranges: Mapping[str, tuple[float, float]]
    bits: Mapping[str, int] = field(default_factory=dict)
    weight_scales: Mapping[str, np.ndarray] = field(default_factory=dict)
    group_size: int = 0

    def __post_init__(self) -> None:
        bad = {n: b for n, b in self.bits.items() if b not in (4, 8)}
        if bad:
            raise ValueError(f"bits: expected 8 or 4 per layer, got {bad}")
        if self.group_size < 0 or self.group_size % 4:
            raise ValueError(f"group_size: expected 0 or a positive multiple of 4, got {self.group_size}")


@dataclass
class LoweredNetwork:
    """:func:`lower`'s result: the network, and the float grid it was built on (for ONNX export and inspection)."""

    network: QuantizedNetwork
    act_qparams: dict[str, tuple[float, int]]  # tensor name -> (scale, zero point)
    weight_scales: dict[str, np.ndarray]  # executor layer name (`blocks.1.se.fc1`) -> float per-channel scale


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


def _bn_factor(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(per-channel factor g, bias) of an eval-mode BatchNorm as float64: bn(y) = g * y + bias."""
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    return g, bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * g


def _exec_name(layer: str) -> str:
    """Module name -> executor layer name (`blocks.1.expand.conv` -> `blocks.1.expand`, SE -> `.se.fc1/.fc2`)."""
    return layer.removesuffix(".conv").replace(".se.reduce", ".se.fc1").replace(".se.expand", ".se.fc2")


@torch.no_grad()
def lower(model: nn.Module, arch: Arch, calibration: Calibration) -> LoweredNetwork:
    """Lower a float ``search_spaces.build(arch)`` model (eval mode; BN statistics used) onto the kernels on the
    grid of `calibration`."""
    m, a, cal = model.eval(), arch, calibration
    modules = dict(m.named_modules())
    eligible = set(gemm_layers(m))
    bad = sorted(n for n, b in cal.bits.items() if n not in modules or (b == 4 and n not in eligible))
    if bad:
        raise ValueError(f"calibration.bits: layers {bad} unknown or cannot take int4 (only {sorted(eligible)})")
    acts: dict[str, tuple[float, int]] = {}
    wscales: dict[str, np.ndarray] = {}

    def q(name: str) -> QParams:
        if name not in cal.ranges:
            raise ValueError(f"calibration.ranges: no range for tensor {name!r}")
        p = QParams.from_range(*cal.ranges[name])
        acts[name] = (p.scale, p.zero_point)
        return p

    def pre(name: str, act: str) -> QParams | None:
        return q(name + ".pre") if act in LUT_ACTIVATIONS else None

    def weight(layer: str, folded: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int, np.ndarray | None]:
        """(integer weight, float bias, per-channel scale, bits, group sub-scales) of a conv (+ the BN of its
        ConvBNAct when `folded`) or linear layer."""
        mod = modules[layer]
        w = mod.weight.detach().double().numpy()
        bits = cal.bits.get(layer, 8)
        qmax = 127 if bits == 8 else 7
        g = None
        if folded:
            g, b = _bn_factor(modules[layer.removesuffix(".conv") + ".bn"])
            w = w * g.reshape(-1, *([1] * (w.ndim - 1)))
        else:
            b = mod.bias.detach().double().numpy() if mod.bias is not None else None
        w2 = w.reshape(len(w), -1)
        if bits == 4 and cal.group_size:
            qw, scale, subs = quantize_weights(w2, 4, cal.group_size)
            wscales[_exec_name(layer)] = scale
            return qw.reshape(w.shape), b, scale, bits, subs
        amax = np.abs(w2).max(axis=1)
        scale = np.where(amax > 0, amax, 1e-8) / qmax
        given = cal.weight_scales.get(layer)
        if given is not None:
            given = np.asarray(given, dtype=np.float64) * (np.abs(g) if g is not None else 1.0)
            scale = np.where(given > 0, given, scale)
        qw = np.clip(np.round(w2 / scale[:, None]), -qmax, qmax).astype(np.int8)
        wscales[_exec_name(layer)] = scale
        return qw.reshape(w.shape), b, scale, bits, None

    def gemm(layer: str, folded: bool, in_q: QParams, act: str, out_q: QParams, pre_q: QParams | None = None,
             extra: float = 1.0) -> GemmSpec:
        qw, b, scale, bits, subs = weight(layer, folded)
        return GemmSpec(np.ascontiguousarray(qw.reshape(len(qw), -1)), bias_int32(b, in_q, scale), in_q.zero_point,
                        requant_params(in_q, scale, act, out_q, pre_q, extra), bits, subs,
                        cal.group_size if subs is not None else 0)

    layers: list[QuantizedLayer] = []
    x_q = q("input")
    qw, b, scale, _, _ = weight("stem.conv", True)
    out_q = q("stem")
    layers.append(QuantizedLayer("stem", "conv", ConvSpec(
        np.ascontiguousarray(qw.transpose(0, 2, 3, 1)), m.stem.conv.stride[0], bias_int32(b, x_q, scale),
        x_q.zero_point, requant_params(x_q, scale, a.stem_act, out_q, pre("stem", a.stem_act)))))
    x_q = out_q
    hw = (a.resolution - 1) // a.stem_stride + 1  # spatial side of the current tensor
    for i, (blk, block) in enumerate(zip(m.blocks, a.blocks(), strict=True)):
        n = f"blocks.{i}"
        in_q = x_q
        if blk.expand is not None:
            out_q = q(n + ".expand")
            layers.append(QuantizedLayer(n + ".expand", "pw", gemm(n + ".expand.conv", True, x_q, block.act, out_q,
                                                                   pre(n + ".expand", block.act))))
            x_q = out_q
        qw, b, scale, _, _ = weight(n + ".dw.conv", True)
        out_q = q(n + ".dw")
        layers.append(QuantizedLayer(n + ".dw", "dw", DepthwiseSpec(
            np.ascontiguousarray(qw[:, 0]), block.stride, bias_int32(b, x_q, scale), x_q.zero_point,
            requant_params(x_q, scale, block.act, out_q, pre(n + ".dw", block.act)))))
        x_q = out_q
        hw = (hw - 1) // block.stride + 1
        if blk.se is not None:
            pool_q, fc1_q, gate_pre, se_q = q(n + ".se.pool"), q(n + ".se.fc1"), q(n + ".se.fc2.pre"), q(n + ".se")
            pm, ps = quantize_multiplier(x_q.scale / (hw * hw * pool_q.scale))
            pool = PoolSpec(hw * hw, x_q.zero_point, pm, ps, pool_q.zero_point)
            fc1 = gemm(n + ".se.reduce", False, pool_q, "relu", fc1_q)
            fc2 = gemm(n + ".se.expand", False, fc1_q, "hsigmoid", QParams(GATE_SCALE, 0), gate_pre)
            sm, ss = quantize_multiplier(x_q.scale * GATE_SCALE / se_q.scale)
            layers.append(QuantizedLayer(n + ".se", "se", SESpec(pool, fc1, fc2, x_q.zero_point, sm, ss,
                                                                  se_q.zero_point)))
            x_q = se_q
        if blk.use_residual:
            # the GEMM keeps RESIDUAL_BITS more fraction bits so that the fused add rounds once
            out_q = q(n + ".out")
            if n + ".project" in cal.ranges:  # the grid ONNX export rounds the add's term to (unused here)
                q(n + ".project")
            spec = gemm(n + ".project.conv", True, x_q, "none", out_q, extra=2.0**RESIDUAL_BITS)
            rm, rs = quantize_multiplier(in_q.scale / out_q.scale * 2.0**RESIDUAL_BITS)
            spec.residual = Residual(in_q.zero_point, rm, rs)
        else:
            out_q = q(n + ".project")
            spec = gemm(n + ".project.conv", True, x_q, "none", out_q)
        layers.append(QuantizedLayer(n + ".project", "pw", spec))
        x_q = out_q
    out_q = q("head")
    layers.append(QuantizedLayer("head", "pw", gemm("head.conv", True, x_q, a.head_act, out_q,
                                                    pre("head", a.head_act))))
    x_q = out_q
    pool_q = q("pool")
    pm, ps = quantize_multiplier(x_q.scale / (hw * hw * pool_q.scale))
    layers.append(QuantizedLayer("pool", "pool", PoolSpec(hw * hw, x_q.zero_point, pm, ps, pool_q.zero_point)))
    x_q = pool_q
    if m.hidden is not None:
        out_q = q("hidden")
        layers.append(QuantizedLayer("hidden", "linear", gemm("hidden", False, x_q, a.head_act, out_q,
                                                              pre("hidden", a.head_act))))
        x_q = out_q
    spec = gemm("classifier", False, x_q, "none", QParams(1.0, 0))
    spec.out_int32 = True
    layers.append(QuantizedLayer("classifier", "linear", spec))
    logit_scale = (x_q.scale * wscales["classifier"]).astype(np.float32)
    bits = min((cal.bits.get(n, 8) for n in weight_layers(m)), default=8)
    net = QuantizedNetwork(input_q=q("input"), layers=layers, logit_scale=logit_scale, bits=bits, arch=encode(a))
    return LoweredNetwork(net, acts, wscales)


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

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {n: (self.lo[n], self.hi[n]) for n in self.lo}


def _conv_bn_act(m: nn.Module, x: torch.Tensor, r: _Ranges, name: str) -> torch.Tensor:
    pre = m.bn(m.conv(x))
    r.see(name + ".pre", pre)
    return r.see(name, m.act(pre))


@torch.no_grad()
def minmax_calibration(model: nn.Module, images: torch.Tensor | np.ndarray, bits: int = 8,
                       group_size: int = 0) -> Calibration:
    """Min/max ranges of every tensor :func:`lower` quantizes, observed running the float model on `images`
    (float NCHW); `bits` 4 puts every pointwise and linear layer on int4 weights (W4A8), with `group_size`
    integer sub-scales when > 0. Weight scales: max|w| / qmax of the folded weights."""
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 8 or 4, got {bits}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise TypeError("images: expected a float NCHW tensor or array")
    m = model.eval()
    r = _Ranges()
    x = r.see("input", images.float())
    x = _conv_bn_act(m.stem, x, r, "stem")
    for i, blk in enumerate(m.blocks):
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
    x = _conv_bn_act(m.head, x, r, "head")
    x = r.see("pool", x.mean((2, 3)))
    if m.hidden is not None:
        x = r.see("hidden.pre", m.hidden(x))
        r.see("hidden", m.hidden_act(x))
    return Calibration(r.ranges(), {n: bits for n in gemm_layers(m)}, {}, group_size if bits == 4 else 0)
