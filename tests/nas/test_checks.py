"""Bad values on the command line: one line naming the flag and what was expected, exit status 2, nothing done."""

from __future__ import annotations

import os

import pytest

from nas import checks
from nas.cli import main

SEARCH = ["search", "--budget", "100MFLOPs", "--quick", "--no-finalize"]

# (argv, words the one-line error must contain); each is refused while parsing or before any work
CASES = [
    (["search", "--budget", "100MFLOPs", "--seed", "-1"], ["--seed", "non-negative integer", "-1"]),
    (["search", "--budget", "100MFLOPs", "--seed", "2.5"], ["--seed", "non-negative integer"]),
    (["search", "--budget", "100MFLOPs", "--seed", str(2**40)], ["--seed", "up to 4294967295"]),
    (["search", "--budget", "100MFLOPs", "--phi", "nan"], ["--phi", "number >= 0", "nan"]),
    (["search", "--budget", "100MFLOPs", "--phi", "-1"], ["--phi", "number >= 0"]),
    (["search", "--budget", "100MFLOPs", "--phi", "50"], ["--phi", "expected phi in [0, 24.8]"]),
    (["search", "--budget", "-5M"], ["--budget", "positive"]),
    (["search", "--budget", "100 bananas"], ["--budget", "cannot parse"]),
    (["search", "--budget", "1" + "0" * 400 + "MFLOPs"], ["--budget", "expected a finite amount"]),
    (["search", "--budget", "100MFLOPs", "--latency", "100MFLOPs"], ["--latency", "expected a time"]),
    (["search", "--budget", "100MFLOPs", "--latency", "-3ms"], ["--latency", "positive"]),
    (["search", "--budget", "100MFLOPs", "--threads", "0"], ["--threads", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--workers", "-3"], ["--workers", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--workers", "0"], ["--workers", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--trials", "0"], ["--trials", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--verify", "0"], ["--verify", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--train-images", "-10"], ["--train-images", "positive integer"]),
    (["search", "--budget", "100MFLOPs", "--study", "../../etc"], ["--study", "plain name"]),
    (["search", "--budget", "100MFLOPs", "--study", "/tmp/evil"], ["--study", "plain name"]),
    (["search", "--budget", "100MFLOPs", "--supernet-epochs", "0,1,1,1"], ["--supernet-epochs", "L,K,D,W"]),
    (["search", "--budget", "100MFLOPs", "--device", "bogus"], ["--device", "expected one of"]),
    (["search", "--budget", "100MFLOPs", "--device", "torch-fp32-avx2"], ["--device", "forced ISA"]),
    (["profile", "--isa", "bogus", "--dry-run"], ["--isa", "expected one of"]),
    (["profile", "--device", "kernels-sse9", "--dry-run"], ["--isa", "expected one of"]),
    (["space", "sample", "-n", "0"], ["-n", "positive integer"]),
    (["space", "sample", "--phi", "inf"], ["--phi", "number >= 0"]),
    (["space", "sample", "--phi", "40"], ["--phi", "expected phi in"]),
    (["space", "sample", "--budget", "-1M"], ["--budget", "positive"]),
    (["bench", "ckpt", "--reps", "0"], ["--reps", "positive integer"]),
    (["bench", "ckpt", "--batch", "0"], ["--batch", "positive integer"]),
    (["bench", "ckpt", "--threads", "-2"], ["--threads", "positive integer"]),
    (["eval", "ckpt", "--split-seed", "-4"], ["--split-seed", "non-negative integer"]),
    (["export", "model", "--prune-ratio", "1.5"], ["--prune-ratio", "(0, 1]"]),
    (["export", "model", "--finetune-steps", "-1"], ["--finetune-steps", "non-negative"]),
    (["export", "model", "--onnx-weights", "int4"], ["--onnx-weights", "expected one of", "uint8"]),
    (["latency", "validate", "--reps", "0"], ["--reps", "positive integer"]),
    (["latency", "validate", "--fit-samples", "0"], ["--fit-samples", "at least 8"]),
    (["latency", "validate", "--fit-samples", "3"], ["--fit-samples", "at least 8"]),
    (["latency", "fit", "--fit-samples", "2"], ["--fit-samples", "at least 8"]),
    (["latency", "validate", "--samples", "1"], ["--samples", "at least 2"]),
    (["profile", "--reps", "0", "--dry-run"], ["--reps", "positive integer"]),
    (["profile", "--threads", "0", "--dry-run"], ["--threads", "positive integer"]),
    (["profile", "--chunk", "0", "--dry-run"], ["--chunk", "positive integer"]),
    (["train", "supernet", "--epochs", "1,1"], ["--epochs", "L,K,D,W"]),
    (["train", "supernet", "--batch-size", "0"], ["--batch-size", "positive integer"]),
    (["train", "supernet", "--lr", "nan"], ["--lr", "number > 0"]),
    (["train", "supernet", "--warmup", "2"], ["--warmup", "[0, 1]"]),
    (["train", "arch", "mobilenetv2", "--epochs", "0"], ["--epochs", "positive integer"]),
    (["train", "eval", "dir", "mobilenetv2", "--seed", "x"], ["--seed", "non-negative integer"]),
]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_flag_is_one_line_naming_it(argv, words, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def _code(argv: list[str]) -> int:
    """`nas ARGV`'s exit status, whether argparse or the command refused it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_out_that_is_a_file_or_unwritable(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    for out, words in ((tmp_path / "afile", ["--out", "is a file"]),
                       (tmp_path / "afile" / "sub", ["--out", "is a file"])):
        assert _code([*SEARCH, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    if os.path.isdir("/proc/self"):  # a folder nobody can create anything in, root included
        assert _code([*SEARCH, "--out", "/proc/self/nas-results"]) == 2
        err = capsys.readouterr().err.strip()
        assert "--out: cannot write in '/proc/self'" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_os_errors_are_one_line_naming_the_file(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-checkpoint"
    assert main(["bench", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err


def test_checks_convert_and_refuse() -> None:
    assert checks.positive_int("--n", "7") == 7 and checks.non_negative_int("--n", 0) == 0
    assert checks.seed("--seed", "4294967295") == 2**32 - 1
    assert checks.finite_float("--x", "0.5", 0.0, 1.0) == 0.5
    assert checks.plain_name("--study", "small32-digits-100MFLOPs-tpe-s0") == "small32-digits-100MFLOPs-tpe-s0"
    for check, value in ((checks.positive_int, True), (checks.positive_int, "1" * 30), (checks.positive_int, "1e3"),
                         (checks.finite_float, "inf"), (checks.plain_name, ".."), (checks.plain_name, "a/b"),
                         (checks.plain_name, "x" * 129), (checks.plain_name, "")):
        with pytest.raises(ValueError, match=r"^--flag: expected"):
            check("--flag", value)
    assert checks.phi("--phi", "small32", "1.5") == 1.5
    with pytest.raises(ValueError, match=r"^--phi: compound scaling 'efficientnet' by 12"):
        checks.phi("--phi", "efficientnet", 12)
