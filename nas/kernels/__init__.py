"""Custom low-bit CPU kernel library: int8 / W4A8 NHWC ops with AVX512-VNNI, AVX2 and scalar paths.

Public API::

    active_isa(), available_isas(), set_isa(name), use_isa(name), build_hash(), version
    compile_op(spec, isa=None).run(x, residual=None, threads=1)      # specs: GemmSpec, ConvSpec, ...
    pointwise_conv / depthwise_conv / conv2d / global_avg_pool / squeeze_excite / linear (functional)
    nas.kernels.lower.lower(model, arch, minmax_calibration(model, images)).network -> QuantizedNetwork  # the one
        lowering, from a PyTorch model (its own module: running a lowered network needs no torch)
    QuantizedNetwork.run(x, threads=1)
    time_layer(layer, bits=8, isa=None, threads=1, batch=1, reps=50) -> list[float] seconds
"""

from __future__ import annotations

import hashlib

import numpy as np

from nas.kernels import _C
from nas.kernels.executor import QuantizedLayer, QuantizedNetwork
from nas.kernels.isa import ISAS, active_isa, available_isas, set_isa, use_isa
from nas.kernels.ops import (
    CompiledOp,
    ConvSpec,
    DepthwiseSpec,
    GemmSpec,
    PoolSpec,
    Requant,
    Residual,
    SESpec,
    compile_op,
)
from nas.kernels.quant import QParams
from nas.kernels.timing import time_layer

version = "0.1.0"

def build_hash() -> str:
    """Short hash of the loaded extension: its C++ sources and headers as compiled (hashed by setup.py), its
    compile flags and compiler."""
    h = hashlib.sha256()
    for part in (_C.source_hash, _C.build_flags, _C.compiler):
        h.update(part.encode())
    return h.hexdigest()[:16]


def pointwise_conv(x: np.ndarray, spec: GemmSpec, residual: np.ndarray | None = None, threads: int = 1,
                   isa: str | None = None) -> np.ndarray:
    """1x1 convolution on uint8 NHWC ``x`` (fused bias, requant, activation, optional residual add)."""
    return compile_op(spec, isa).run(x, residual=residual, threads=threads)


def linear(x: np.ndarray, spec: GemmSpec, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """Fully connected layer on uint8 ``x`` [N, K] (uint8 output, or int32 when ``spec.out_int32``)."""
    return compile_op(spec, isa).run(x, threads=threads)


def depthwise_conv(x: np.ndarray, spec: DepthwiseSpec, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """Depthwise kxk convolution on uint8 NHWC ``x``."""
    return compile_op(spec, isa).run(x, threads=threads)


def conv2d(x: np.ndarray, spec: ConvSpec, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """Full kxk convolution (the stem) on uint8 NHWC ``x``."""
    return compile_op(spec, isa).run(x, threads=threads)


def global_avg_pool(x: np.ndarray, spec: PoolSpec, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """Global average pool, uint8 NHWC -> uint8 [N, C]."""
    return compile_op(spec, isa).run(x, threads=threads)


def squeeze_excite(x: np.ndarray, spec: SESpec, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """Squeeze-and-excitation on uint8 NHWC ``x``."""
    return compile_op(spec, isa).run(x, threads=threads)


__all__ = [
    "ISAS",
    "CompiledOp",
    "ConvSpec",
    "DepthwiseSpec",
    "GemmSpec",
    "PoolSpec",
    "QParams",
    "QuantizedLayer",
    "QuantizedNetwork",
    "Requant",
    "Residual",
    "SESpec",
    "active_isa",
    "available_isas",
    "build_hash",
    "compile_op",
    "conv2d",
    "depthwise_conv",
    "global_avg_pool",
    "linear",
    "pointwise_conv",
    "set_isa",
    "squeeze_excite",
    "time_layer",
    "use_isa",
    "version",
]
