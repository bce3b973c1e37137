"""Fake quantization of an `MBConvNet` in the kernel library's scheme, for calibration (PTQ) and QAT.

Scheme (`nas/kernels/quant.py`): weights symmetric per output channel (int8 in [-127, 127] or int4 in [-7, 7]),
activations per-tensor asymmetric uint8. Batch norm is folded into the preceding convolution at conversion; the
max-|w| per-channel scale commutes with that folding, so fake-quantizing the unfolded weight per channel is the
same grid. Gradients pass through rounding with the straight-through estimator (zero outside the clip range);
with `lsq=True` the per-channel weight scales are learned (Esser et al., LSQ).

`QuantSim(model, bits)` runs a copy of a model with observers at every tensor the executor stores in uint8.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from nas.kernels.lower import Calibration, gemm_layers, weight_layers
from nas.kernels.training import depthwise_conv2d, fake_quantize, is_depthwise, memory_order
from search_spaces import build

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
    if method == "mse":  # coordinate search: the upper clip, then the lower one
        if samples.size > 100_000:
            samples = samples[np.random.default_rng(0).choice(samples.size, 100_000, replace=False)]
        grid = np.geomspace(1e-3, 1.0, 64)
        best_lo, best_hi = lo, hi
        for _ in range(2):
            if hi > 0:
                best_hi = min((_qdq_error(samples, best_lo, hi * a), hi * a) for a in grid)[1]
            if lo < 0:
                best_lo = min((_qdq_error(samples, lo * a, best_hi), lo * a) for a in grid)[1]
        return float(best_lo), float(best_hi)
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

    def __init__(self, name: str, range_only: bool = False):
        super().__init__()
        self.name = name
        self.range_only = range_only  # a range export needs but the kernels never round to: never fake-quantized
        self.register_buffer("lo", torch.tensor(math.inf))
        self.register_buffer("hi", torch.tensor(-math.inf))
        self.observe, self.enabled, self.momentum = True, False, 0.0
        self.samples: list[np.ndarray] = []
        self.keep_samples = False
        # Draws the value sample; `QuantSim.calibrate` sets a freshly seeded one so that a calibration's ranges
        # depend only on its inputs and seed, not on what sampled before it in the process.
        self.generator: torch.Generator | None = None

    def set_range(self, lo: float, hi: float) -> None:
        self.lo.fill_(lo)
        self.hi.fill_(hi)

    def qparams(self) -> tuple[float, int]:
        return act_qparams(float(self.lo), float(self.hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            with torch.no_grad():
                lo, hi = torch.aminmax(memory_order(x))  # one pass, no channels-last copy
                if self.momentum and torch.isfinite(self.lo):
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
                else:
                    self.lo.copy_(torch.minimum(self.lo, lo))
                    self.hi.copy_(torch.maximum(self.hi, hi))
                if self.keep_samples:
                    flat = x.detach().flatten()
                    if flat.numel() > _SAMPLES:
                        if self.generator is None:  # sampling outside `calibrate`: still never the global RNG
                            self.generator = torch.Generator().manual_seed(0)
                        idx = torch.randint(0, flat.numel(), (_SAMPLES,), generator=self.generator)
                        flat = flat[idx]
                    self.samples.append(flat.numpy().astype(np.float32))
        if not self.enabled or self.range_only:
            return x
        scale, zp = self.qparams()
        return fake_quantize(x, scale, zp, 0, 255)


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


class QuantSim(nn.Module):
    """A fake-quantized copy of an `MBConvNet`: every tensor the kernel executor stores as uint8 is observed and
    (once calibrated) fake-quantized, with the executor's names (`nas.kernels.lower.Calibration`): `input`, `stem`,
    `stem.pre` (before a lookup-table activation), `blocks.i.expand`, `blocks.i.dw`, `blocks.i.se.pool`,
    `blocks.i.se.fc1`, `blocks.i.se.fc2.pre`, `blocks.i.se`, `blocks.i.project`, `blocks.i.out` (after the
    residual add), `head`, `pool`, `hidden`. The SE gate uses the executor's fixed grid (1/255). A residual block's
    `blocks.i.project` (before the add) is observed only: the kernels fuse the add before rounding, so it is never
    fake-quantized; its range is the grid ONNX export puts that term on (`nas.export.onnx_qdq`).

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
        self.forward_names: list[str] = []
        with torch.no_grad():  # discover the tensor names with one tiny pass
            a = self.arch
            self._discover = True
            self.model.eval()
            self(torch.zeros(1, a.in_channels, a.resolution, a.resolution))
            self._discover = False

    def fq(self, name: str, t: torch.Tensor, range_only: bool = False) -> torch.Tensor:
        key = name.replace(".", "_")
        if key not in self.observers:
            if not getattr(self, "_discover", False):
                raise KeyError(f"QuantSim: no observer for tensor {name!r}")
            self.observers[key] = ActObserver(name, range_only)
            return t
        return self.observers[key](t)

    def _cba(self, m: nn.Module, x: torch.Tensor, name: str, act: str) -> torch.Tensor:
        conv = m.conv
        if is_depthwise(conv):
            # depthwise: weight gradient on the kernel library during QAT (oneDNN's is 4-8x slower for k >= 5)
            pre = m.bn(depthwise_conv2d(x, conv.weight, conv.stride[0], conv.padding[0]))
        else:
            pre = m.bn(conv(x))
        if act in ("hswish", "swish"):
            pre = self.fq(name + ".pre", pre)
        return self.fq(name, m.act(pre))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, a = self.model, self.arch
        x = self.fq("input", x)
        x = self._cba(m.stem, x, "stem", a.stem_act)
        for i, (blk, block) in enumerate(zip(m.blocks, a.blocks(), strict=True)):
            n = f"blocks.{i}"
            inp = x
            y = self._cba(blk.expand, x, n + ".expand", block.act) if blk.expand is not None else x
            y = self._cba(blk.dw, y, n + ".dw", block.act)
            if blk.se is not None:
                s = self.fq(n + ".se.pool", y.mean((2, 3), keepdim=True))
                s = self.fq(n + ".se.fc1", torch.relu(blk.se.reduce(s)))
                s = self.fq(n + ".se.fc2.pre", blk.se.expand(s))
                gate = nn.functional.hardsigmoid(s)
                if self.observers and not getattr(self, "_discover", False) and self._act_on():
                    gate = fake_quantize(gate, 1.0 / 255.0, 0, 0, 255)
                y = self.fq(n + ".se", y * gate)
            y = blk.project.bn(blk.project.conv(y))
            if blk.use_residual:  # the kernels add before they round; ONNX export quantizes both terms of the add
                x = self.fq(n + ".out", inp + self.fq(n + ".project", y, range_only=True))
            else:
                x = self.fq(n + ".project", y)
        x = self._cba(m.head, x, "head", a.head_act)
        x = self.fq("pool", x.mean((2, 3)))
        if m.hidden is not None:
            x = m.hidden(x)
            if a.head_act in ("hswish", "swish"):
                x = self.fq("hidden.pre", x)
            x = self.fq("hidden", m.hidden_act(x))
        return m.classifier(x)

    def _act_on(self) -> bool:
        return next(iter(self.observers.values())).enabled


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
    def calibrate(self, batches: list[torch.Tensor], method: str = "minmax", percentile: float = 99.99,
                  seed: int = 0) -> None:
        """Observe activations on float batches (weights quantized), then fix each range by `method`.

        `seed` seeds the sampling of values for percentile / MSE ranges: equal inputs and seed give equal ranges.
        """
        if method not in CALIBRATORS:
            raise ValueError(f"calibration: expected one of {CALIBRATORS}, got {method!r}")
        self.eval()
        self.set_mode(observe=True, act_quant=False)
        # One generator shared in forward order, seeded per call: the first calibration in a process draws what
        # the former module-wide generator drew, and every later one draws the same again.
        gen = torch.Generator().manual_seed(seed)
        for o in self.observers.values():
            o.lo.fill_(math.inf)
            o.hi.fill_(-math.inf)
            o.samples, o.keep_samples, o.generator = [], method != "minmax", gen
        for x in batches:
            self(x)
        for o in self.observers.values():
            samples = np.concatenate(o.samples) if o.samples else np.zeros(0, np.float32)
            o.set_range(*choose_range(samples, float(o.lo), float(o.hi), method, percentile))
            o.samples, o.keep_samples, o.generator = [], False, None
        self.set_mode(observe=False, act_quant=True)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Activation ranges by tensor name (see the class docstring)."""
        return {o.name: (float(o.lo), float(o.hi)) for o in self.observers.values()}

    def fp_weights_scales(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
        """Per layer: (float weight, per-channel weight scale on the unfolded weight, bits)."""
        out = {}
        for n, m in weight_layers(self.model).items():
            fq = m.parametrizations.weight[0]
            w = m.parametrizations.weight.original.detach()
            out[n] = (w, fq.current_scale(w).detach(), fq.bits)
        return out

    def calibration(self, group_size: int = 0) -> Calibration:
        """The grid this simulator models, for `nas.kernels.lower`: its activation ranges, per-layer bits and
        per-channel weight scales (min-max, MSE or learned); int4 layers get `group_size` sub-scales when > 0."""
        scales = {n: s.double().numpy() for n, (_, s, _) in self.fp_weights_scales().items()}
        return Calibration(self.ranges(), dict(self.bits), scales, group_size)

    def float_model(self) -> nn.Module:
        """A plain model with this simulator's float weights (as trained, not fake-quantized) and batch norms: what
        gets lowered. Built afresh from the arch: removing a parametrization from a deep copy would also strip it
        from this simulator (the copy shares the parametrized class)."""
        suffix = ".parametrizations.weight.original"
        state = {k.replace(suffix, ".weight"): v for k, v in self.model.state_dict().items()
                 if ".parametrizations.weight." not in k or k.endswith(suffix)}
        with torch.random.fork_rng():  # build() initialises weights from the global stream; leave it untouched
            m = build(self.arch)
        m.load_state_dict(state)
        return m.eval()
