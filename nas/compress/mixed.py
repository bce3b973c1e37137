"""Mixed precision (HAQ-style, greedy): per-layer int4 or int8 weights under a latency budget.

Each pointwise / linear layer's sensitivity is measured: the rise in loss (KL to the float model's predictions) when
that layer alone goes to int4 in the fake-quantized network. Each layer's int8 and int4 latency comes from the
device's latency tables (`kernels` and `kernels-int4`) or, without a table, is measured on the kernels
(`nas.kernels.time_layer`). Layers are switched to int4 in order of latency saved per loss added until the
predicted latency meets the budget.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import latency_models
import search_spaces as ss
from latency_models import OpKey
from nas.compress.fakequant import QuantSim, WeightFakeQuant, gemm_layers
from nas.kernels import time_layer

log = logging.getLogger(__name__)


def _predictor(table_id: str) -> object | None:  # a latency_models.Predictor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return latency_models.load_predictor(table_id)
    except (FileNotFoundError, OSError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def layer_latency_ms(arch: ss.Arch, bits: int, device: str = "kernels", reps: int = 20) -> tuple[dict[str, float],
                                                                                                  str]:
    """Latency (ms) of every layer of `arch` at `bits` weights (pointwise / linear; others stay int8), and its
    source: the latency table of `device` (`kernels` or `kernels-int4`), else measured on the kernels here
    (cached per process)."""
    predictor = _predictor(device if bits == 8 else f"{device}-int4")
    out = {}
    if predictor is not None:
        for layer in ss.layers(arch):
            out[layer.name] = predictor.op_ms(OpKey.of(layer))
        return out, f"table {device}{'' if bits == 8 else '-int4'}"
    for layer in ss.layers(arch):
        out[layer.name] = float(np.median(time_layer(layer, bits=bits, reps=reps))) * 1e3
    return out, "measured on the kernels"


@dataclass
class MixedReport:
    budget_ms: float
    int8_ms: float
    int4_ms: float
    predicted_ms: float
    latency_source: str
    sensitivity: dict[str, float]
    bits: dict[str, int]
    order: list[str] = field(default_factory=list)
    met: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _kl(sim: QuantSim, x: torch.Tensor, ref: torch.Tensor) -> float:
    out = sim(x)
    return float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), reduction="batchmean", log_target=True))


def sensitivities(model: nn.Module, calib: torch.Tensor, x: torch.Tensor, calibration: str = "minmax"
                  ) -> dict[str, float]:
    """KL(float || fake-quant) rise when each pointwise / linear layer alone has int4 weights (others int8)."""
    sim = QuantSim(model)
    sim.calibrate([calib[i : i + 256] for i in range(0, len(calib), 256)], calibration)
    with torch.no_grad():
        ref = model.eval()(x)
    base = _kl(sim, x, ref)
    fqs = {n: m.parametrizations.weight[0] for n, m in sim.model.named_modules()
           if hasattr(m, "parametrizations") and isinstance(m.parametrizations.weight[0], WeightFakeQuant)}
    out = {}
    for name in gemm_layers(model):
        fq = fqs[name]
        fq.bits = 4
        out[name] = max(_kl(sim, x, ref) - base, 0.0)
        fq.bits = 8
    return out


def mixed_precision(model: nn.Module, arch: ss.Arch, calib: torch.Tensor, x: torch.Tensor,
                    budget_ms: float | None = None, budget_ratio: float = 0.9, budget_savings: float | None = None,
                    device: str = "kernels", calibration: str = "minmax", sensitivity: dict[str, float] | None = None,
                    layer_ms: tuple[dict[str, float], dict[str, float]] | None = None
                    ) -> tuple[dict[str, int], MixedReport]:
    """Per-layer weight bits meeting `budget_ms` (default: `budget_ratio` x the all-int8 latency, or with
    `budget_savings` that fraction of the most int4 can save).

    `x`: held-out float images to measure sensitivity on. Returns `layer_bits` for `QuantConfig(layer_bits=...)`
    and a report. If even all-int4 misses the budget, every eligible layer is int4 and `met` is False.
    `sensitivity` reuses a `sensitivities` result. `layer_ms`: the int8 and int4 latency (ms) of every layer of
    `arch` by name, as `layer_latency_ms` returns them (default: looked up for `device` by `layer_latency_ms`).
    """
    if layer_ms is None:
        (lat8, src8), (lat4, src4) = layer_latency_ms(arch, 8, device), layer_latency_ms(arch, 4, device)
    else:
        (lat8, lat4), src8, src4 = layer_ms, "given", "given"
        names = {layer.name for layer in ss.layers(arch)}
        for field_name, lat in (("layer_ms[0] (int8)", lat8), ("layer_ms[1] (int4)", lat4)):
            if set(lat) != names:
                raise ValueError(f"mixed_precision: {field_name} must give a latency for every layer of the arch; "
                                 f"missing {sorted(names - set(lat))}, unknown {sorted(set(lat) - names)}")
    int8_ms, int4_total = sum(lat8.values()), sum(lat4.values())
    budget = budget_ms if budget_ms is not None else budget_ratio * int8_ms
    if budget_ms is None and budget_savings is not None:
        budget = int8_ms - budget_savings * (int8_ms - int4_total)
    sens = sensitivity if sensitivity is not None else sensitivities(model, calib, x, calibration)
    exec_name = {n: n.removesuffix(".conv") for n in sens}
    gain = {n: lat8[exec_name[n]] - lat4[exec_name[n]] for n in sens}
    order = sorted((n for n in sens if gain[n] > 0), key=lambda n: gain[n] / (sens[n] + 1e-6), reverse=True)
    bits = {n: 8 for n in sens}
    current = int8_ms
    chosen = []
    for n in order:
        if current <= budget:
            break
        bits[n] = 4
        current -= gain[n]
        chosen.append(n)
    met = current <= budget
    if not met:
        log.warning("mixed precision: budget %.4f ms not reachable (all int4: %.4f ms)", budget, current)
    src = src8 if src8 == src4 else f"{src8} / {src4}"
    return bits, MixedReport(budget, int8_ms, int4_total, current, src, sens, bits, chosen, met)
