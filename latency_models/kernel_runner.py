"""Timing on the custom kernel library `nas.kernels`: single fused ops and whole quantized networks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from latency_models.ops import OpKey
from nas.kernels import QuantizedNetwork
from nas.kernels.timing import time_layer
from search_spaces import Arch

if TYPE_CHECKING:  # devices imports this module for its kernels device
    from latency_models.devices import DeviceSpec
    from nas.kernels.lower import LoweredNetwork


def time_kernel_op(op: OpKey, spec: DeviceSpec, reps: int) -> list[float]:
    """Per-run times (ms) of one op, as the fused variant the kernel executor runs (`nas.kernels.time_layer`); a
    fused-block key (`mbconv` / `mbconv1`) as the compiled fused block with the executor's band-buffer scratch."""
    # OpKey carries every field time_layer reads from a search_spaces Layer (op, sizes, kernel, act, residual...)
    secs = time_layer(op, bits=spec.bits, isa=spec.isa, threads=spec.threads, reps=reps, warmup=5)
    return [s * 1e3 for s in secs]


def lowered_network(arch: Arch, bits: int = 8) -> LoweredNetwork:
    """The quantized network the profiler times for `arch`, with its float grid (what ONNX export reads): the
    float model with its seeded random initial weights, lowered by `nas.kernels.lower` (the lowering every exported
    network goes through) on min/max ranges of noise images; `bits` 4 is W4A8 (int4 pointwise and linear weights).
    Values are random, structure is what `finalize` exports for the arch: same ops, fusions and layouts. Needs
    PyTorch (the float model is built and lowered); timing single ops (`time_kernel_op`) does not."""
    import torch

    from nas.kernels.lower import lower, minmax_calibration
    from search_spaces.model import build

    with torch.random.fork_rng():  # seeded weights without moving the caller's random stream
        torch.manual_seed(0)
        model = build(arch).eval()
        calib = torch.randn(4, arch.in_channels, arch.resolution, arch.resolution)
    return lower(model, arch, minmax_calibration(model, calib, bits=bits))


def kernel_network(arch: Arch, bits: int = 8) -> QuantizedNetwork:
    """`lowered_network(arch, bits)`'s network: what the kernels device times."""
    return lowered_network(arch, bits).network


def prepare_kernel_network(arch: Arch, spec: DeviceSpec) -> Callable[[], object]:
    """A zero-argument call running `kernel_network(arch, spec.bits)` once on the kernel executor (packed for the
    ISA up front)."""
    net = kernel_network(arch, spec.bits)
    net.compile(spec.isa)
    x = np.random.default_rng(0).standard_normal((1, arch.in_channels, arch.resolution, arch.resolution),
                                                 dtype=np.float32)
    return lambda: net.run(x, threads=spec.threads, isa=spec.isa)
