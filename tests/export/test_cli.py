import json

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
    assert main(["export", d, "--data", "digits", "--out", str(out), "--calibration", "minmax"]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and "checkpoint" in text
    report = json.loads((out / "finalize.json").read_text())
    assert report["onnx_agreement"] >= 0.99
    lat = report["latency_ms"]  # round-robin lowest 10th percentile, and the median of one run beside it
    assert 0 < lat["int8_measured"] < float("inf") and 0 < lat["int8_measured_median"] < float("inf")
    assert "round-robin" in report["latency_unit_note"]
    ck = str(out / "int8")
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
