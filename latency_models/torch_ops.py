"""PyTorch modules for single ops and whole networks, fp32 (BN folded) and int8 (torch.ao FX, x86 engine).

Single ops are built from the same module classes as `search_spaces.build`, so an op is quantized and fused by
torch.ao exactly as it is inside a whole network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from latency_models.ops import OpKey
from search_spaces import Arch, build
from search_spaces.model import ConvBNAct, SqueezeExcite, make_act


class Residual(nn.Module):
    """`skip + body(x)`: the project conv with its fused residual add (`skip` is the block's input)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip + self.body(x)


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class LinearAct(nn.Module):
    def __init__(self, cin: int, cout: int, act: str):
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def op_module(op: OpKey) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """A float module computing `op` and the shapes of its inputs (batch 1)."""
    spatial = [(1, op.in_channels, op.in_hw, op.in_hw)]
    if op.op in ("conv", "pw", "dw"):
        groups = op.in_channels if op.op == "dw" else 1
        m: nn.Module = ConvBNAct(op.in_channels, op.out_channels, op.kernel, op.stride, groups, op.act)
        if op.residual:
            return Residual(m), spatial + [(1, op.out_channels, op.out_hw, op.out_hw)]
        return m, spatial
    if op.op == "se":
        return SqueezeExcite(op.in_channels, op.hidden), spatial
    if op.op == "pool":
        return GlobalPool(), spatial
    if op.op == "linear":
        return LinearAct(op.in_channels, op.out_channels, op.act), [(1, op.in_channels)]
    raise ValueError(f"op: unknown op type {op.op!r}")


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every ConvBNAct's batch norm folded into its conv."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct):
            m.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


ENGINE = "x86"  # the torch.ao quantized engine int8 modules are built for and must run on


@contextmanager
def quantized_engine(name: str = ENGINE) -> Iterator[str]:
    """`torch.backends.quantized.engine` set to `name` inside a ``with`` block, the caller's engine after it."""
    previous = torch.backends.quantized.engine
    if previous != name:  # skip the setter when nested or already set: runners enter this per timed call
        torch.backends.quantized.engine = name
    try:
        yield name
    finally:
        if torch.backends.quantized.engine != previous:
            torch.backends.quantized.engine = previous


def quantize_int8(model: nn.Module, example: tuple[torch.Tensor, ...], strip_io: bool
                  ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """torch.ao FX post-training int8 quantization on the x86 engine, calibrated on `example`.

    With `strip_io` the input quantize and output dequantize are removed so that a single op is timed on
    quantized data, as it runs inside a quantized network; the returned input is then already quantized.
    The engine is set only while building: run the module inside `quantized_engine(ENGINE)`.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(model).eval()
    with quantized_engine(ENGINE):  # observers, qconfig and weight packing all follow the engine
        prepared = prepare_fx(model, get_default_qconfig_mapping(ENGINE), example)
        with torch.no_grad():
            prepared(*example)
        gm = convert_fx(prepared)
    if not strip_io:
        return gm, example
    inputs = list(example)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in list(gm.graph.nodes):
        if (node.op == "call_function" and node.target is torch.quantize_per_tensor
                and node.args[0] in placeholders):
            scale, zp = (getattr(gm, a.target) if hasattr(a, "target") else a for a in node.args[1:3])
            i = placeholders.index(node.args[0])
            inputs[i] = torch.quantize_per_tensor(example[i], float(scale), int(zp), node.args[3])
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif (node.op == "call_method" and node.target == "dequantize"
              and all(u.op == "output" for u in node.users)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, tuple(inputs)


def op_runner(op: OpKey, int8: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A ready-to-time (module, inputs) pair for one op (int8: time it inside `quantized_engine(ENGINE)`)."""
    m, shapes = op_module(op)
    _randomize_bn(m)
    xs = tuple(torch.randn(*s) for s in shapes)
    if int8:
        return quantize_int8(m, xs, strip_io=True)
    return fold_bn(m), xs


def network_runner(arch: Arch, int8: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A ready-to-time (module, inputs) pair for a whole network (random weights; int8: run it inside
    `quantized_engine(ENGINE)`)."""
    torch.manual_seed(0)
    m = build(arch).eval()
    _randomize_bn(m)
    xs = (torch.randn(1, arch.in_channels, arch.resolution, arch.resolution),)
    if int8:
        return quantize_int8(m, xs, strip_io=False)
    return fold_bn(m), xs
