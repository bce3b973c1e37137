"""The network the latency profiler times for an architecture is the network export ships for it: the same op list,
fusions and layouts, int8 and W4A8, for architectures of several search spaces.

Each side is described from the network object it produced (never from a shared builder call): the profiler's
whole-network timing (`latency_models.kernel_runner.kernel_network`), the per-op specs its latency tables time
(`nas.kernels.random_specs.spec_for_layer` of each `latency_models.arch_ops` op, as `time_layer` builds them), and
the checkpoint `finalize` / export writes, read back from disk.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch

import search_spaces as ss
from latency_models import arch_ops
from latency_models.kernel_runner import kernel_network
from nas.compress.quantize import QuantConfig
from nas.data import Dataset, split
from nas.export import load, save
from nas.export.pipeline import FinalizeConfig, _quantize_variant, finalize
from nas.kernels import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, QuantizedNetwork, SESpec
from nas.kernels.random_specs import spec_for_layer
from search_spaces.presets import preset, small_input
from search_spaces.spaces import SPACES


def describe_op(spec: object) -> tuple:
    """Kind, weight layout (shape, dtype, bits, int4 group sub-scales), stride and fusions of one op."""
    def act(rq) -> str:  # a nonlinear activation is fused as a lookup table, relu / relu6 / none as a clamp
        return "lut" if rq.lut is not None else "clamp"

    if isinstance(spec, GemmSpec):
        subs = None if spec.sub_scales is None else spec.sub_scales.shape
        return ("gemm", act(spec.requant), spec.residual is not None, spec.out_int32, spec.weight.shape,
                spec.weight.dtype.str, spec.bits, spec.group_size, subs, spec.bias.dtype.str)
    if isinstance(spec, ConvSpec):  # weight [Cout, k, k, Cin]: NHWC im2col order
        return ("conv", act(spec.requant), spec.weight.shape, spec.weight.dtype.str, spec.stride, spec.bias.dtype.str)
    if isinstance(spec, DepthwiseSpec):  # weight [C, k, k]
        return ("dw", act(spec.requant), spec.weight.shape, spec.weight.dtype.str, spec.stride, spec.bias.dtype.str)
    if isinstance(spec, PoolSpec):
        return ("pool", spec.hw)
    if isinstance(spec, SESpec):
        return ("se", describe_op(spec.pool), describe_op(spec.fc1), describe_op(spec.fc2))
    raise AssertionError(f"unknown op spec {type(spec).__name__}")


def describe(net: QuantizedNetwork) -> dict:
    """Everything structural about a network: its layers in order, their wiring (inputs, fused residuals)."""
    return {"layers": [(layer.name, layer.op, describe_op(layer.spec)) for layer in net.layers],
            "wiring": net._wiring(), "bits": net.bits, "arch": net.arch}


def _archs() -> list[ss.Arch]:
    """Small (16 px) architectures: a preset and a random draw from each of several search spaces."""
    out = [small_input(preset("mobilenetv3-small"), 16, 1, 10)]
    for name in ("small32", "mobilenetv3", "efficientnet", "mobilenetv2"):
        out.append(small_input(SPACES[name].random_arch(random.Random(len(out))), 16, 1, 10))
    return out


ARCHS = _archs()


@functools.cache
def profiled(arch: ss.Arch, bits: int = 8) -> dict:
    """The description of the network the profiler times for `arch` (computed once per test session)."""
    return describe(kernel_network(arch, bits))


def _splits(arch: ss.Arch, n: int = 120):
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (n, arch.in_channels, arch.resolution, arch.resolution), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % arch.num_classes
    return split(Dataset("rand", x, y, arch.num_classes, tuple(map(str, range(arch.num_classes))), "rand.npz"))


def _model(arch: ss.Arch) -> torch.nn.Module:
    torch.manual_seed(1)  # other weights than the profiler's: only the structure must agree
    return ss.build(arch).eval()


def _assert_profiled_is_exported(arch: ss.Arch, bits: int, exported: QuantizedNetwork) -> None:
    want = describe(exported)
    assert profiled(arch, bits) == want
    # the latency tables time one op per arch_ops entry, in execution order, as time_layer builds it
    ops = arch_ops(arch)
    assert [op.op for op in ops] == [layer.op for layer in exported.layers]
    for op, (name, _, exported_op) in zip(ops, want["layers"], strict=True):
        spec, _ = spec_for_layer(op, bits if op.op in ("pw", "linear") else 8)
        assert describe_op(spec) == exported_op, name


def test_archs_cover_the_fusions():
    ops = [d for a in ARCHS for _, _, d in profiled(a)["layers"]]
    assert {d[0] for d in ops} == {"conv", "gemm", "dw", "se", "pool"}
    assert any(d[0] == "gemm" and d[2] for d in ops)  # a fused residual add
    assert {d[1] for d in ops if d[0] in ("gemm", "conv", "dw")} == {"lut", "clamp"}  # both activation fusions
    assert any(name == "hidden" for a in ARCHS for name, _, _ in profiled(a)["layers"])


def test_finalize_exports_what_the_profiler_times(tmp_path):
    arch = ARCHS[0]
    cfg = FinalizeConfig(w4_qat_steps=1, w4_qat_skip_within=1.0, calib_size=32, onnx=False, bench_reps=2)
    report = finalize(_model(arch), arch, _splits(arch), cfg, tmp_path / "final")
    assert set(report.checkpoints) == {"int8", "w4a8"}
    for name, bits in (("int8", 8), ("w4a8", 4)):
        _assert_profiled_is_exported(arch, bits, load(report.checkpoints[name]).network)


@pytest.mark.parametrize("arch", ARCHS[1:], ids=lambda a: str(a)[:40])
@pytest.mark.parametrize("bits", [8, 4])
def test_exported_checkpoint_is_the_profiled_network(arch, bits, tmp_path):
    """finalize's quantization step and export, for more architectures than a whole finalize run can afford."""
    model = _model(arch)
    x = torch.randn(16, arch.in_channels, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(16, dtype=torch.long)
    qmodel, _ = _quantize_variant(model, QuantConfig(weight_bits=bits), x, None, (x[:4], y[:4]), 0.0, None)
    exported = load(save(qmodel, tmp_path / "ck")).network
    _assert_profiled_is_exported(arch, bits, exported)


def test_a_divergent_lowering_is_caught():
    """The description sees a dropped fusion or another weight layout."""
    arch = ARCHS[0]
    net = kernel_network(arch)
    project = next(layer for layer in net.layers if layer.op == "pw" and layer.spec.residual is not None)
    before = describe(net)
    project.spec.residual = None
    assert describe(net) != before
    net = kernel_network(arch)
    stem = net.layers[0]
    stem.spec.weight = np.ascontiguousarray(stem.spec.weight.transpose(0, 3, 1, 2))  # OIHW instead of OHWI
    assert describe(net) != before
