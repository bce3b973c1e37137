"""Quantization onto the kernel library: PTQ with calibration, QAT (STE / LSQ, distillation), one-call API.

>>> qmodel, report = quantize_model(model, QuantConfig(weight_bits=8, calibration="percentile"), calib=x_calib)
>>> qmodel, report = quantize_model(model, QuantConfig(weight_bits=4, qat_steps=300, lsq=True), calib=x,
...                                 train=(x, y))
>>> logits = qmodel(x_test)          # runs `qmodel.network`, the kernel library's QuantizedNetwork

The network is the kernel library's `QuantizedNetwork` (per-channel symmetric int8 / int4 weights, per-tensor
asymmetric uint8 activations, fixed-point requantization, batch norm folded), built by the one lowering
`nas.kernels.lower` on the grid of a calibrated (or QAT-trained) `QuantSim` (`quantized_model`), so that
calibration choices and learned scales reach the executor.
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
from nas.kernels.lower import lower


@dataclass(frozen=True)
class QuantConfig:
    """What `quantize_model` does. `weight_bits` 4 means W4A8 on the pointwise and linear layers (the kernels' int4
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


def quantized_model(sim: QuantSim, group_size: int = 0) -> QuantizedModel:
    """The `QuantizedModel` of a calibrated (or QAT-trained) `QuantSim`: its float weights lowered by
    `nas.kernels.lower` on the simulator's grid (activation ranges, per-layer bits, per-channel weight scales times
    |BN factor|); int4 layers with `group_size` get the kernels' integer group sub-scales."""
    lowered = lower(sim.float_model(), sim.arch, sim.calibration(group_size))
    return QuantizedModel(lowered.network, sim.arch, lowered.act_qparams, lowered.weight_scales,
                          {"bits": dict(sim.bits), "group_size": group_size})


def _batches(x: torch.Tensor, size: int = 256) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def executor_accuracy(qmodel: QuantizedModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of a `QuantizedModel` on the kernels, and its predicted labels."""
    preds = qmodel.predict(x)
    return float((preds == y.numpy()).mean()), preds


def quantize_model(model: nn.Module | QuantSim, config: QuantConfig = QuantConfig(),
                   calib: torch.Tensor | None = None, train: tuple[torch.Tensor, torch.Tensor] | None = None,
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
            raise ValueError("quantize_model: calibration images `calib` are needed")
        fp32 = model.eval()
        sim = QuantSim(model, config.bits_for(model), lsq=config.lsq, weight_method=config.weight_calibration)
        sim.calibrate(_batches(calib), config.calibration, config.percentile)
    qat_log: list[dict] = []
    if config.qat_steps > 0:
        if train is None:
            raise ValueError("quantize_model: QAT (qat_steps > 0) needs training data `train=(x, y)`")
        teacher = fp32 if (config.distill and fp32 is not None) else None
        qat(sim, train[0], train[1], config.qat_steps, teacher, config.qat_lr, config.batch_size, config.seed)
        qat_log.append({"steps": config.qat_steps, "lsq": config.lsq, "distill": teacher is not None})
    qnet = quantized_model(sim, config.group_size)
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
