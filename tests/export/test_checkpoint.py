import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from nas.compress.quantize import QuantConfig, quantize_model
from nas.data import Dataset, Splits, TensorSplits, split
from nas.export import FORMAT_VERSION, CheckpointError, load, run_onnx, save, to_onnx
from nas.export.checkpoint import pack_int4, unpack_int4
from nas.export.model import DataMismatchError
from nas.export.onnx_qdq import weight_type

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_hs:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_hs,ir_k5_e6_c24_re6:"
                 "ir_k3_s2_e4_c32_se0.25_sw:head_c64_re6:fc_c32_hs")
X = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    m = ss.build(ARCH).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2)
            mod.bias.data.uniform_(-0.5, 0.5)
        elif isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.3)
    return {name: quantize_model(m, cfg, calib=X[:128])[0] for name, cfg in
            [("int8", QuantConfig()), ("w4", QuantConfig(weight_bits=4)),
             ("w4g", QuantConfig(weight_bits=4, group_size=8))]}


def test_int4_packing_roundtrip():
    q = np.arange(-8, 8, dtype=np.int8).repeat(3)[:47].reshape(47)  # odd length
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.size == 24
    assert np.array_equal(unpack_int4(packed, q.shape), q)


@pytest.mark.parametrize("name", ["int8", "w4", "w4g"])
def test_save_load_bit_identical(models, name, tmp_path):
    q = models[name]
    path = save(q, tmp_path / "ck", dataset="random")
    back = load(path)
    assert np.array_equal(back(X), q(X))
    assert back.arch == ARCH and back.metadata["dataset"] == "random"
    meta = json.loads((tmp_path / "ck" / "metadata.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["params"] == ss.count(ARCH).params
    assert set(meta["files"]) == {"arch.json", "network.json", "weights.safetensors"}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind


def test_int4_checkpoint_is_smaller(models, tmp_path):
    s8 = os.path.getsize(save(models["int8"], tmp_path / "a") + "/weights.safetensors")
    s4 = os.path.getsize(save(models["w4"], tmp_path / "b") + "/weights.safetensors")
    saved = models["int8"].weight_bytes - models["w4"].weight_bytes
    assert saved * 0.95 <= s8 - s4 <= saved * 1.2  # int4 packed two per byte (plus narrower int4 biases)


def test_corrupt_truncated_and_incompatible_checkpoints(models, tmp_path):
    path = tmp_path / "ck"
    save(models["int8"], path)
    w = path / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load(path)
    with pytest.raises(CheckpointError, match="weights.safetensors.*unreadable"):
        load(path, verify=False)
    save(models["int8"], path)
    (path / "network.json").write_text("{\"layers\": [")
    with pytest.raises(CheckpointError, match="network.json"):
        load(path)
    with pytest.raises(CheckpointError, match="network.json.*corrupt or truncated"):
        load(path, verify=False)
    save(models["int8"], path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["format_version"] = "2.0"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="incompatible"):
        load(path)
    save(models["int8"], path)
    os.remove(path / "arch.json")
    with pytest.raises(CheckpointError, match="arch.json.*missing"):
        load(path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="directory"):
        load(path / "metadata.json")


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.pop("files"), "missing entry 'files'"),
    (lambda m: m.pop("format"), "missing entry 'format'"),
    (lambda m: m.pop("format_version"), "missing entry 'format_version'"),
    (lambda m: m.update(files=["arch.json"]), "entry 'files' must map each file to its SHA-256, got list"),
    (lambda m: m["files"].pop("network.json"), "entry 'files' has no SHA-256 for 'network.json'"),
])
def test_metadata_without_a_required_entry_names_metadata_json(models, tmp_path, edit, fragment):
    """Without `files`, load blamed arch.json ('content does not match its hash'); a list crashed it."""
    path = tmp_path / "ck"
    save(models["int8"], path)
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    (path / "metadata.json").write_text(json.dumps(meta))
    for verify in (True, False):
        with pytest.raises(CheckpointError) as info:
            load(path, verify=verify)
        msg = str(info.value)
        assert msg.startswith(f"{path / 'metadata.json'}: ") and fragment in msg and "\n" not in msg


def test_failed_write_keeps_the_old_checkpoint(models, tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save(models["int8"], path)
    before = load(path)(X[:8])
    import safetensors.numpy

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(models["w4"], path)
    assert np.array_equal(load(path)(X[:8]), before)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


@pytest.mark.parametrize("name", ["int8", "w4g"])
def test_onnx_qdq_agrees_with_the_kernels(models, name, tmp_path):
    q = models[name]
    path = to_onnx(q, str(tmp_path / "m.onnx"))
    import onnx

    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    got, want = run_onnx(path, X.numpy()), q(X)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()



@pytest.mark.parametrize("weights, dtype, zp", [("uint8", np.uint8, 128), ("int8", np.int8, 0)])
def test_onnx_weights_are_the_kernels_values_in_the_type_asked(models, tmp_path, weights, dtype, zp):
    """uint8 weights (zero point 128) run on ONNX Runtime's u8 x u8 kernels, exact on every CPU; int8 ones on its
    u8 x s8 kernels, which on CPUs without VNNI clip pair sums to int16 (7 of 179 test predictions changed on an
    AVX2 machine) and with VNNI are exact and faster. Both hold the same numbers."""
    import onnx
    from onnx import numpy_helper

    q = models["int8"]
    path = to_onnx(q, str(tmp_path / "m.onnx"), weights=weights)
    graph = onnx.load(path).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    deq = [n for n in graph.node if n.op_type == "DequantizeLinear" and ".wq" in n.input[0]]
    assert len(deq) == sum(".wq" in name for name in arrays) > 0
    for n in deq:
        assert arrays[n.input[0]].dtype == dtype and arrays[n.input[2]].dtype == dtype
        assert np.all(arrays[n.input[2]] == zp)
    stem = q.network.layers[0].spec  # int8 [Cout, k, k, Cin]; ONNX: [Cout, Cin, k, k]
    first = arrays[deq[0].input[0]].astype(np.int16) - zp
    assert np.array_equal(first, stem.weight.transpose(0, 3, 1, 2))
    if weights == "int8" and weight_type("auto") == "uint8":
        return  # a CPU without VNNI: ONNX Runtime's u8 x s8 kernels may saturate (what uint8 weights avoid)
    x = torch.cat([X[:50], torch.full((50, 1, 16, 16), 50.0)])  # beyond the calibrated range: inputs at 255
    got, want = run_onnx(path, x.numpy()), q(x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    if weights == "int8":  # exact integer GEMMs both: the same logits bit for bit as the uint8 graph
        other = to_onnx(q, str(tmp_path / "u8.onnx"), weights="uint8")
        assert np.array_equal(got, run_onnx(other, x.numpy()))


def test_onnx_weight_type_auto_follows_the_cpus_vnni(monkeypatch):
    import nas.cpuinfo as cpuinfo

    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert weight_type("auto") == "int8" and weight_type("uint8") == "uint8"
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: {"avx2", "avx_vnni"})  # 256-bit VNNI (Alder Lake and later)
    assert weight_type("auto") == "int8"
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})  # Skylake: no VNNI
    assert weight_type("auto") == "uint8" and weight_type("int8") == "int8"
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: set())  # unreadable /proc/cpuinfo, other architectures
    assert weight_type("auto") == "uint8"
    with pytest.raises(ValueError, match=r"^onnx weights: expected one of \['auto', 'int8', 'uint8'\], got 'int4'"):
        weight_type("int4")


def test_import_nas_is_light_and_nas_export_loads(models, tmp_path):
    import subprocess

    path = save(models["int8"], tmp_path / "ck")
    code = ("import sys, nas; assert 'torch' not in sys.modules; from nas.export import load; m = load(sys.argv[1]); "
            "import numpy as np; print(m.predict(np.zeros((2, 1, 16, 16), np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(2,)"


def _data(n: int, channels: int, classes: int, size: int = 16) -> Splits:
    """`n` random images in `classes` balanced classes, split (the network only has to run on them)."""
    x = np.random.default_rng(0).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    y = np.arange(n) % classes
    return split(Dataset("rand", x, y, classes, tuple(map(str, range(classes))), "rand.npz"), seed=0)


def test_evaluate_scores_matching_data_like_accuracy(models, tmp_path):
    model = load(save(models["int8"], tmp_path / "ck"))
    data = _data(200, 1, 10)
    ev = model.evaluate(data, "val", where="--data rand.npz")
    x, y = TensorSplits(data).tensors("val", ARCH.resolution)
    assert ev.n == len(y) == 20 and ev.top1 == model.accuracy(x, y)
    assert np.array_equal(ev.pred, model.predict(x)) and np.array_equal(ev.y, y.numpy()) and ev.also_pred is None
    # another runtime's logits on the same batches: here the kernels themselves, so it agrees everywhere
    both = model.evaluate(data, "val", also=model)
    assert np.array_equal(both.also_pred, ev.pred)


@pytest.mark.parametrize("channels, classes, size, fragment", [
    (1, 11, 16, "the data has 11 classes and 1-channel 16x16 images, the network predicts 10 classes from "
                "1-channel 16x16 input"),
    (3, 10, 32, "the data has 10 classes and 3-channel 32x32 images, the network predicts 10 classes from "
                "1-channel 16x16 input; images are resized from 32x32"),
])
def test_evaluate_refuses_data_the_network_was_not_built_for(models, tmp_path, channels, classes, size, fragment):
    """11-class data was scored by a 10-class network without a word; 3 channels failed inside the kernels."""
    path = save(models["int8"], tmp_path / "ck")
    with pytest.raises(DataMismatchError) as info:
        load(path).evaluate(_data(220, channels, classes, size), where="--data rand.npz")
    assert str(info.value) == f"--data rand.npz does not match checkpoint {path}: {fragment}"
    with pytest.raises(DataMismatchError, match="checkpoint with arch r16_i1_n10"):  # in memory: no path to name
        models["int8"].check_data(_data(220, channels, classes, size))


def test_evaluate_checks_recorded_class_names(models, tmp_path):
    path = save(models["int8"], tmp_path / "ck", class_names=list("abcdefghij"))
    with pytest.raises(DataMismatchError, match=re.escape(
            f"--data rand.npz does not match checkpoint {path}: class 0 is '0' in the data but 'a' in the "
            "checkpoint's class_names")):
        load(path).evaluate(_data(200, 1, 10), where="--data rand.npz")
    path = save(models["int8"], tmp_path / "ck", class_names=[str(i) for i in range(10)])
    assert load(path).evaluate(_data(200, 1, 10)).n == 20


def test_accuracy_of_no_images_is_refused_not_nan(models):
    with pytest.raises(ValueError, match="no images"):
        models["int8"].accuracy(X[:0], np.zeros(0, np.int64))
