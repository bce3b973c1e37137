"""Timing on the custom kernel library `nas.kernels`: single fused ops and whole quantized networks."""

from __future__ import annotations

from collections.abc import Callable

from latency_models.devices import DeviceSpec
from latency_models.ops import OpKey
from search_spaces import Arch


def time_kernel_op(op: OpKey, spec: DeviceSpec, reps: int) -> list[float]:
    """Per-run times (ms) of one op, as the fused variant the kernel executor runs (`nas.kernels.time_layer`)."""
    from nas.kernels.timing import time_layer

    # OpKey carries every field time_layer reads from a search_spaces Layer (op, sizes, kernel, act, residual...)
    secs = time_layer(op, bits=spec.bits, isa=spec.isa, threads=spec.threads, reps=reps, warmup=5)
    return [s * 1e3 for s in secs]


def prepare_kernel_network(arch: Arch, spec: DeviceSpec) -> Callable[[], object]:
    """A zero-argument call running the whole quantized network once on the kernel executor (random weights,
    calibrated on noise; packed for the ISA up front)."""
    import numpy as np
    import torch

    from nas.kernels import quantize
    from search_spaces import build

    torch.manual_seed(0)
    model = build(arch).eval()
    calib = torch.randn(4, arch.in_channels, arch.resolution, arch.resolution)
    net = quantize(model, arch, calib, bits=spec.bits)
    net.compile(spec.isa)
    x = np.random.default_rng(0).standard_normal((1, arch.in_channels, arch.resolution, arch.resolution),
                                                 dtype=np.float32)
    return lambda: net.run(x, threads=spec.threads, isa=spec.isa)
