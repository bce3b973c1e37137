import warnings

import pandas as pd
import pytest

from latency_models import (
    FingerprintMismatch,
    LatencyTable,
    LatencyTableError,
    Predictor,
    default_table_path,
    get_device,
)


def test_roundtrip_csv_and_parquet(fp32_table: LatencyTable, tmp_path) -> None:
    for name in ("t.csv", "t.parquet"):
        path = fp32_table.save(tmp_path / name)
        back = LatencyTable.load(path)
        assert back.lookup() == pytest.approx(fp32_table.lookup(), rel=1e-5)
        assert back.fingerprint == fp32_table.fingerprint
        assert (tmp_path / name).with_suffix(".json").exists()


def test_missing_table_says_how_to_profile(tmp_path) -> None:
    with pytest.raises(LatencyTableError, match="nas profile --device kernels --bits 4 --threads 2"):
        LatencyTable.load(tmp_path / "kernels-int4-t2.csv")
    assert default_table_path("torch-int8", root=tmp_path) == tmp_path / "latency" / "torch-int8.csv"


@pytest.mark.parametrize("column,value", [("median_ms", "abc"), ("median_ms", "-1"), ("in_channels", "2.5"),
                                          ("op", "conv3d"), ("residual", "maybe")])
def test_corrupt_table_names_file_and_row(fp32_table: LatencyTable, tmp_path, column: str, value: str) -> None:
    path = fp32_table.save(tmp_path / "bad.csv")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[3, column] = value
    frame.to_csv(path, index=False)
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value) and "row 3 (line 5)" in str(err.value) and column in str(err.value)


def test_truncated_table_is_an_error(fp32_table: LatencyTable, tmp_path) -> None:
    path = fp32_table.save(tmp_path / "cut.csv")
    text = path.read_text()
    path.write_text(text[: len(text) // 2].rsplit(",", 3)[0] + "\n")
    with pytest.raises(LatencyTableError, match="cut.csv"):
        LatencyTable.load(path)


def test_fingerprint_mismatch_warns_or_raises(fp32_table: LatencyTable, tmp_path) -> None:
    here = get_device("torch-fp32").fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fp32_table.check_fingerprint(here) == []
    other = LatencyTable(fp32_table.frame, {**fp32_table.fingerprint, "cpu_model": "Cortex-A53", "threads": 4})
    with pytest.warns(FingerprintMismatch, match="cpu_model.*Cortex-A53"):
        diffs = other.check_fingerprint(here)
    assert len(diffs) == 2
    with pytest.raises(LatencyTableError, match="re-profile with: nas profile --device torch-fp32"):
        other.check_fingerprint(here, strict=True)
    # a different library build is a mismatch too
    rebuilt = LatencyTable(fp32_table.frame, {**fp32_table.fingerprint, "build_hash": "0123abcd"})
    with pytest.warns(FingerprintMismatch, match="build_hash"):
        rebuilt.check_fingerprint(here)
    Predictor(other)  # a mismatched table still predicts once the user has been warned
