"""Per-layer (and per-fused-block) timing on the kernels, for latency lookup tables."""

from __future__ import annotations

import math

import numpy as np

from nas.kernels import memory
from nas.kernels import random_specs as R
from nas.kernels.fusion import FUSED_OPS
from nas.kernels.ops import FusedBlockSpec, compile_op, out_shape
from nas.kernels.random_specs import spec_for_layer
from nas.timing import time_calls


def fused_block_spec(layer, bits: int = 8, rng: np.random.Generator | None = None) -> FusedBlockSpec:
    """A random ``FusedBlockSpec`` of the shapes of a fused-block key (``latency_models.ops`` ``mbconv`` /
    ``mbconv1``: `in_channels` -> `hidden` -> `out_channels`, `kernel`, `stride`, `act`, `residual`): the layers
    ``spec_for_layer`` builds for its expand, depthwise and project keys, with each layer's input zero point the
    previous one's output zero point, as a lowered network chains them. `bits` applies to the 1x1 layers."""
    rng = rng or np.random.default_rng(0)
    mid = layer.hidden
    if layer.op == "mbconv1" and mid != layer.in_channels:
        raise ValueError(f"hidden: an mbconv1 block (no expand layer) has hidden == in_channels "
                         f"({layer.in_channels}), got {mid}")
    expand = None
    if layer.op == "mbconv":
        expand = R.random_gemm(rng, mid, layer.in_channels, bits=bits, act=layer.act)
    dw = R.random_depthwise(rng, mid, layer.kernel, layer.stride, layer.act)
    if expand is not None:
        dw.in_zp = expand.requant.out_zp
    project = R.random_gemm(rng, layer.out_channels, mid, bits=bits, residual=layer.residual)
    project.in_zp = dw.requant.out_zp
    return FusedBlockSpec(expand, dw, project)


def time_layer(
    layer, bits: int = 8, isa: str | None = None, threads: int = 1, batch: int = 1, reps: int = 50, warmup: int = 5
) -> list[float]:
    """Seconds per run of ONE ``search_spaces.Layer`` (or ``latency_models.ops.OpKey``) on random quantized data,
    ``reps`` samples.

    The op is the fused variant the executor runs for that layer (see README: expand/head/stem carry their
    activation, project carries the residual add, SE is one op, the classifier writes int32 logits). A fused-block
    key (op ``mbconv`` / ``mbconv1``) is timed as the compiled fused block (``_C.FusedBlock``) with its band buffers
    preallocated as the executor's arena holds them (``memory.scratch_slots`` slots for ``threads``), so no run
    pays for allocating them. ``bits`` applies to pointwise and linear weights (8 or 4).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits}")
    if batch < 1 or reps < 1:
        raise ValueError(f"batch and reps must be >= 1, got batch={batch}, reps={reps}")
    rng = np.random.default_rng(0)
    if layer.op in FUSED_OPS:
        return _time_fused(fused_block_spec(layer, bits, rng), layer, isa, threads, batch, reps, warmup, rng)
    spec, shape = spec_for_layer(layer, bits if layer.op in ("pw", "linear") else 8, rng)
    op = compile_op(spec, isa)
    x = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
    res = None
    if getattr(spec, "residual", None) is not None:
        res = rng.integers(0, 256, size=(batch, *shape[:-1], layer.out_channels), dtype=np.uint8)
    out = op.run(x, residual=res, threads=threads)
    ms = time_calls(lambda: op.run(x, residual=res, out=out, threads=threads), reps=reps, warmup=warmup,
                    min_sample_s=0, max_total_s=math.inf)
    return [t / 1e3 for t in ms]


def _time_fused(spec: FusedBlockSpec, layer, isa: str | None, threads: int, batch: int, reps: int, warmup: int,
                rng: np.random.Generator) -> list[float]:
    if not isinstance(threads, int | np.integer) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    op = compile_op(spec, isa)
    hw = layer.in_hw
    x = rng.integers(0, 256, size=(batch, hw, hw, layer.in_channels), dtype=np.uint8)
    out = np.empty(out_shape(spec, x.shape), dtype=np.uint8)
    scratch = np.empty(memory.fused_step_scratch(spec, x.shape, int(threads)), dtype=np.uint8)  # as the executor's
    fused = op._op  # _C.FusedBlock: its run takes the scratch, which CompiledOp.run would allocate per call

    def run() -> None:
        fused.run(x, out, int(threads), scratch)

    run()
    ms = time_calls(run, reps=reps, warmup=warmup, min_sample_s=0, max_total_s=math.inf)
    return [t / 1e3 for t in ms]
