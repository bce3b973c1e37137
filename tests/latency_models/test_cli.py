import json

import pandas as pd
import pytest

from latency_models import LatencyTable
from nas.cli import main


def test_predict_without_table_says_how_to_profile(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("NAS_RESULTS", str(tmp_path))
    assert main(["latency", "predict", "--device", "kernels", "--bits", "4", "mobilenetv2"]) == 2
    err = capsys.readouterr().err
    assert "no latency table at" in err and "nas profile --device kernels --bits 4" in err


def test_profile_dry_run_counts_imagenet_spaces(capsys) -> None:
    assert main(["profile", "--device", "torch-fp32", "--space", "mobilenetv2", "--space", "efficientnet",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2623 distinct ops in mobilenetv2, efficientnet" in out and "estimated" in out


def test_profile_then_validate_small_subset(tmp_path, capsys) -> None:
    table = tmp_path / "fp32.parquet"
    args = ["profile", "--device", "torch-fp32", "--space", "mobilenetv3", "--resolution", "160", "--budget",
            "0.2MFLOPs", "--reps", "3", "--out", str(table), "--no-progress"]
    assert main(args) == 0
    t = LatencyTable.load(table)
    assert 0 < len(t) and (t.frame.macs <= 200_000).all() and t.fingerprint["device"] == "torch-fp32"
    assert main(args) == 0 and "0 to measure" in capsys.readouterr().out  # resumed: nothing left

    out = tmp_path / "val"
    validate = ["latency", "validate", "--device", "torch-fp32", "--table", str(table), "--space", "small32",
                "--samples", "4", "--fit-samples", "8", "--reps", "3", "--passes", "1", "--out", str(out),
                "--no-progress"]
    before = table.with_suffix(".json").read_bytes()
    assert main(validate) == 0
    text = capsys.readouterr().out
    assert "within +-10%" in text and "FLOPs baseline" in text and "for this validation only" in text
    assert table.with_suffix(".json").read_bytes() == before  # validating never changes the table it reads
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and 0 <= summary["within_10"] <= 100 and not summary["overhead_stored_in_table"]
    assert summary["repeat_within_5"] is None  # one pass: no second measurement to compare with
    assert (out / "predicted_vs_measured.png").stat().st_size > 1000
    validated = set(pd.read_csv(out / "validation.csv")["hash"])
    assert len(summary["fit_archs"]) == 8 and not validated & set(summary["fit_archs"])  # no train/test leakage

    # refitting is explicit (`nas latency fit`), refuses too few networks, and validate then uses what it stored
    fit = ["latency", "fit", "--device", "torch-fp32", "--table", str(table), "--space", "small32", "--reps", "3",
           "--passes", "1", "--no-progress"]
    with pytest.raises(SystemExit, match="2"):
        main([*fit, "--fit-samples", "2"])
    assert "--fit-samples: expected an integer of at least 8" in capsys.readouterr().err
    assert table.with_suffix(".json").read_bytes() == before
    assert main([*fit, "--fit-samples", "8"]) == 0
    stored = json.loads(table.with_suffix(".json").read_text())["overhead"]
    assert stored["space"] == "small32" and len(stored["archs"]) == 8
    after_fit = table.with_suffix(".json").read_bytes()
    assert main(validate) == 0 and "stored in the table" in capsys.readouterr().out
    assert table.with_suffix(".json").read_bytes() == after_fit
    assert json.loads((out / "summary.json").read_text())["overhead_stored_in_table"]
    # a validation of another space fits its own overhead in memory and leaves the stored one alone
    assert main([*validate[:7], "small32-v3", *validate[8:]]) == 0
    assert table.with_suffix(".json").read_bytes() == after_fit


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    assert main(["profile", "--device", "torch-fp32", "--isa", "avx2", "--dry-run"]) == 2
    assert "only the 'kernels' device takes a forced ISA" in capsys.readouterr().err
    assert main(["profile", "--device", "kernels", "--space", "small32", "--resolution", "99", "--dry-run"]) == 2
    assert "--resolution" in capsys.readouterr().err
    assert main(["profile", "--device", "gpu9000", "--dry-run"]) == 2
    assert "device: expected one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects a bit width no device has
        main(["profile", "--bits", "3", "--dry-run"])
