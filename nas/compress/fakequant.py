"""Fake quantization of an `MBConvNet` in the kernel library's scheme, for calibration (PTQ) and QAT.

Scheme (`nas/kernels/quant.py`): weights symmetric per output channel (int8 in [-127, 127] or int4 in [-7, 7]),
activations per-tensor asymmetric uint8. Batch norm is folded into the preceding convolution at conversion; the
max-|w| per-channel scale commutes with that folding, so fake-quantizing the unfolded weight per channel is the
same grid. Gradients pass through rounding with the straight-through estimator (zero outside the clip range);
with `lsq=True` the per-channel weight scales are learned (Esser et al., LSQ).

`QuantSim(model, weight_bits)` wraps a copy of a model with observers at every tensor the executor stores in
uint8 (network input, every op output, block outputs after the residual add, the pooled features).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

CALIBRATORS = ("minmax", "percentile", "mse")
_SAMPLES = 1 << 16  # values kept per observed tensor per batch for percentile / MSE calibration


def qmax_of(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits}")
    return 127 if bits == 8 else 7


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 (scale, zero_point) covering [min(lo, 0), max(hi, 0)] (as `nas.kernels.quant.QParams.from_range`)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def _qdq_error(v: np.ndarray, lo: float, hi: float) -> float:
    scale, zp = act_qparams(lo, hi)
    q = np.clip(np.round(v / scale) + zp, 0, 255)
    return float(np.mean(np.square((q - zp) * scale - v)))


def choose_range(samples: np.ndarray, lo: float, hi: float, method: str, percentile: float = 99.99) -> tuple[float,
                                                                                                               float]:
    """Activation clip range from observed extremes and a sample of values: min-max, percentile or min-MSE."""
    if method == "minmax" or samples.size == 0:
        return lo, hi
    if method == "percentile":
        return (float(np.percentile(samples, 100 - percentile)) if lo < 0 else lo,
                float(np.percentile(samples, percentile)))
    if method == "mse":
        best, arg = math.inf, (lo, hi)
        for a in np.linspace(0.2, 1.0, 41):
            err = _qdq_error(samples, lo * a, hi * a)
            if err < best:
                best, arg = err, (lo * a, hi * a)
        return float(arg[0]), float(arg[1])
    raise ValueError(f"calibration: expected one of {CALIBRATORS}, got {method!r}")


def weight_scales(w: torch.Tensor, bits: int, method: str = "minmax") -> torch.Tensor:
    """Per-output-channel symmetric scales of `w` (axis 0): max|w| / qmax, or the clip that minimises MSE."""
    qmax = qmax_of(bits)
    w2 = w.detach().reshape(w.shape[0], -1).double()
    amax = w2.abs().amax(1).clamp_min(1e-8)
    if method == "minmax":
        return (amax / qmax).float()
    if method != "mse":
        raise ValueError(f"weight calibration: expected 'minmax' or 'mse', got {method!r}")
    best = torch.full_like(amax, math.inf)
    scale = amax / qmax
    for a in torch.linspace(0.3, 1.0, 36, dtype=torch.float64):
        s = amax * a / qmax
        err = ((torch.clamp(torch.round(w2 / s[:, None]), -qmax, qmax) * s[:, None] - w2) ** 2).mean(1)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
    return scale.float()


class ActObserver(nn.Module):
    """Observes a tensor (extremes and a value sample) and, once `enabled`, fake-quantizes it to uint8."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.register_buffer("lo", torch.tensor(math.inf))
        self.register_buffer("hi", torch.tensor(-math.inf))
        self.observe, self.enabled, self.momentum = True, False, 0.0
        self.samples: list[np.ndarray] = []
        self.keep_samples = False

    def set_range(self, lo: float, hi: float) -> None:
        self.lo.fill_(lo)
        self.hi.fill_(hi)

    def qparams(self) -> tuple[float, int]:
        return act_qparams(float(self.lo), float(self.hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            with torch.no_grad():
                lo, hi = x.min(), x.max()
                if self.momentum and torch.isfinite(self.lo):
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
                else:
                    self.lo.copy_(torch.minimum(self.lo, lo))
                    self.hi.copy_(torch.maximum(self.hi, hi))
                if self.keep_samples:
                    flat = x.detach().flatten()
                    if flat.numel() > _SAMPLES:
                        flat = flat[torch.randint(0, flat.numel(), (_SAMPLES,), generator=_GEN)]
                    self.samples.append(flat.numpy().astype(np.float32))
        if not self.enabled:
            return x
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)


_GEN = torch.Generator().manual_seed(0)


class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric per-output-channel fake quantization of a weight (optionally learned scales)."""

    def __init__(self, weight: torch.Tensor, bits: int, lsq: bool = False, method: str = "minmax"):
        super().__init__()
        self.bits, self.lsq, self.enabled = bits, lsq, True
        s = weight_scales(weight, bits, method)
        if lsq:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)
        self.method = method
        self.register_buffer("zero", torch.zeros(weight.shape[0], dtype=torch.int32))

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.lsq:
            return self.scale.detach().abs().clamp_min(1e-9)
        if self.method == "minmax":
            return weight_scales(w, self.bits)  # follows the weights as they train
        return self.scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        q = qmax_of(self.bits)
        if self.lsq:
            grad_factor = 1.0 / math.sqrt(w[0].numel() * q)
            return torch._fake_quantize_learnable_per_channel_affine(
                w, self.scale.abs().clamp_min(1e-9), self.zero.float(), 0, -q, q, grad_factor)
        return torch.fake_quantize_per_channel_affine(w, self.current_scale(w), self.zero, 0, -q, q)


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


class QuantSim(nn.Module):
    """A fake-quantized copy of an `MBConvNet`: observers at the executor's uint8 tensors, quantized weights.

    `bits` maps layer names to 4 or 8 (default 8; only `gemm_layers` may be 4).
    """

    def __init__(self, model: nn.Module, bits: dict[str, int] | None = None, lsq: bool = False,
                 weight_method: str = "minmax"):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.arch = getattr(model, "arch", None)
        bits = dict(bits or {})
        layers = weight_layers(self.model)
        gemm = set(gemm_layers(self.model))
        bad = [n for n, b in bits.items() if n not in layers or (b == 4 and n not in gemm)]
        if bad:
            raise ValueError(f"bits: layers {bad} unknown or cannot take int4 (only {sorted(gemm)})")
        self.bits = {n: int(bits.get(n, 8)) for n in layers}
        from torch.nn.utils import parametrize

        for n, m in layers.items():
            parametrize.register_parametrization(m, "weight", WeightFakeQuant(m.weight, self.bits[n], lsq,
                                                                             weight_method))
        self.observers = nn.ModuleDict()
        m = self.model

        def post(name: str, module: nn.Module) -> None:
            obs = self.observers[name.replace(".", "_")] = ActObserver(name)
            module.register_forward_hook(lambda _m, _i, out: obs(out))

        def pre(name: str, module: nn.Module) -> None:
            obs = self.observers[name.replace(".", "_")] = ActObserver(name)
            module.register_forward_pre_hook(lambda _m, args: (obs(args[0]),))

        pre("input", m.stem)
        post("stem", m.stem)
        for i, blk in enumerate(m.blocks):
            if blk.expand is not None:
                post(f"blocks.{i}.expand", blk.expand)
            post(f"blocks.{i}.dw", blk.dw)
            if blk.se is not None:
                post(f"blocks.{i}.se", blk.se)
            post(f"blocks.{i}", blk)
        post("head", m.head)
        if m.hidden is not None:
            pre("pool", m.hidden)
            post("hidden", m.hidden_act)
        else:
            pre("pool", m.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> QuantSim:
        """Train mode for gradients, but batch norms stay frozen (folded at conversion)."""
        super().train(mode)
        for mod in self.model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
        return self

    def set_mode(self, observe: bool, act_quant: bool, weight_quant: bool = True) -> None:
        for o in self.observers.values():
            o.observe, o.enabled = observe, act_quant
        for mod in self.modules():
            if isinstance(mod, WeightFakeQuant):
                mod.enabled = weight_quant

    @torch.no_grad()
    def calibrate(self, batches: list[torch.Tensor], method: str = "minmax", percentile: float = 99.99) -> None:
        """Observe activations on float batches (weights quantized), then fix each range by `method`."""
        if method not in CALIBRATORS:
            raise ValueError(f"calibration: expected one of {CALIBRATORS}, got {method!r}")
        self.eval()
        self.set_mode(observe=True, act_quant=False)
        for o in self.observers.values():
            o.lo.fill_(math.inf)
            o.hi.fill_(-math.inf)
            o.samples, o.keep_samples = [], method != "minmax"
        for x in batches:
            self.model(x)
        for o in self.observers.values():
            samples = np.concatenate(o.samples) if o.samples else np.zeros(0, np.float32)
            o.set_range(*choose_range(samples, float(o.lo), float(o.hi), method, percentile))
            o.samples, o.keep_samples = [], False
        self.set_mode(observe=False, act_quant=True)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Activation ranges by tensor name (`input`, `stem`, `blocks.3.dw`, `blocks.3`, `head`, `pool`, ...)."""
        return {o.name: (float(o.lo), float(o.hi)) for o in self.observers.values()}

    def fp_weights_scales(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
        """Per layer: (float weight, per-channel weight scale on the unfolded weight, bits)."""
        out = {}
        for n, m in weight_layers(self.model).items():
            fq = m.parametrizations.weight[0]
            w = m.parametrizations.weight.original.detach()
            out[n] = (w, fq.current_scale(w).detach(), fq.bits)
        return out

    def export_float(self) -> nn.Module:
        """A plain model whose weights are the fake-quantized values (dequantized), batch norms unchanged."""
        from torch.nn.utils import parametrize

        m = copy.deepcopy(self.model)
        for mod in weight_layers(m).values():
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        for h in list(m.modules()):
            h._forward_hooks.clear()
            h._forward_pre_hooks.clear()
        return m
