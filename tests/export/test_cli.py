import json

import numpy as np
import torch
from torch import nn

import search_spaces as ss
from nas.cli import main
from nas.export.pipeline import load_fp32, save_fp32

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_re6:head_c64_re6")


def _fp32_dir(tmp_path):
    torch.manual_seed(0)
    m = ss.build(ARCH).eval()
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.3)
    return save_fp32(m, ARCH, tmp_path / "run"), m


def test_fp32_format_roundtrip(tmp_path):
    d, m = _fp32_dir(tmp_path)
    back, arch = load_fp32(d)
    assert arch == ARCH
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))
    (tmp_path / "run" / "best.json").write_text(json.dumps({"arch": str(ARCH)}))
    (tmp_path / "run" / "arch.json").unlink()
    assert load_fp32(d)[1] == ARCH  # a search run directory: best.json names the arch


def test_export_eval_bench(tmp_path, capsys):
    d, _ = _fp32_dir(tmp_path)
    out = tmp_path / "final"
    assert main(["export", d, "--data", "digits", "--out", str(out), "--calibration", "minmax",
                 "--onnx-weights", "uint8"]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and "checkpoint" in text and "(uint8 weights)" in text
    report = json.loads((out / "finalize.json").read_text())
    assert report["onnx_agreement"] >= 0.99 and report["onnx_weights"] == "uint8"
    import onnx

    types = {t.data_type for t in onnx.load(str(out / "int8" / "model.onnx")).graph.initializer if ".wq" in t.name}
    assert types == {onnx.TensorProto.UINT8}
    lat = report["latency_ms"]  # round-robin lowest 10th percentile, and the median of one run beside it
    assert 0 < lat["int8_measured"] < float("inf") and 0 < lat["int8_measured_median"] < float("inf")
    assert "round-robin" in report["latency_unit_note"]
    ck = str(out / "int8")
    # the class names are recorded, so data of as many classes that mean something else is refused
    assert json.loads((out / "int8" / "metadata.json").read_text())["class_names"] == [str(i) for i in range(10)]
    from nas.data import load_digits

    digits = load_digits()
    other = tmp_path / "letters.npz"
    np.savez(other, x=digits.x, y=digits.y, class_names=np.array(list("abcdefghij")))
    assert main(["eval", ck, "--data", str(other)]) == 2
    assert "class 0 is 'a' in the data but '0' in the checkpoint's class_names" in capsys.readouterr().err
    assert main(["eval", ck, "--onnx", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top1"] == report["accuracy"]["int8_test"] == res["recorded"]["quant_test"]
    assert res["onnx_agreement"] >= 0.99
    assert main(["bench", ck, "--reps", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kernels"]["median_ms"] > 0 and res["predicted_ms"] == report["latency_ms"]["int8_predicted"]
    (out / "int8" / "weights.safetensors").write_bytes(b"\0" * 10)
    assert main(["eval", ck]) == 2
    assert "weights.safetensors" in capsys.readouterr().err


def _checkpoint(tmp_path):
    """A quantized ARCH checkpoint recorded as trained on digits (no training: only its shape matters here)."""
    from nas.compress.quantize import QuantConfig, quantize_model
    from nas.export import save

    torch.manual_seed(0)
    q, _ = quantize_model(ss.build(ARCH).eval(), QuantConfig(calibration="minmax"),
                          calib=torch.randn(32, 1, 16, 16))
    return save(q, tmp_path / "ck", dataset="digits@split0")


def _npz(path, channels: int, labels: np.ndarray):
    from nas.data import load_digits

    x = load_digits().x[: len(labels)]
    np.savez(path, x=np.repeat(x, channels, axis=1), y=labels)
    return str(path)


def test_eval_refuses_data_that_does_not_match_the_checkpoint(tmp_path, capsys):
    """A 10-class network was scored on 11-class data without a word; RGB data failed inside the kernels."""
    ck = _checkpoint(tmp_path)
    labels = np.arange(300) % 10
    cases = [
        (_npz(tmp_path / "rgb.npz", 3, labels), "the data has 10 classes and 3-channel 8x8 images, the network "
         "predicts 10 classes from 1-channel 16x16 input; images are resized from 8x8"),
        (_npz(tmp_path / "c11.npz", 1, np.arange(300) % 11), "the data has 11 classes and 1-channel 8x8 images"),
    ]
    for data, fragment in cases:
        assert main(["eval", ck, "--data", data]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nas eval: error: --data {data} does not match checkpoint {ck}: {fragment}")
        assert err.count("\n") == 1
    assert main(["eval", ck, "--data", _npz(tmp_path / "ok.npz", 1, labels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 30


def test_eval_refuses_unsplittable_data_and_incomplete_metadata(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    tiny = _npz(tmp_path / "tiny.npz", 1, np.arange(3))
    assert main(["eval", ck, "--data", tiny]) == 2  # used to print "top-1 nan" on an empty test split and exit 0
    assert capsys.readouterr().err.startswith(f"nas eval: error: {tiny}: cannot split 3 images")
    meta = json.loads((tmp_path / "ck" / "metadata.json").read_text())
    del meta["files"]
    (tmp_path / "ck" / "metadata.json").write_text(json.dumps(meta))
    assert main(["eval", ck]) == 2
    assert capsys.readouterr().err == (f"nas eval: error: {tmp_path / 'ck' / 'metadata.json'}: missing entry 'files' "
                                       "(not a complete nas checkpoint)\n")
