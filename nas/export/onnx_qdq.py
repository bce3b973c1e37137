"""ONNX export of a `QuantizedModel` in QDQ form (QuantizeLinear/DequantizeLinear around float ops).

Every tensor the kernel executor stores as uint8 gets a Q/DQ pair with the same scale and zero point; weights
are uint8 initializers with zero point 128 (int8 and int4 values plus 128: the same numbers) dequantized per output
channel; biases are float. ONNX Runtime fuses the pairs into its own int8 kernels. Unsigned weights matter: with
int8 weights ONNX Runtime picks its u8 x s8 kernels, which on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake)
add pairs of products in saturating 16-bit arithmetic (VPMADDUBSW; ONNX Runtime's quantization guide names it and
suggests U8U8), which changed a searched network's predictions on an AVX2 machine; with uint8 weights ORT agrees
(benchmarks/RESULTS_finalize.md). Results differ
from our executor only where ONNX Runtime's float requantization rounds differently from our fixed-point
multipliers. Weights with int4 group sub-scales are
exported pre-dequantized (float), since per-group DequantizeLinear needs a newer opset than ORT fuses.
"""

from __future__ import annotations

import os

import numpy as np

from nas.export.model import QuantizedModel
from nas.io import write_atomic
from nas.kernels.ops import ConvSpec, DepthwiseSpec, GemmSpec, PoolSpec, SESpec

OPSET = 17


def to_onnx(model: QuantizedModel, path: str | os.PathLike) -> str:
    """Write `model` as an ONNX QDQ graph (input `x`: float NCHW, output `logits`) to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a, net = model.arch, model.network
    acts, wsc = model.act_qparams, model.weight_scales
    nodes, inits = [], []
    counter = [0]

    def uniq(base: str) -> str:
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(x: str, tensor: str) -> str:
        scale, zp = acts[tensor]
        s = const(uniq(f"{tensor}.scale"), np.array(scale, dtype=np.float32))
        z = const(uniq(f"{tensor}.zp"), np.array(zp, dtype=np.uint8))
        q, d = uniq(f"{tensor}.q"), uniq(tensor)
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q]))
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [d]))
        return d

    def weight(layer: str, w: np.ndarray, scale: np.ndarray, subs: np.ndarray | None, group: int) -> str:
        """Dequantized weight (shape of `w`, output channels first)."""
        if subs is not None:
            w2 = w.reshape(w.shape[0], -1).astype(np.float64)
            g = np.repeat(subs, group, axis=1)[:, : w2.shape[1]]
            return const(uniq(f"{layer}.w"), (w2 * g * scale[:, None]).reshape(w.shape).astype(np.float32))
        # uint8 with zero point 128 is the same value as int8 with zero point 0, and keeps ONNX Runtime on its
        # u8 x u8 kernels: its u8 x s8 ones saturate 16-bit pair sums on CPUs without VNNI (see module docstring)
        wq = const(uniq(f"{layer}.wq"), (w.astype(np.int16) + 128).astype(np.uint8))
        s = const(uniq(f"{layer}.ws"), scale.astype(np.float32))
        z = const(uniq(f"{layer}.wz"), np.full(len(scale), 128, dtype=np.uint8))
        out = uniq(f"{layer}.w")
        nodes.append(helper.make_node("DequantizeLinear", [wq, s, z], [out], axis=0))
        return out

    def bias(layer: str, b: np.ndarray, in_tensor: str, scale: np.ndarray) -> str:
        return const(uniq(f"{layer}.b"), (b.astype(np.float64) * acts[in_tensor][0] * scale).astype(np.float32))

    def activation(x: str, act: str, name: str, lut: bool) -> str:
        if lut:
            x = qdq(x, name + ".pre")
        y = uniq(f"{name}.{act}")
        if act == "relu":
            nodes.append(helper.make_node("Relu", [x], [y]))
        elif act == "relu6":
            nodes.append(helper.make_node("Clip", [x, const(uniq("zero"), np.array(0, np.float32)),
                                                   const(uniq("six"), np.array(6, np.float32))], [y]))
        elif act == "hswish":
            nodes.append(helper.make_node("HardSwish", [x], [y]))
        elif act == "swish":
            sig = uniq(f"{name}.sigmoid")
            nodes.append(helper.make_node("Sigmoid", [x], [sig]))
            nodes.append(helper.make_node("Mul", [x, sig], [y]))
        elif act == "hsigmoid":
            nodes.append(helper.make_node("HardSigmoid", [x], [y], alpha=1.0 / 6.0, beta=0.5))
        else:
            return x
        return y

    def conv(x: str, in_t: str, layer: str, w: np.ndarray, spec, k: int, stride: int, groups: int) -> str:
        subs = getattr(spec, "sub_scales", None)
        wn = weight(layer, w, wsc[layer], subs, getattr(spec, "group_size", 0))
        y = uniq(f"{layer}.conv")
        nodes.append(helper.make_node("Conv", [x, wn, bias(layer, spec.bias, in_t, wsc[layer])], [y],
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                                      group=groups))
        return y

    acts_of = {"stem": a.stem_act, "head": a.head_act, "hidden": a.head_act}
    for i, b in enumerate(a.blocks()):
        acts_of[f"blocks.{i}.expand"] = acts_of[f"blocks.{i}.dw"] = b.act
    x = qdq("x", "input")
    t = "input"
    block_in: tuple[str, str] | None = None
    current_block = None
    for layer in net.layers:
        spec, name = layer.spec, layer.name
        parts = name.split(".")
        if parts[0] == "blocks" and parts[1] != current_block:
            current_block, block_in = parts[1], (x, t)
        if isinstance(spec, ConvSpec):
            k = spec.weight.shape[1]
            y = conv(x, t, name, spec.weight.transpose(0, 3, 1, 2), spec, k, spec.stride, 1)
            act = acts_of[name]
            x, t = qdq(activation(y, act, name, act in ("hswish", "swish")), name), name
        elif isinstance(spec, DepthwiseSpec):
            k = spec.weight.shape[1]
            y = conv(x, t, name, spec.weight[:, None], spec, k, spec.stride, spec.weight.shape[0])
            act = acts_of[name]
            x, t = qdq(activation(y, act, name, act in ("hswish", "swish")), name), name
        elif isinstance(spec, SESpec):
            p = uniq(f"{name}.pool")
            nodes.append(helper.make_node("GlobalAveragePool", [x], [p]))
            p = qdq(p, f"{name}.pool")
            w1 = spec.fc1.weight
            h = uniq(f"{name}.fc1")
            nodes.append(helper.make_node("Conv", [p, weight(f"{name}.fc1", w1[:, :, None, None], wsc[f"{name}.fc1"],
                                                             None, 0),
                                                   bias(f"{name}.fc1", spec.fc1.bias, f"{name}.pool",
                                                        wsc[f"{name}.fc1"])], [h]))
            h = qdq(activation(h, "relu", f"{name}.fc1", False), f"{name}.fc1")
            w2 = spec.fc2.weight
            g = uniq(f"{name}.fc2")
            nodes.append(helper.make_node("Conv", [h, weight(f"{name}.fc2", w2[:, :, None, None], wsc[f"{name}.fc2"],
                                                             None, 0),
                                                   bias(f"{name}.fc2", spec.fc2.bias, f"{name}.fc1",
                                                        wsc[f"{name}.fc2"])], [g]))
            g = activation(g, "hsigmoid", f"{name}.fc2", True)
            gs, gz = const(uniq("gate.scale"), np.array(1 / 255, np.float32)), const(uniq("gate.zp"),
                                                                                     np.array(0, np.uint8))
            gq, gd = uniq("gate.q"), uniq("gate")
            nodes.append(helper.make_node("QuantizeLinear", [g, gs, gz], [gq]))
            nodes.append(helper.make_node("DequantizeLinear", [gq, gs, gz], [gd]))
            y = uniq(f"{name}.mul")
            nodes.append(helper.make_node("Mul", [x, gd], [y]))
            x, t = qdq(y, name), name
        elif isinstance(spec, PoolSpec):
            p, f = uniq("pool"), uniq("flat")
            nodes.append(helper.make_node("GlobalAveragePool", [x], [p]))
            nodes.append(helper.make_node("Flatten", [p], [f]))
            x, t = qdq(f, "pool"), "pool"
        elif isinstance(spec, GemmSpec) and layer.op == "pw":
            y = conv(x, t, name, spec.weight[:, :, None, None], spec, 1, 1, 1)
            if name.endswith(".project"):
                if spec.residual is not None:
                    r = uniq(f"{name}.add")
                    nodes.append(helper.make_node("Add", [block_in[0], y], [r]))
                    out = name.removesuffix(".project") + ".out"
                    x, t = qdq(r, out), out
                else:
                    x, t = qdq(y, name), name
            else:
                act = acts_of[name]
                x, t = qdq(activation(y, act, name, act in ("hswish", "swish")), name), name
        elif isinstance(spec, GemmSpec):  # linear: hidden or classifier
            w = weight(name, spec.weight, wsc[name], spec.sub_scales, spec.group_size)
            y = "logits" if spec.out_int32 else uniq(name)
            nodes.append(helper.make_node("Gemm", [x, w, bias(name, spec.bias, t, wsc[name])], [y], transB=1))
            if not spec.out_int32:
                act = acts_of[name]
                x, t = qdq(activation(y, act, name, act in ("hswish", "swish")), name), name
        else:
            raise TypeError(f"onnx export: unsupported layer {name} ({type(spec).__name__})")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", a.in_channels, a.resolution, a.resolution])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", a.num_classes])
    graph = helper.make_graph(nodes, "nas_qdq", [inp], [out], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="nas.export")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    write_atomic(path, lambda tmp: onnx.save(onnx_model, tmp))
    return str(path)


def run_onnx(path: str | os.PathLike, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of an exported model under ONNX Runtime (CPU, all graph optimisations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
