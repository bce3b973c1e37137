"""Per-layer timing on the kernels, for latency lookup tables."""

from __future__ import annotations

import math

import numpy as np

from nas.kernels.ops import compile_op
from nas.kernels.random_specs import spec_for_layer
from nas.timing import time_calls


def time_layer(
    layer, bits: int = 8, isa: str | None = None, threads: int = 1, batch: int = 1, reps: int = 50, warmup: int = 5
) -> list[float]:
    """Seconds per run of ONE ``search_spaces.Layer`` on random quantized data, ``reps`` samples.

    The op is the fused variant the executor runs for that layer (see README: expand/head/stem carry their
    activation, project carries the residual add, SE is one op, the classifier writes int32 logits).
    ``bits`` applies to pointwise and linear weights (8 or 4).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits}")
    if batch < 1 or reps < 1:
        raise ValueError(f"batch and reps must be >= 1, got batch={batch}, reps={reps}")
    rng = np.random.default_rng(0)
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

