"""A whole quantized network (plain dataclasses of NumPy arrays) executed NHWC on the kernels.

Per-layer fusion (one kernel call per ``search_spaces.layers`` entry, so per-layer timings sum to the network):
- ``stem`` / ``expand`` / ``head`` / ``hidden``: GEMM (or im2col + GEMM for the stem) + bias + requant + activation;
- ``dw``: depthwise + bias + requant + activation;
- ``se``: pool -> fc1+ReLU -> fc2+hard-sigmoid -> channel scale, one op;
- ``project``: GEMM + bias + requant, with the block's residual add fused when the block has one;
- ``pool``: global average pool; ``classifier``: GEMM writing int32 ``acc + bias``, scaled to float logits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nas.kernels import _C, reference
from nas.kernels.isa import resolve_isa
from nas.kernels.ops import CompiledOp, GemmSpec, Spec, compile_op, out_shape
from nas.kernels.quant import QParams, quantize_input


@dataclass
class QuantizedLayer:
    """One fused op of the network; ``name`` and ``op`` follow ``search_spaces.Layer``."""

    name: str
    op: str
    spec: Spec


@dataclass
class QuantizedNetwork:
    """An int8 (or W4A8) network: input grid, fused layers in execution order, classifier logit scales."""

    input_q: QParams
    layers: list[QuantizedLayer]
    logit_scale: np.ndarray  # float32 [num_classes]: logits = int32 accumulator * logit_scale
    bits: int = 8
    arch: str = ""  # architecture string (search_spaces.encode) for reference
    _compiled: dict[str, list[CompiledOp]] = field(default_factory=dict, repr=False, compare=False)
    _buffers: dict[tuple, list[np.ndarray]] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def compile(self, isa: str | None = None) -> list[CompiledOp]:
        """Pack every layer for ``isa`` once (cached)."""
        isa = resolve_isa(isa)
        if isa not in self._compiled:
            self._compiled[isa] = [compile_op(layer.spec, isa) for layer in self.layers]
        return self._compiled[isa]

    def quantize_input(self, x: np.ndarray, fast: bool = False) -> np.ndarray:
        """Float NCHW (as for the torch model) -> uint8 NHWC on the input grid; uint8 NHWC passes through.

        ``fast`` uses the C++ conversion (float32 input; bit-identical to the NumPy path)."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            if x.ndim != 4:
                raise ValueError(f"x: expected uint8 NHWC [N, H, W, C], got shape {x.shape}")
            return np.ascontiguousarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected float NCHW or uint8 NHWC, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"x: expected float NCHW [N, C, H, W], got shape {x.shape}")
        if fast:
            n, c, h, w = x.shape
            out = np.empty((n, h, w, c), dtype=np.uint8)
            q = self.input_q
            _C.quantize_nchw(np.ascontiguousarray(x, dtype=np.float32), np.float32(q.scale), q.zero_point, out)
            return out
        return np.ascontiguousarray(quantize_input(x.transpose(0, 2, 3, 1), self.input_q))

    def run(self, x: np.ndarray, threads: int = 1, isa: str | None = None) -> np.ndarray:
        """Float32 logits [N, num_classes] computed on the kernels."""
        ops = self.compile(isa)
        xq = self.quantize_input(x, fast=True)
        with self._lock:  # intermediate buffers are reused across calls (no page faults per run)
            key = (ops[0].isa, xq.shape)
            if key not in self._buffers:
                shapes, shape = [], xq.shape
                for layer in self.layers:
                    shape = out_shape(layer.spec, shape)
                    shapes.append(shape)
                dtypes = [np.int32 if getattr(lay.spec, "out_int32", False) else np.uint8 for lay in self.layers]
                self._buffers[key] = [np.empty(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True)]
            bufs = self._buffers[key]
            return self._forward(xq, lambda i, t, r: ops[i].run(t, residual=r, out=bufs[i], threads=threads))

    def run_reference(self, x: np.ndarray) -> np.ndarray:
        """Same network through the pure-NumPy reference (bit-exact target for :meth:`run`)."""
        return self._forward(self.quantize_input(x), lambda i, t, r: reference.run(self.layers[i].spec, t, r))

    def _forward(self, t: np.ndarray, run_op: Callable[[int, np.ndarray, np.ndarray | None], np.ndarray]) -> np.ndarray:
        block_input, block = t, None
        for i, layer in enumerate(self.layers):
            parts = layer.name.split(".")
            if parts[0] == "blocks" and parts[1] != block:
                block, block_input = parts[1], t
            spec = layer.spec
            residual = block_input if isinstance(spec, GemmSpec) and spec.residual is not None else None
            t = run_op(i, t, residual)
        return t.astype(np.float32) * self.logit_scale[None, :]

    def weight_bytes(self) -> int:
        """Bytes of weights at their storage width (int4 counted as half a byte)."""
        total = 0
        for layer in self.layers:
            specs = [layer.spec.fc1, layer.spec.fc2] if layer.op == "se" else [layer.spec]
            for s in specs:
                w = getattr(s, "weight", None)
                if w is not None:
                    total += w.size * getattr(s, "bits", 8) // 8
        return total


__all__ = ["QuantizedLayer", "QuantizedNetwork"]
