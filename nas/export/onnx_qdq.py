"""ONNX export of a `QuantizedModel` in QDQ form (QuantizeLinear/DequantizeLinear around float ops).

Every tensor the kernel executor stores as uint8 gets a Q/DQ pair with the same scale and zero point. Weights are
integer initializers (the int8 and int4 values) dequantized per output channel; biases are the kernels' int32
values dequantized on the accumulator grid (a float bias kept ONNX Runtime's Gemm in fp32, dequantizing its
weights on every run). ONNX Runtime fuses the pairs into its own int8 kernels (QLinearConv, QGemm, QLinearAdd, ...).

Weights are int8 (zero point 0) or uint8 (zero point 128: the same numbers), `weights=`; ONNX Runtime picks its
kernels by that type. int8: its u8 x s8 kernels, exact on CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX: 32-bit dot
products) and 1.6-2.6x faster there than u8 x u8 (benchmarks/RESULTS_finalize.md), but
on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) they add pairs of products in saturating 16-bit
arithmetic (VPMADDUBSW; ONNX Runtime's quantization guide names it), which changed a searched network's
predictions on an AVX2 machine. uint8: its u8 x u8 kernels, exact everywhere. `auto` (the default) takes int8 where
this machine's CPU has VNNI and uint8 elsewhere: an export for another CPU should name the type.
Weights with int4 group sub-scales are exported pre-dequantized (float), since per-group DequantizeLinear needs a
newer opset than ORT fuses.

Residual adds: our kernels add a block's input to its project output before they round, once. ONNX Runtime fuses
an add into int8 (QLinearConv + QLinearAdd) only when both terms are quantized, so a residual project's output gets
a Q/DQ pair of its own when the model has a grid for it (`blocks.i.project`, calibrated beside `blocks.i.out`
since 2026-12-07). Without one (older checkpoints) the conv and the add stay float in ONNX Runtime (`FusedConv`
with weights dequantized on every run) and round once, like our kernels. Results differ from our executor where
ONNX Runtime's float requantization rounds differently from our fixed-point multipliers, and by that one extra
rounding per residual block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from nas import cpuinfo
from nas.export.model import QuantizedModel
from nas.io import write_atomic
from nas.kernels.executor import QuantizedLayer
from nas.kernels.ops import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, SESpec, Spec
from search_spaces import Arch

OPSET = 17
# What an exported graph holds, for the latency tables of ONNX Runtime devices (their fingerprint's `graph`): 2 =
# int32 biases and a residual add with both terms quantized (ONNX Runtime's QGemm, QLinearAdd); tables of other
# graphs are re-profiled.
GRAPH_FORMAT = "nas-qdq/2"
WEIGHT_TYPES = ("auto", "int8", "uint8")
# /proc/cpuinfo flags under which ONNX Runtime's u8 x s8 kernels use VNNI dot products (no 16-bit saturation)
EXACT_S8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def weight_type(weights: str = "auto") -> str:
    """The ONNX weight type `weights` (`WEIGHT_TYPES`) names on this machine: `auto` is int8 where this CPU has
    VNNI (ONNX Runtime's u8 x s8 kernels are exact and fastest there), else uint8 (see the module docstring)."""
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"onnx weights: expected one of {list(WEIGHT_TYPES)}, got {weights!r}")
    if weights != "auto":
        return weights
    return "int8" if cpuinfo.cpu_flags() & set(EXACT_S8_FLAGS) else "uint8"


def graph_format(weights: str) -> str:
    """The `graph` fingerprint of ONNX Runtime latency tables timed on graphs with `weights` (int8 or uint8)."""
    return GRAPH_FORMAT if weights == "uint8" else f"{GRAPH_FORMAT}+{weights}-weights"


class QDQWriter:
    """The ONNX nodes of executor layers, each written as it appears in a whole network: `to_onnx` writes networks
    with it, `latency_models.ort_runner` single layers (so that a profiled op is the network's own nodes).

    `act_qparams` and `weight_scales` are the float grid (`QuantizedModel`'s). With `fp32` the same float ops are
    written without Q/DQ pairs, weights as float initializers (their dequantized values): the float network with
    batch norm folded, as ONNX Runtime's fp32 latency device runs it. `weights`: the type of quantized weights
    (`weight_type`).
    """

    def __init__(self, act_qparams: dict[str, tuple[float, int]], weight_scales: dict[str, np.ndarray],
                 fp32: bool = False, weights: str = "auto"):
        self.acts, self.wsc, self.fp32 = act_qparams, weight_scales, fp32
        self.weights = weight_type(weights)
        self.nodes: list = []
        self.inits: list = []
        self.quantized: dict[str, str] = {}  # dequantized tensor name -> the uint8 tensor it was dequantized from
        self._count = 0

    def uniq(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def _grid(self, tensor: str) -> tuple[str, str]:
        scale, zp = self.acts[tensor]
        return (self.const(self.uniq(f"{tensor}.scale"), np.array(scale, dtype=np.float32)),
                self.const(self.uniq(f"{tensor}.zp"), np.array(zp, dtype=np.uint8)))

    def qdq(self, x: str, tensor: str) -> str:
        """`x` rounded to the uint8 grid of `tensor` (Q then DQ); unchanged in fp32."""
        if self.fp32:
            return x
        s, z = self._grid(tensor)
        q, d = self.uniq(f"{tensor}.q"), self.uniq(tensor)
        self.node("QuantizeLinear", [x, s, z], [q])
        self.node("DequantizeLinear", [q, s, z], [d])
        self.quantized[d] = q
        return d

    def dequantize(self, q: str, tensor: str) -> str:
        """A uint8 tensor `q` (a graph input) read on the grid of `tensor`."""
        s, z = self._grid(tensor)
        d = self.uniq(tensor)
        self.node("DequantizeLinear", [q, s, z], [d])
        self.quantized[d] = q
        return d

    def weight(self, layer: str, w: np.ndarray, scale: np.ndarray, subs: np.ndarray | None, group: int) -> str:
        """Dequantized weight (shape of `w`, output channels first)."""
        if subs is not None:
            w2 = w.reshape(w.shape[0], -1).astype(np.float64)
            g = np.repeat(subs, group, axis=1)[:, : w2.shape[1]]
            return self.const(self.uniq(f"{layer}.w"), (w2 * g * scale[:, None]).reshape(w.shape).astype(np.float32))
        if self.fp32:
            per_channel = scale.reshape(-1, *[1] * (w.ndim - 1)).astype(np.float64)
            return self.const(self.uniq(f"{layer}.w"), (w * per_channel).astype(np.float32))
        # uint8 with zero point 128 is the same value as int8 with zero point 0 (see the module docstring)
        zp, dtype = (128, np.uint8) if self.weights == "uint8" else (0, np.int8)
        wq = self.const(self.uniq(f"{layer}.wq"), (w.astype(np.int16) + zp).astype(dtype))
        s = self.const(self.uniq(f"{layer}.ws"), scale.astype(np.float32))
        z = self.const(self.uniq(f"{layer}.wz"), np.full(len(scale), zp, dtype=dtype))
        out = self.uniq(f"{layer}.w")
        self.node("DequantizeLinear", [wq, s, z], [out], axis=0)
        return out

    def bias(self, layer: str, b: np.ndarray, in_tensor: str, scale: np.ndarray) -> str:
        """The layer's int32 bias on the accumulator grid (input scale x weight scale): dequantized from int32, the
        pattern ONNX Runtime folds into QLinearConv / QGemm (a float bias keeps a Gemm in fp32, its weights
        dequantized on every run); in fp32 the same values as float."""
        if self.fp32:
            return self.const(self.uniq(f"{layer}.b"),
                              (b.astype(np.float64) * self.acts[in_tensor][0] * scale).astype(np.float32))
        acc_scale = (self.acts[in_tensor][0] * np.asarray(scale, dtype=np.float64)).astype(np.float32)
        bq = self.const(self.uniq(f"{layer}.bq"), np.asarray(b, dtype=np.int32))
        s = self.const(self.uniq(f"{layer}.bs"), acc_scale)
        z = self.const(self.uniq(f"{layer}.bz"), np.zeros(len(acc_scale), dtype=np.int32))
        out = self.uniq(f"{layer}.b")
        self.node("DequantizeLinear", [bq, s, z], [out], axis=0)
        return out

    def activation(self, x: str, act: str, name: str, lut: bool) -> str:
        if lut:
            x = self.qdq(x, name + ".pre")
        y = self.uniq(f"{name}.{act}")
        if act == "relu":
            self.node("Relu", [x], [y])
        elif act == "relu6":
            self.node("Clip", [x, self.const(self.uniq("zero"), np.array(0, np.float32)),
                               self.const(self.uniq("six"), np.array(6, np.float32))], [y])
        elif act == "hswish":
            self.node("HardSwish", [x], [y])
        elif act == "swish":
            sig = self.uniq(f"{name}.sigmoid")
            self.node("Sigmoid", [x], [sig])
            self.node("Mul", [x, sig], [y])
        elif act == "hsigmoid":
            self.node("HardSigmoid", [x], [y], alpha=1.0 / 6.0, beta=0.5)
        else:
            return x
        return y

    def conv(self, x: str, in_t: str, layer: str, w: np.ndarray, spec: Spec, k: int, stride: int,
             groups: int) -> str:
        subs = getattr(spec, "sub_scales", None)
        wn = self.weight(layer, w, self.wsc[layer], subs, getattr(spec, "group_size", 0))
        y = self.uniq(f"{layer}.conv")
        self.node("Conv", [x, wn, self.bias(layer, spec.bias, in_t, self.wsc[layer])], [y],
                  kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        return y

    def layer(self, layer: QuantizedLayer, act: str, x: str, t: str, block_in: str | None) -> tuple[str, str]:
        """Write one executor layer reading tensor `x` (on the grid of `t`; `block_in`: the block's input, which a
        residual project adds); returns its output and the name of its grid. `act` is the layer's activation."""
        spec, name = layer.spec, layer.name
        lut = act in ("hswish", "swish")
        if isinstance(spec, ConvSpec):
            k = spec.weight.shape[1]
            y = self.conv(x, t, name, spec.weight.transpose(0, 3, 1, 2), spec, k, spec.stride, 1)
            return self.qdq(self.activation(y, act, name, lut), name), name
        if isinstance(spec, DepthwiseSpec):
            k = spec.weight.shape[1]
            y = self.conv(x, t, name, spec.weight[:, None], spec, k, spec.stride, spec.weight.shape[0])
            return self.qdq(self.activation(y, act, name, lut), name), name
        if isinstance(spec, SESpec):
            return self._se(x, spec, name), name
        if isinstance(spec, PoolSpec):
            p, f = self.uniq("pool"), self.uniq("flat")
            self.node("GlobalAveragePool", [x], [p])
            self.node("Flatten", [p], [f])
            return self.qdq(f, "pool"), "pool"
        if isinstance(spec, GemmSpec) and layer.op == "pw":
            y = self.conv(x, t, name, spec.weight[:, :, None, None], spec, 1, 1, 1)
            if name.endswith(".project"):
                if spec.residual is not None:
                    if name in self.acts:  # both terms of the add on uint8 grids: ONNX Runtime fuses QLinearAdd
                        y = self.qdq(y, name)
                    r = self.uniq(f"{name}.add")
                    self.node("Add", [block_in, y], [r])
                    out = name.removesuffix(".project") + ".out"
                    return self.qdq(r, out), out
                return self.qdq(y, name), name
            return self.qdq(self.activation(y, act, name, lut), name), name
        if isinstance(spec, GemmSpec):  # linear: hidden or classifier
            w = self.weight(name, spec.weight, self.wsc[name], spec.sub_scales, spec.group_size)
            y = "logits" if spec.out_int32 else self.uniq(name)
            self.node("Gemm", [x, w, self.bias(name, spec.bias, t, self.wsc[name])], [y], transB=1)
            if spec.out_int32:
                return y, t
            return self.qdq(self.activation(y, act, name, lut), name), name
        raise TypeError(f"onnx export: unsupported layer {name} ({type(spec).__name__})")

    def _se(self, x: str, spec: SESpec, name: str) -> str:
        """Pool -> fc1 + ReLU -> fc2 + hard-sigmoid -> gate (on the executor's gate grid) -> `x` * gate."""
        p = self.uniq(f"{name}.pool")
        self.node("GlobalAveragePool", [x], [p])
        p = self.qdq(p, f"{name}.pool")
        h = self.uniq(f"{name}.fc1")
        self.node("Conv", [p, self.weight(f"{name}.fc1", spec.fc1.weight[:, :, None, None], self.wsc[f"{name}.fc1"],
                                          None, 0),
                           self.bias(f"{name}.fc1", spec.fc1.bias, f"{name}.pool", self.wsc[f"{name}.fc1"])], [h])
        h = self.qdq(self.activation(h, "relu", f"{name}.fc1", False), f"{name}.fc1")
        g = self.uniq(f"{name}.fc2")
        self.node("Conv", [h, self.weight(f"{name}.fc2", spec.fc2.weight[:, :, None, None], self.wsc[f"{name}.fc2"],
                                          None, 0),
                           self.bias(f"{name}.fc2", spec.fc2.bias, f"{name}.fc1", self.wsc[f"{name}.fc2"])], [g])
        g = self.activation(g, "hsigmoid", f"{name}.fc2", True)
        if not self.fp32:
            gs = self.const(self.uniq("gate.scale"), np.array(1 / 255, np.float32))
            gz = self.const(self.uniq("gate.zp"), np.array(0, np.uint8))
            gq, gd = self.uniq("gate.q"), self.uniq("gate")
            self.node("QuantizeLinear", [g, gs, gz], [gq])
            self.node("DequantizeLinear", [gq, gs, gz], [gd])
            g = gd
        y = self.uniq(f"{name}.mul")
        self.node("Mul", [x, g], [y])
        return self.qdq(y, name)

    def model(self, inputs: list, outputs: list) -> Any:
        """The checked `onnx.ModelProto` of the nodes written so far between `inputs` and `outputs`
        (`onnx.helper.make_tensor_value_info` values)."""
        import onnx
        from onnx import helper

        graph = helper.make_graph(self.nodes, "nas_fp32" if self.fp32 else "nas_qdq", inputs, outputs, self.inits)
        onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                       producer_name="nas.export")
        onnx_model.ir_version = 8
        onnx.checker.check_model(onnx_model)
        return onnx_model


def layer_acts(arch: Arch) -> dict[str, str]:
    """The activation of every executor layer that has one (stem, expand, dw, head, hidden) by layer name."""
    acts = {"stem": arch.stem_act, "head": arch.head_act, "hidden": arch.head_act}
    for i, b in enumerate(arch.blocks()):
        acts[f"blocks.{i}.expand"] = acts[f"blocks.{i}.dw"] = b.act
    return acts


def to_onnx(model: QuantizedModel, path: str | os.PathLike, fp32: bool = False, weights: str = "auto") -> str:
    """Write `model` as an ONNX QDQ graph (input `x`: float NCHW, output `logits`) to `path`; `fp32`: the same
    graph without Q/DQ; `weights`: int8, uint8 or auto (see `QDQWriter`, `weight_type`)."""
    import onnx
    from onnx import TensorProto, helper

    a = model.arch
    w = QDQWriter(model.act_qparams, model.weight_scales, fp32, weights)
    acts = layer_acts(a)
    x, t = w.qdq("x", "input"), "input"
    block_in, current_block = None, None
    for layer in model.network.layers:
        parts = layer.name.split(".")
        if parts[0] == "blocks" and parts[1] != current_block:
            current_block, block_in = parts[1], x
        x, t = w.layer(layer, acts.get(layer.name, "none"), x, t, block_in)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", a.in_channels, a.resolution, a.resolution])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", a.num_classes])
    onnx_model = w.model([inp], [out])
    write_atomic(path, lambda tmp: onnx.save(onnx_model, tmp))
    return str(path)


def onnx_runner(path: str | os.PathLike, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float NCHW inputs to the logits of an exported model under ONNX Runtime (CPU, all graph
    optimisations); the session is built once, here."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(["logits"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def run_onnx(path: str | os.PathLike, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of an exported model under ONNX Runtime for `x` (one session for this call: `onnx_runner`)."""
    return onnx_runner(path, threads)(x)
