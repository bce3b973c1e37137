"""nas.io.results_dir: the one way to find the results folder (flag, else $NAS_RESULTS, else ./results)."""

from __future__ import annotations

from pathlib import Path

import latency_models as lm
from nas.cli import build_parser
from nas.io import results_dir


def test_flag_beats_environment_beats_default(monkeypatch, tmp_path):
    monkeypatch.delenv("NAS_RESULTS", raising=False)
    assert results_dir() == Path("results")
    assert results_dir(None) == Path("results") and results_dir("") == Path("results")
    monkeypatch.setenv("NAS_RESULTS", str(tmp_path / "env"))
    assert results_dir() == tmp_path / "env"
    assert results_dir(tmp_path / "flag") == tmp_path / "flag"
    assert results_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.setenv("NAS_RESULTS", "")  # set but empty: as if unset
    assert results_dir() == Path("results")


def test_latency_tables_and_out_flags_follow_it(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_RESULTS", str(tmp_path))
    assert lm.default_table_path("kernels-int4") == tmp_path / "latency" / "kernels-int4.csv"
    assert lm.default_table_path("kernels", root=tmp_path / "run") == tmp_path / "run" / "latency" / "kernels.csv"
    args = build_parser().parse_args(["search", "--budget", "5M"])
    assert Path(args.out) == tmp_path
    args = build_parser().parse_args(["search", "--budget", "5M", "--out", str(tmp_path / "mine")])
    assert Path(args.out) == tmp_path / "mine"
    monkeypatch.delenv("NAS_RESULTS")
    assert Path(build_parser().parse_args(["search", "--budget", "5M"]).out) == Path("results")
    assert lm.default_table_path("kernels") == Path("results") / "latency" / "kernels.csv"
