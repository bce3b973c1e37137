"""The ONNX Runtime devices `ort-int8` / `ort-fp32`: specs, fingerprints, single-op graphs that are the whole
network's own nodes for that layer, timing, and the one-line refusals (no ONNX Runtime, another runtime's table)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from latency_models import DeviceSpec, LatencyTable, OpKey, Predictor, arch_ops, get_device, profile
from latency_models.kernel_runner import kernel_network, lowered_network
from latency_models.ort_runner import network_model, op_model, session
from nas.commands.profile import make_device_spec
from nas.data import Dataset, split
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import to_onnx
from nas.export.pipeline import FinalizeConfig, finalize
from nas.search.latency import latency_predictor
from nas.search.plan import LatencyPlan
from search_spaces import build, decode

pytestmark = pytest.mark.usefixtures("one_thread")

# every executor layer kind: stem, expand (hard-swish: a lookup-table activation), dw, SE, project with and
# without the residual add, head, pool, hidden linear, classifier
ARCH = decode("r16_i3_n10:stem_c8_s2_re6:ir_k3_e3_c8_se0.25_hs:ir_k5_s2_e4_c16_re6:head_c32_hs:fc_c16_hs")
OPS = {
    "conv": OpKey("conv", 16, 8, 3, 8, 3, 2, "relu6", False, 0),
    "pw": OpKey("pw", 8, 8, 8, 24, 1, 1, "relu6", False, 0),
    "dw": OpKey("dw", 8, 4, 24, 24, 5, 2, "relu6", False, 0),
    "se": OpKey("se", 8, 8, 24, 24, 1, 1, "relu", False, 8),
    "pool": OpKey("pool", 4, 1, 32, 32, 1, 1, "none", False, 0),
    "linear": OpKey("linear", 1, 1, 32, 10, 1, 1, "none", False, 0),
    "residual": OpKey("pw", 8, 8, 24, 8, 1, 1, "none", True, 0),
}


def test_specs_parse_and_refuse_other_bit_widths() -> None:
    int8, fp32 = DeviceSpec.make("ort-int8"), DeviceSpec.make("ort-fp32-t2")
    assert (int8.name, int8.bits, int8.threads, int8.table_id) == ("ort-int8", 8, 1, "ort-int8")
    assert (fp32.name, fp32.bits, fp32.threads, fp32.table_id) == ("ort-fp32", 32, 2, "ort-fp32-t2")
    assert DeviceSpec.make(int8.table_id) == int8 and DeviceSpec.make(fp32.table_id) == fp32
    with pytest.raises(ValueError, match=r"^--bits: device 'ort-int8' supports \[8\], got 4$"):
        make_device_spec("ort-int8", bits=4)
    with pytest.raises(ValueError, match=r"^bits: device 'ort-fp32' supports \[32\], got 8$"):
        DeviceSpec.make("ort-fp32-int8")
    with pytest.raises(ValueError, match=r"^isa: only the 'kernels' device"):
        DeviceSpec.make("ort-int8-avx2")


def test_fingerprint_names_onnx_runtime_and_differs_from_kernels(tmp_path: Path) -> None:
    import onnxruntime as ort

    fp = get_device("ort-int8").fingerprint()
    assert (fp["library"], fp["library_version"], fp["device"], fp["bits"]) == ("onnxruntime", ort.__version__,
                                                                                "ort-int8", 8)
    assert "CPUExecutionProvider" in fp["build_hash"] and fp["isa"].startswith("cpu-ep-")
    kernels = LatencyTable.empty(get_device("kernels").fingerprint())
    diffs = " ".join(kernels.fingerprint_diffs(fp))
    assert all(f"{k}:" in diffs for k in ("device", "library", "library_version", "build_hash", "isa"))
    assert get_device("ort-fp32").fingerprint()["bits"] == 32
    # a table of the graphs exported before the residual add was int8 (no `graph` field) is another device's
    older = LatencyTable.empty({k: v for k, v in fp.items() if k != "graph"})
    assert [d.split(":")[0] for d in older.fingerprint_diffs(fp)] == ["graph"]


def test_fingerprint_names_the_weight_type_its_graphs_have(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 weights run on other ONNX Runtime kernels than uint8 ones (`nas.export.onnx_qdq.weight_type`): a table
    of the one is re-profiled on a machine that exports the other; ort-fp32 graphs have no quantized weights."""
    import nas.cpuinfo as cpuinfo

    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    vnni = get_device("ort-int8").fingerprint()
    fp32 = get_device("ort-fp32").fingerprint()["graph"]
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: {"avx2"})
    avx2 = get_device("ort-int8").fingerprint()
    assert vnni["graph"] == "nas-qdq/2+int8-weights" and avx2["graph"] == "nas-qdq/2"
    assert fp32 == get_device("ort-fp32").fingerprint()["graph"] == "nas-qdq/2"
    assert [d.split(":")[0] for d in LatencyTable.empty(avx2).fingerprint_diffs(vnni)] == ["isa", "graph"]


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_type_times_positive_on_int8(name: str) -> None:
    times = get_device("ort-int8").time_op(OPS[name], reps=3)
    assert len(times) == 3 and all(np.isfinite(t) and t > 0 for t in times)


@pytest.mark.parametrize("name", ["conv", "se", "residual", "linear"])
def test_ops_time_positive_on_fp32(name: str) -> None:
    assert all(t > 0 for t in get_device("ort-fp32").time_op(OPS[name], reps=3))


@pytest.mark.parametrize("device", ["ort-int8", "ort-fp32"])
def test_whole_network_runs_and_times(device: str) -> None:
    dev = get_device(device)
    (logits,) = dev.prepare_arch(ARCH)()
    assert logits.shape == (1, ARCH.num_classes) and np.isfinite(logits).all()
    assert all(t > 0 for t in dev.time_arch(ARCH, reps=3))


def _part(graph: onnx.GraphProto, output: str, stop: set[str]) -> Counter:
    """Op types of the nodes computing `output` back to the tensors in `stop` (or graph inputs / initializers)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[int] = set()
    types: Counter = Counter()
    todo = [output]
    while todo:
        t = todo.pop()
        n = producer.get(t)
        if n is None or (t in stop and t != output) or id(n) in seen:
            continue
        seen.add(id(n))
        types[n.op_type] += 1
        todo.extend(n.input)
    return types


def _out_tensor(name: str, residual: bool) -> str:
    """The grid a layer's output is quantized on (`QDQWriter.layer`)."""
    if name.endswith(".project") and residual:
        return name.removesuffix(".project") + ".out"
    return name


def test_single_op_graphs_are_the_networks_nodes_for_that_layer(tmp_path: Path) -> None:
    """Each layer's single-op graph holds the same nodes as the whole exported network between that layer's input
    and output Q (its own Q/DQ, weights, activation, SE gate, residual add), plus only the layout Transposes."""
    graph = onnx.load(network_model(ARCH, False, tmp_path / "net.onnx")).graph
    layers = kernel_network(ARCH).layers
    ops = arch_ops(ARCH)
    assert [layer.op for layer in layers] == [op.op for op in ops]
    q_of = {n.output[0].rsplit(".q_", 1)[0]: n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    outs = [_out_tensor(layer.name, op.residual) for layer, op in zip(layers, ops, strict=True)]
    stop = {q_of["input"]} | {q_of[t] for t in outs if t in q_of}
    for layer, op, out in zip(layers, ops, outs, strict=True):
        in_net = _part(graph, q_of.get(out, "logits"), stop)
        single, _ = op_model(op, fp32=False)
        in_op = _part(single.graph, single.graph.output[0].name, set())
        in_op.pop("Transpose", None)
        assert in_op == in_net, layer.name


def test_fp32_graphs_are_the_int8_ones_without_qdq() -> None:
    for op in OPS.values():
        qdq = Counter(n.op_type for n in op_model(op, fp32=False)[0].graph.node)
        fp32 = Counter(n.op_type for n in op_model(op, fp32=True)[0].graph.node)
        for t in ("QuantizeLinear", "DequantizeLinear", "Transpose"):
            qdq.pop(t, None)
        assert fp32 == qdq, op.describe()


@pytest.mark.parametrize(("name", "fused"), [("pw", ["QLinearConv"]), ("dw", ["QLinearConv"]),
                                             ("conv", ["QLinearConv"]), ("residual", ["QLinearConv", "QLinearAdd"]),
                                             ("linear", ["QGemm"])])
def test_int8_op_runs_as_onnx_runtimes_one_fused_kernel(name: str, fused: list[str], tmp_path: Path) -> None:
    """A conv layer is one channels-last QLinearConv in a network; its single-op graph must time exactly that
    (ONNX Runtime cancels the graph's NHWC Transposes against its own and drops the Clip before a zero-point-0 Q)."""
    model, feeds = op_model(OPS[name], fp32=False)
    session(model.SerializeToString(), 1, str(tmp_path / "opt.onnx")).run(None, feeds)
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert nodes == fused


def _optimized_ops(path: Path, tmp_path: Path) -> Counter:
    session(str(path), 1, str(tmp_path / "opt.onnx"))
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def test_exported_network_runs_int8_throughout_on_onnx_runtime(tmp_path: Path) -> None:
    """With the residual project's grid calibrated, ONNX Runtime runs every convolution of the export as
    QLinearConv, every linear layer as QGemm and the residual add as QLinearAdd; without it (an older checkpoint)
    the project conv and its add stay float (FusedConv) there, as the export documents."""
    lowered = lowered_network(ARCH, 8)
    model = QuantizedModel(lowered.network, ARCH, lowered.act_qparams, lowered.weight_scales)
    assert "blocks.0.project" in model.act_qparams  # the residual block's term before the add
    ops = _optimized_ops(Path(to_onnx(model, tmp_path / "int8.onnx")), tmp_path)
    # stem, 2 x (expand, dw, project), the SE block's two FCs, head; hidden and classifier linears as QGemm (their
    # int32 biases dequantized from int32: a float bias kept them fp32, weights dequantized on every run)
    assert ops["QLinearAdd"] == 1 and ops["QLinearConv"] == 10 and not ops["FusedConv"] and not ops["Conv"]
    assert ops["QGemm"] == 2 and not ops["Gemm"]
    old = {k: v for k, v in model.act_qparams.items() if k != "blocks.0.project"}
    ops = _optimized_ops(Path(to_onnx(QuantizedModel(model.network, ARCH, old, model.weight_scales),
                                      tmp_path / "old.onnx")), tmp_path)
    assert ops["FusedConv"] + ops["Conv"] == 1 and not ops["QLinearAdd"]


def test_missing_onnx_runtime_is_one_line_naming_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ValueError, match=r"^--device ort-int8: ONNX Runtime cannot be imported") as err:
        get_device("ort-int8")
    assert "\n" not in str(err.value)


def test_another_runtimes_table_is_refused_with_table(tmp_path: Path) -> None:
    path = tmp_path / "kernels.csv"
    profile(DeviceSpec.make("kernels"), [OPS["pw"]], path, reps=3, passes=1, progress=False, log=lambda s: None)
    plan = LatencyPlan(device="ort-int8", table=str(path), root=str(tmp_path))
    with pytest.raises(ValueError, match=r"^--table: .* was not measured on --device ort-int8 \(device: table "
                                         r"'kernels' vs here 'ort-int8'"):
        latency_predictor(plan, None, log=lambda s: None)


def test_profile_then_predict_round_trip(tmp_path: Path) -> None:
    spec = DeviceSpec.make("ort-int8")
    table = profile(spec, sorted(set(arch_ops(ARCH))), tmp_path / "ort-int8.csv", reps=5, passes=1,
                    progress=False, log=lambda s: None)
    again = LatencyTable.load(tmp_path / "ort-int8.csv", "ort-int8")
    assert again.fingerprint["library"] == "onnxruntime" and len(again.frame) == len(set(arch_ops(ARCH)))
    assert not again.fingerprint_diffs(get_device(spec).fingerprint())
    predicted = Predictor(table).predict_ms(ARCH)
    measured = float(np.median(get_device(spec).time_arch(ARCH, reps=10)))
    # no overhead fitted yet: each single-op time includes a session call (tens of us) that the network pays
    # once, so on this 12-op network the plain sum lies above the measurement, by less than 10x
    assert measured < predicted < 10 * measured


def test_finalize_measures_the_final_network_on_the_search_device(tmp_path: Path) -> None:
    """With the search's device ort-int8, finalize also times the final int8 network there (the device's own
    `prepare_arch`, in the kernels models' round-robin rounds)."""
    import torch

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (60, ARCH.in_channels, ARCH.resolution, ARCH.resolution), dtype=np.uint8)
    data = split(Dataset("rand", x, np.arange(60) % 10, 10, tuple(map(str, range(10))), "rand.npz"))
    torch.manual_seed(0)
    cfg = FinalizeConfig(measure_device="ort-int8", calib_size=16, onnx=False, bench_reps=2,
                         table_root=str(tmp_path))
    lat = finalize(build(ARCH).eval(), ARCH, data, cfg, tmp_path / "final").latency_ms
    assert lat["ort-int8_measured"] > 0 and lat["int8_measured"] > 0
    assert lat["ort-int8_predicted"] is None  # no ort-int8 table under the table root yet
    # with the search's ort-int8 table there, finalize also reports what it predicts for the final network
    profile(DeviceSpec.make("ort-int8"), arch_ops(ARCH), tmp_path / "latency" / "ort-int8.csv", reps=3, passes=1,
            progress=False, log=lambda line: None)
    lat = finalize(build(ARCH).eval(), ARCH, data, cfg, tmp_path / "final2").latency_ms
    assert lat["ort-int8_predicted"] > 0
