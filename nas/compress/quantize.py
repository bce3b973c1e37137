"""Quantization onto the kernel library: PTQ with calibration, QAT (STE / LSQ, distillation), one-call API.

>>> qmodel, report = quantize_(model, QuantConfig(weight_bits=8, calibration="percentile"), calib=x_calib)
>>> qmodel, report = quantize_(model, QuantConfig(weight_bits=4, qat_steps=300, lsq=True), calib=x, train=(x, y))
>>> logits = qmodel(x_test)          # runs `qmodel.network`, the kernel library's QuantizedNetwork

The network is the kernel library's `QuantizedNetwork` (per-channel symmetric int8 / int4 weights, per-tensor
asymmetric uint8 activations, fixed-point requantization, batch norm folded), built by `convert` from a
calibrated (or QAT-trained) `QuantSim` so that calibration choices and learned scales reach the executor.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from nas.compress._train import finetune, loss_and_accuracy
from nas.compress.fakequant import CALIBRATORS, QuantSim, gemm_layers, qmax_of
from nas.export.model import QuantizedModel
from nas.kernels import QuantizedLayer, QuantizedNetwork
from nas.kernels.convert import bias_int32, requant_params
from nas.kernels.ops import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, Residual, SESpec
from nas.kernels.quant import (
    GATE_SCALE,
    LUT_ACTIVATIONS,
    RESIDUAL_BITS,
    QParams,
    quantize_multiplier,
    quantize_weights,
)


@dataclass(frozen=True)
class QuantConfig:
    """What `quantize_` does. `weight_bits` 4 means W4A8 on the pointwise and linear layers (the kernels' int4
    path; stem, depthwise and SE stay int8); `layer_bits` overrides per layer (mixed precision)."""

    weight_bits: int = 8
    group_size: int = 0  # int4 per-group sub-scales (multiple of 4); 0 = per channel
    calibration: str = "minmax"  # activation ranges: minmax | percentile | mse
    percentile: float = 99.99
    weight_calibration: str = "minmax"  # per-channel weight clip: minmax | mse
    layer_bits: dict[str, int] | None = None
    qat_steps: int = 0  # > 0: quantization-aware training for this many steps (needs train data)
    lsq: bool = False  # learn the per-channel weight scales during QAT
    qat_lr: float = 0.005
    distill: bool = True  # QAT distils from the float model
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        qmax_of(self.weight_bits)
        if self.calibration not in CALIBRATORS:
            raise ValueError(f"calibration: expected one of {CALIBRATORS}, got {self.calibration!r}")
        if self.group_size and (self.weight_bits != 4 or self.group_size % 4):
            raise ValueError("group_size: needs weight_bits=4 and a multiple of 4")

    def bits_for(self, model: nn.Module) -> dict[str, int]:
        bits = {n: self.weight_bits for n in gemm_layers(model)}
        bits.update(self.layer_bits or {})
        return bits


@dataclass
class QuantReport:
    config: dict
    bits: dict[str, int]
    weight_bytes: int
    ranges: dict[str, tuple[float, float]]
    fp32_acc: float | None = None
    quant_acc: float | None = None  # on the kernel executor
    sim_acc: float | None = None  # fake-quantized PyTorch model
    agreement: float | None = None  # top-1 agreement executor vs fake-quant model
    qat: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _fold(m: nn.Module, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Folded float64 weight and bias of a ConvBNAct with raw weight `w`, and the per-channel BN factor."""
    bn = m.bn
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    b = bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * g
    w = w.detach().double().numpy()
    return w * g.reshape(-1, *([1] * (w.ndim - 1))), b, g


def _wq(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    q = qmax_of(bits)
    w2 = w.reshape(w.shape[0], -1)
    return np.clip(np.round(w2 / scale[:, None]), -q, q).astype(np.int8).reshape(w.shape)


def convert(sim: QuantSim, group_size: int = 0) -> QuantizedModel:
    """A `QuantizedModel` on the kernel executor from a calibrated `QuantSim` (its ranges, per-layer bits, scales).

    Weight scales are the simulator's per-channel scales times |BN factor| (exact for the max-|w| scale, which
    commutes with folding; learned LSQ scales carry over the same way). int4 layers with `group_size` use the
    kernels' integer group sub-scales.
    """
    m, a = sim.model, sim.arch
    ranges = sim.ranges()
    weights = sim.fp_weights_scales()
    acts: dict[str, tuple[float, int]] = {}
    wscales: dict[str, np.ndarray] = {}

    def q(name: str) -> QParams:
        lo, hi = ranges[name]
        p = QParams.from_range(lo, hi)
        acts[name] = (p.scale, p.zero_point)
        return p

    def pre(name: str, act: str) -> QParams | None:
        return q(name + ".pre") if act in LUT_ACTIVATIONS else None

    def weight(layer: str, module: nn.Module | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int,
                                                                 np.ndarray | None]:
        """(int8 weight, float bias, per-channel scale, bits, group sub-scales) of a conv(+BN) or linear."""
        w, s, bits = weights[layer]
        if module is not None and hasattr(module, "bn"):
            wf, b, g = _fold(module, w)
            scale = s.double().numpy() * np.abs(g)
        else:
            lin = dict(m.named_modules())[layer]
            wf, b = w.double().numpy(), lin.bias.detach().double().numpy() if lin.bias is not None else None
            scale = s.double().numpy()
        if bits == 4 and group_size:
            qw, scale, subs = quantize_weights(wf.reshape(wf.shape[0], -1), 4, group_size)
            return qw.reshape(wf.shape), b, scale, bits, subs
        scale = np.where(scale > 0, scale, np.maximum(np.abs(wf.reshape(len(wf), -1)).max(1), 1e-8) / qmax_of(bits))
        return _wq(wf, scale, bits), b, scale, bits, None

    def gemm(layer: str, module: nn.Module | None, in_q: QParams, act: str, out_q: QParams,
             pre_q: QParams | None = None, extra: float = 1.0) -> GemmSpec:
        qw, b, scale, bits, subs = weight(layer, module)
        wscales[_exec_name(layer)] = scale
        return GemmSpec(np.ascontiguousarray(qw.reshape(qw.shape[0], -1)), bias_int32(b, in_q, scale), in_q.zero_point,
                        requant_params(in_q, scale, act, out_q, pre_q, extra), bits, subs,
                        group_size if subs is not None else 0)

    layers: list[QuantizedLayer] = []
    x_q = q("input")
    qw, b, scale, _, _ = weight("stem.conv", m.stem)
    wscales["stem"] = scale
    out_q = q("stem")
    layers.append(QuantizedLayer("stem", "conv", ConvSpec(
        np.ascontiguousarray(qw.transpose(0, 2, 3, 1)), m.stem.conv.stride[0], bias_int32(b, x_q, scale),
        x_q.zero_point, requant_params(x_q, scale, a.stem_act, out_q, pre("stem", a.stem_act)))))
    x_q = out_q
    hw = (a.resolution - 1) // a.stem_stride + 1
    for i, (blk, block) in enumerate(zip(m.blocks, a.blocks(), strict=True)):
        n = f"blocks.{i}"
        in_q = x_q
        if blk.expand is not None:
            out_q = q(n + ".expand")
            layers.append(QuantizedLayer(n + ".expand", "pw", gemm(n + ".expand.conv", blk.expand, x_q, block.act,
                                                                   out_q, pre(n + ".expand", block.act))))
            x_q = out_q
        qw, b, scale, _, _ = weight(n + ".dw.conv", blk.dw)
        wscales[n + ".dw"] = scale
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
            fc1 = gemm(n + ".se.reduce", None, pool_q, "relu", fc1_q)
            fc2 = gemm(n + ".se.expand", None, fc1_q, "hsigmoid", QParams(GATE_SCALE, 0), gate_pre)
            sm, ss_ = quantize_multiplier(x_q.scale * GATE_SCALE / se_q.scale)
            layers.append(QuantizedLayer(n + ".se", "se", SESpec(pool, fc1, fc2, x_q.zero_point, sm, ss_,
                                                                  se_q.zero_point)))
            x_q = se_q
        if blk.use_residual:
            out_q = q(n + ".out")
            spec = gemm(n + ".project.conv", blk.project, x_q, "none", out_q, extra=2.0**RESIDUAL_BITS)
            rm, rs = quantize_multiplier(in_q.scale / out_q.scale * 2.0**RESIDUAL_BITS)
            spec.residual = Residual(in_q.zero_point, rm, rs)
        else:
            out_q = q(n + ".project")
            spec = gemm(n + ".project.conv", blk.project, x_q, "none", out_q)
        layers.append(QuantizedLayer(n + ".project", "pw", spec))
        x_q = out_q
    out_q = q("head")
    layers.append(QuantizedLayer("head", "pw", gemm("head.conv", m.head, x_q, a.head_act, out_q,
                                                    pre("head", a.head_act))))
    x_q = out_q
    pool_q = q("pool")
    pm, ps = quantize_multiplier(x_q.scale / (hw * hw * pool_q.scale))
    layers.append(QuantizedLayer("pool", "pool", PoolSpec(hw * hw, x_q.zero_point, pm, ps, pool_q.zero_point)))
    x_q = pool_q
    if m.hidden is not None:
        out_q = q("hidden")
        layers.append(QuantizedLayer("hidden", "linear", gemm("hidden", None, x_q, a.head_act, out_q,
                                                              pre("hidden", a.head_act))))
        x_q = out_q
    qw, b, scale, bits, subs = weight("classifier", None)
    wscales["classifier"] = scale
    spec = GemmSpec(np.ascontiguousarray(qw), bias_int32(b, x_q, scale), x_q.zero_point,
                    requant_params(x_q, scale, "none", QParams(1.0, 0), None), bits, subs,
                    group_size if subs is not None else 0)
    spec.out_int32 = True
    layers.append(QuantizedLayer("classifier", "linear", spec))
    from search_spaces import encode

    net = QuantizedNetwork(input_q=q("input"), layers=layers, logit_scale=(x_q.scale * scale).astype(np.float32),
                           bits=min(sim.bits.values()), arch=encode(a))
    return QuantizedModel(net, a, acts, wscales, {"bits": dict(sim.bits), "group_size": group_size})


def _exec_name(layer: str) -> str:
    """Module name -> executor layer name (`blocks.1.expand.conv` -> `blocks.1.expand`, SE -> `.se.fc1/.fc2`)."""
    return layer.removesuffix(".conv").replace(".se.reduce", ".se.fc1").replace(".se.expand", ".se.fc2")


def _batches(x: torch.Tensor, size: int = 256) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def executor_accuracy(qmodel: QuantizedModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of a `QuantizedModel` on the kernels, and its predicted labels."""
    preds = qmodel.predict(x)
    return float((preds == y.numpy()).mean()), preds


def quantize_(model: nn.Module | QuantSim, config: QuantConfig = QuantConfig(), calib: torch.Tensor | None = None,
              train: tuple[torch.Tensor, torch.Tensor] | None = None,
              evaluate: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[QuantizedModel, QuantReport]:
    """Quantize a float `MBConvNet` (or an already calibrated / QAT-trained `QuantSim`) onto the kernels.

    `calib`: float NCHW calibration images (a few hundred training images). `train`: (x, y) for QAT when
    `config.qat_steps > 0`. `evaluate`: optional (x, y) to report float, fake-quant and executor accuracy.
    Returns a new `QuantizedModel` (the input model is not changed) and a `QuantReport`.
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    if isinstance(model, QuantSim):
        sim, fp32 = model, None
    else:
        if calib is None:
            raise ValueError("quantize_: calibration images `calib` are needed")
        fp32 = model.eval()
        sim = QuantSim(model, config.bits_for(model), lsq=config.lsq, weight_method=config.weight_calibration)
        sim.calibrate(_batches(calib), config.calibration, config.percentile)
    qat_log: list[dict] = []
    if config.qat_steps > 0:
        if train is None:
            raise ValueError("quantize_: QAT (qat_steps > 0) needs training data `train=(x, y)`")
        teacher = fp32 if (config.distill and fp32 is not None) else None
        qat(sim, train[0], train[1], config.qat_steps, teacher, config.qat_lr, config.batch_size, config.seed)
        qat_log.append({"steps": config.qat_steps, "lsq": config.lsq, "distill": teacher is not None})
    qnet = convert(sim, config.group_size)
    report = QuantReport(asdict(config), dict(sim.bits), qnet.weight_bytes, sim.ranges(), qat=qat_log)
    if evaluate is not None:
        x, y = evaluate
        if fp32 is not None:
            report.fp32_acc = loss_and_accuracy(fp32, x, y)[1]
        with torch.no_grad():
            sim_pred = torch.cat([sim(xb).argmax(1) for xb in _batches(x)]).numpy()
        report.sim_acc = float((sim_pred == y.numpy()).mean())
        report.quant_acc, pred = executor_accuracy(qnet, x, y)
        report.agreement = float((pred == sim_pred).mean())
    report.seconds = time.perf_counter() - t0
    return qnet, report


def qat(sim: QuantSim, x: torch.Tensor, y: torch.Tensor, steps: int, teacher: nn.Module | None = None,
        lr: float = 0.005, batch_size: int = 64, seed: int = 0, range_momentum: float = 0.01) -> QuantSim:
    """Quantization-aware training of a calibrated `QuantSim` in place: straight-through fake quantization of
    weights (learned scales when built with `lsq=True`) and activations (ranges tracked by an exponential moving
    average of batch extremes), batch norms frozen, distillation from `teacher`."""
    for o in sim.observers.values():
        o.observe, o.enabled, o.momentum = True, True, range_momentum
    finetune(sim, x, y, steps, teacher=copy.deepcopy(teacher) if teacher is not None else None, lr=lr,
             batch_size=batch_size, seed=seed, bn_frozen=True)
    for o in sim.observers.values():
        o.observe, o.momentum = False, 0.0
    return sim.eval()
