"""Exact per-layer multiply-accumulates (MACs) and parameters of an architecture.

Convention (MobileNet/MnasNet/OFA papers): one multiply-accumulate = one "FLOP". Counted: every convolution and
linear layer, SE's two 1x1 convolutions included. Not counted: batch norm (folded into the conv at inference),
activations, pooling, the SE channel scaling and residual adds. Parameters are everything PyTorch would train:
conv/linear weights, biases, and batch-norm gamma and beta (running statistics are buffers, not parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.arch import Arch, make_divisible


@dataclass(frozen=True)
class Layer:
    """One op of the network in execution order; the unit of cost tables and latency tables."""

    name: str
    op: str  # "conv" | "pw" | "dw" | "se" | "pool" | "linear"
    in_hw: int
    out_hw: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    act: str  # "none" | "relu" | "relu6" | "hswish" | "swish"
    residual: bool
    hidden: int
    macs: int
    params: int


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def se_channels(arch: Arch, block_in: int, mid: int, se: float) -> int:
    """Squeeze width of an SE module (MobileNetV3 rounds the expanded width; EfficientNet uses the input)."""
    if arch.se_base == "in":
        return max(1, int(block_in * se))
    return make_divisible(mid * se, 8)


def _out_hw(hw: int, stride: int) -> int:
    return (hw - 1) // stride + 1


def layers(arch: Arch) -> list[Layer]:
    """The per-layer table of `arch`, one `Layer` per op in execution order."""
    out: list[Layer] = []
    hw = arch.resolution
    c = arch.in_channels
    ohw = _out_hw(hw, arch.stem_stride)
    s = arch.stem_channels
    out.append(Layer("stem", "conv", hw, ohw, c, s, 3, arch.stem_stride, arch.stem_act, False, 0,
                     ohw * ohw * s * c * 9, s * c * 9 + 2 * s))
    hw, c = ohw, s
    for i, b in enumerate(arch.blocks()):
        name = f"blocks.{i}"
        mid = b.mid(c)
        if b.expand != 1:
            out.append(Layer(f"{name}.expand", "pw", hw, hw, c, mid, 1, 1, b.act, False, 0,
                             hw * hw * c * mid, c * mid + 2 * mid))
        ohw = _out_hw(hw, b.stride)
        k2 = b.kernel * b.kernel
        out.append(Layer(f"{name}.dw", "dw", hw, ohw, mid, mid, b.kernel, b.stride, b.act, False, 0,
                         ohw * ohw * mid * k2, mid * k2 + 2 * mid))
        if b.se:
            sq = se_channels(arch, c, mid, b.se)
            out.append(Layer(f"{name}.se", "se", ohw, ohw, mid, mid, 1, 1, "relu", False, sq,
                             2 * mid * sq, 2 * mid * sq + sq + mid))
        residual = b.stride == 1 and c == b.out_channels
        out.append(Layer(f"{name}.project", "pw", ohw, ohw, mid, b.out_channels, 1, 1, "none", residual, 0,
                         ohw * ohw * mid * b.out_channels, mid * b.out_channels + 2 * b.out_channels))
        hw, c = ohw, b.out_channels
    h = arch.head_channels
    out.append(Layer("head", "pw", hw, hw, c, h, 1, 1, arch.head_act, False, 0, hw * hw * c * h, c * h + 2 * h))
    out.append(Layer("pool", "pool", hw, 1, h, h, 1, 1, "none", False, 0, 0, 0))
    c = h
    if arch.head_hidden:
        n = arch.head_hidden
        out.append(Layer("hidden", "linear", 1, 1, c, n, 1, 1, arch.head_act, False, 0, c * n, c * n + n))
        c = n
    n = arch.num_classes
    out.append(Layer("classifier", "linear", 1, 1, c, n, 1, 1, "none", False, 0, c * n, c * n + n))
    return out


def count(arch: Arch) -> Cost:
    """Total MACs and parameters of `arch`."""
    macs = params = 0
    for layer in layers(arch):
        macs += layer.macs
        params += layer.params
    return Cost(macs, params)


def count_macs(arch: Arch) -> int:
    """Total MACs without building the layer table (the hot path of budgeted sampling)."""
    hw = (arch.resolution - 1) // arch.stem_stride + 1
    c = arch.stem_channels
    macs = hw * hw * c * arch.in_channels * 9
    for b in arch.blocks():
        mid = b.mid(c)
        if b.expand != 1:
            macs += hw * hw * c * mid
        hw = (hw - 1) // b.stride + 1
        macs += hw * hw * mid * (b.kernel * b.kernel + b.out_channels)
        if b.se:
            macs += 2 * mid * se_channels(arch, c, mid, b.se)
        c = b.out_channels
    macs += hw * hw * c * arch.head_channels
    c = arch.head_channels
    if arch.head_hidden:
        macs += c * arch.head_hidden
        c = arch.head_hidden
    return macs + c * arch.num_classes
