"""Timing on ONNX Runtime's CPU execution provider: single ops and whole networks as `nas.export` writes them.

Both come from one writer, `nas.export.onnx_qdq.QDQWriter`: a whole network is `to_onnx` of the network the kernels
device times (`kernel_runner.lowered_network`), a single op is the nodes that writer emits for that layer inside a
network, so an op is profiled as the nodes ONNX Runtime fuses it from. `fp32` writes the same graphs without Q/DQ.

Where ONNX Runtime's fusions cross layer boundaries (ORT 1.32 CPU EP, all graph optimisations; seen in
`SessionOptions.optimized_model_filepath`), and how the single-op graphs follow them:
- int8: each layer's DQ(input) -> op -> Q(output) becomes one QLinearConv / QLinearGlobalAveragePool /
  QLinearMul... working channels-last, and between two such ops the uint8 tensor stays NHWC with no
  Transpose. A single-op graph therefore reads and writes uint8 NHWC (explicit Transposes to and from the
  ONNX NCHW, which ONNX Runtime cancels against its own layout change): in = the previous layer's Q output,
  out = this layer's Q output, the op alone in between.
- int8 project with a residual add: our QDQ graph keeps Conv -> Add in float (the add is done before the
  one requantization, as on our kernels), so ONNX Runtime runs it as an fp32 FusedConv (conv + add) in NCHW
  on dequantized input, with Transposes to and from NHWC and the skip dequantized: the single-op graph has the
  skip as a second uint8 NHWC input and so times the same nodes.
- fp32: Conv + activation and Conv + residual Add fuse into one conv, and convolutions run in MLAS's blocked
  NCHWc layout with reorders only around the SE multiply and before the head's Flatten. NCHWc cannot be a graph
  input, so a single-op graph pays a reorder in and out that a chain of convolutions does not; the fitted
  per-network overhead (its scale) absorbs that only on average, and ort-fp32 predicts less well than ort-int8.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from latency_models.kernel_runner import lowered_network
from latency_models.ops import OpKey
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import QDQWriter, to_onnx
from nas.kernels.executor import QuantizedLayer
from nas.kernels.quant import QParams
from nas.kernels.random_specs import spec_for_layer
from nas.timing import time_calls
from search_spaces import Arch

if TYPE_CHECKING:  # devices imports this module for its ORT devices
    from latency_models.devices import DeviceSpec

_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def session(path: str | os.PathLike | bytes, threads: int, optimized_path: str | None = None
            ) -> ort.InferenceSession:
    """An ONNX Runtime CPU session as users run one: all graph optimisations, `threads` intra-op threads, one
    inter-op thread, sequential execution (`optimized_path`: also write the optimised graph there)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the warning that an optimised graph written to disk is CPU-specific is expected
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _layer_name(op: OpKey) -> str:
    """The executor layer name that `QDQWriter.layer` writes `op` as (it decides residual and output handling)."""
    if op.op == "pw":
        return "blocks.0.project" if op.act == "none" else "blocks.0.expand"
    if op.op == "linear":
        return "classifier" if op.act == "none" else "hidden"
    return {"conv": "stem", "dw": "blocks.0.dw", "se": "blocks.0.se", "pool": "pool"}[op.op]


def op_model(op: OpKey, fp32: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """The ONNX graph of `op` alone, as `QDQWriter` writes that layer in a network, and its random inputs.

    int8: uint8 NHWC in and out (the previous and this layer's Q outputs; see the module docstring); fp32: float
    NCHW. A residual project also reads the block's input (`skip`)."""
    from onnx import TensorProto, helper

    name = _layer_name(op)
    spec, _ = spec_for_layer(op, 8, np.random.default_rng(0))
    # activation grids as calibration makes them: what ONNX Runtime fuses depends on them (a Clip or Relu before
    # a Q with zero point 0 is dropped, so the conv becomes a QLinearConv; with another zero point it stays float)
    nonneg = (0.0, 6.0)  # after relu / relu6, a pool or gate of those
    signed = (-6.0, 6.0)
    ranges = {"in": nonneg, "skip": signed, "pool": nonneg, "blocks.0.out": signed, f"{name}.pre": (-8.0, 8.0),
              f"{name}.pool": nonneg, f"{name}.fc1": nonneg, f"{name}.fc2.pre": (-8.0, 8.0),
              name: nonneg if op.act in ("relu", "relu6") or op.op == "se" else signed}
    grids = {t: astuple(QParams.from_range(*r)) for t, r in ranges.items()}
    scales = {name: op.out_channels, f"{name}.fc1": op.hidden, f"{name}.fc2": op.in_channels}
    w = QDQWriter(grids, {n: np.full(c, 0.01) for n, c in scales.items()}, fp32)
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT if fp32 else TensorProto.UINT8
    inputs, feeds = [], {}

    def graph_input(input_name: str, channels: int, hw: int | None, grid: str) -> str:
        """A graph input of `channels` x `hw` x `hw` (or a vector when `hw` is None), read on `grid`."""
        nchw = [1, channels] if hw is None else [1, channels, hw, hw]
        shape = nchw if fp32 or hw is None else [1, hw, hw, channels]
        inputs.append(helper.make_tensor_value_info(input_name, elem, shape))
        feeds[input_name] = (rng.standard_normal(shape).astype(np.float32) if fp32
                             else rng.integers(0, 256, size=shape, dtype=np.uint8))
        if fp32:
            return input_name
        x = input_name
        if hw is not None:
            x = w.uniq(f"{input_name}.nchw")
            w.node("Transpose", [input_name], [x], perm=_TO_NCHW)
        return w.dequantize(x, grid)

    x = graph_input("x", op.in_channels, None if op.op == "linear" else op.in_hw, "in")
    skip = graph_input("skip", op.out_channels, op.out_hw, "skip") if op.residual else None
    y, _ = w.layer(QuantizedLayer(name, op.op, spec), op.act, x, "in", skip)
    out_hw = op.out_hw if op.op not in ("pool", "linear") else None
    out_c = op.out_channels
    if y == "logits" or fp32:
        out_elem, out_shape = TensorProto.FLOAT, [1, out_c] if out_hw is None else [1, out_c, out_hw, out_hw]
    else:  # end at this layer's uint8 output: its DQ belongs to the next layer's fusion
        q = w.quantized[y]
        w.nodes = [n for n in w.nodes if y not in n.output]
        y, out_elem, out_shape = q, TensorProto.UINT8, [1, out_c]
        if out_hw is not None:
            y = w.uniq("y.nhwc")
            w.node("Transpose", [q], [y], perm=_TO_NHWC)
            out_shape = [1, out_hw, out_hw, out_c]
    return w.model(inputs, [helper.make_tensor_value_info(y, out_elem, out_shape)]), feeds


def time_ort_op(op: OpKey, spec: DeviceSpec, reps: int) -> list[float]:
    """Per-run times (ms) of `op` alone under ONNX Runtime (`op_model`)."""
    model, feeds = op_model(op, spec.bits == 32)
    sess = session(model.SerializeToString(), spec.threads)
    return time_calls(lambda: sess.run(None, feeds), reps=reps, warmup=5, min_sample_s=0)


def network_model(arch: Arch, fp32: bool, path: str | os.PathLike) -> str:
    """Write the whole network of `arch` as finalize exports it (`to_onnx` of the lowered network) to `path`."""
    lowered = lowered_network(arch, 8)
    qmodel = QuantizedModel(lowered.network, arch, lowered.act_qparams, lowered.weight_scales)
    return to_onnx(qmodel, path, fp32=fp32)


def prepare_ort_network(arch: Arch, spec: DeviceSpec) -> Callable[[], object]:
    """A zero-argument call running the whole network of `arch` once under ONNX Runtime (session built up front)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(network_model(arch, spec.bits == 32, os.path.join(tmp, "model.onnx")), spec.threads)
    x = np.random.default_rng(0).standard_normal((1, arch.in_channels, arch.resolution, arch.resolution),
                                                 dtype=np.float32)
    return lambda: sess.run(None, {"x": x})
