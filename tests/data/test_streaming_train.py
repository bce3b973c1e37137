"""Training, scoring and the CLI on data streamed from disk: the same weights and metrics as in memory for the same
seed (0 or 2 decoding processes), the search's prepare stage streaming a set over --data-memory-limit, and bad
limits refused with one line naming the flag."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import search_spaces as ss
from nas.backend import CPU
from nas.data import DataLoading, DataSpec, StreamSplits, TensorSplits, data_source, load_dataset, split
from nas.search.plan import QUICK, SpacePlan, SupernetPlan
from nas.search.prepare import prepare
from nas.search.request import SearchRequest
from nas.search.scoring import build_scorer
from nas.train import TrainRecipe, evaluate, train_standalone

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = 100_000  # bytes: every generated set here needs ~10x more in memory, so it streams
SPACE = ss.SearchSpace(
    name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1, head_channels=16,
    num_classes=10, in_channels=1,
    stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
            ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5), (1.0, 3.0), (0.0, 0.25))),
)

RECIPE = TrainRecipe(epochs=2, lr=0.1, batch_size=32, threads=1, recalibrate_bn=100)


def write_idx(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                     + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_set(tmp_path_factory) -> Path:
    """1,500 + 300 (t10k) 12x12 images whose class sets their brightness, so a network learns something."""
    root = tmp_path_factory.mktemp("stream") / "gen"
    for part, n, seed in (("train", 1500, 0), ("t10k", 300, 1)):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(rng.normal(20 + 22 * y[:, None, None], 30, (n, 12, 12)), 0, 255).astype(np.uint8)
        root.mkdir(parents=True, exist_ok=True)
        write_idx(root / f"{part}-images-idx3-ubyte", x)
        write_idx(root / f"{part}-labels-idx1-ubyte", y)
    return root


def _sources(root: Path, cache: Path, workers: int) -> tuple[TensorSplits, StreamSplits]:
    memory = data_source(split(load_dataset(root), seed=1))
    streamed = data_source(split(load_dataset(root, LIMIT, cache), seed=1), workers)
    assert isinstance(memory, TensorSplits) and isinstance(streamed, StreamSplits)
    return memory, streamed


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_equals_in_memory_training(idx_set, tmp_path, workers):
    memory, streamed = _sources(idx_set, tmp_path, workers)
    arch = SPACE.largest().replace(resolution=8)  # below the native 12 px: the resized path too
    m_mem, r_mem = train_standalone(arch, memory, RECIPE)
    m_st, r_st = train_standalone(arch, streamed, RECIPE)
    assert _same_weights(m_mem, m_st)  # batch norm recalibrated on the same first 100 images too
    for key in ("val_acc", "test_acc", "train_loss", "history"):
        assert r_mem[key] == r_st[key], key
    assert r_mem["val_acc"] > 0.3  # it learnt something (chance 0.1)
    assert evaluate(m_st, streamed, "test") == r_st["test_acc"]


def test_streamed_distillation_computes_teacher_targets_per_batch(idx_set, tmp_path):
    memory, streamed = _sources(idx_set, tmp_path, 0)
    teacher, _ = train_standalone(SPACE.largest(), memory, dataclasses.replace(RECIPE, recalibrate_bn=0))
    student = SPACE.smallest().replace(resolution=8)  # the teacher sees 12 px, the student 8 px
    recipe = dataclasses.replace(RECIPE, kd_weight=2.0, recalibrate_bn=0)
    m_mem, r_mem = train_standalone(student, memory, recipe, teacher=teacher)
    m_st, r_st = train_standalone(student, streamed, recipe, teacher=teacher)
    assert r_st["distilled"]
    # per batch instead of in one pass: the same targets up to the summation order of the teacher's kernels
    for a, b in zip(m_mem.state_dict().values(), m_st.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert abs(r_mem["val_acc"] - r_st["val_acc"]) <= 0.02
    plain, _ = train_standalone(student, streamed, dataclasses.replace(recipe, kd_weight=0.0))
    assert not _same_weights(plain, m_st)  # the teacher did take part


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from nas.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("workers", ["0", "2"])
def test_nas_train_arch_streams_past_the_memory_limit_with_the_same_result(idx_set, tmp_path, capsys, monkeypatch,
                                                                            workers):
    from safetensors.torch import load_file

    monkeypatch.setenv("NAS_RESULTS", str(tmp_path / "results"))
    # a fixed thread count in both runs (the decoding processes would otherwise take one of the training's two
    # threads), since another count sums the gradients in another order
    monkeypatch.setenv("NAS_FAIR_THREADS", "0")
    arch = tmp_path / "arch.json"
    arch.write_text(SPACE.smallest().to_json())
    common = ["train", "arch", str(arch), "--data", str(idx_set), "--epochs", "2", "--batch-size", "32", "--seed", "1",
              "--train-device", "cpu"]
    rc, out_mem, _ = _cli(capsys, *common, "--out", str(tmp_path / "mem.safetensors"))
    assert rc == 0 and "streamed" not in out_mem
    rc, out_st, _ = _cli(capsys, *common, "--out", str(tmp_path / "st.safetensors"), "--data-memory-limit", "100kB",
                         "--data-workers", workers)
    assert rc == 0 and f"streamed from disk by {workers} decoding processes" in out_st
    # the same val / test accuracy printed, and the same weights saved
    result = [next(line.split("(")[0] for line in out.splitlines() if ": val " in line) for out in (out_mem, out_st)]
    assert result[0] == result[1]
    a, b = load_file(tmp_path / "mem.safetensors"), load_file(tmp_path / "st.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_search_prepare_streams_and_scores_trials_as_in_memory(idx_set, tmp_path):
    spec = DataSpec.of(str(idx_set), 1, train_images=256, val_images=100)
    space = SpacePlan("small32", 0.0, 20e6, 0.5)  # trimmed, as --quick does: a small supernet
    recipe = dataclasses.replace(QUICK.supernet, epochs=(1, 0, 0, 0), threads=1, calib_images=64)
    logs: list[str] = []
    scores = {}
    for name, loading in (("memory", DataLoading()), ("streamed", DataLoading(LIMIT, 2, str(tmp_path / "cache")))):
        prepared = prepare(spec, space, (), logs.append, loading)
        assert isinstance(prepared.data, StreamSplits if name == "streamed" else TensorSplits)
        plan = SupernetPlan(recipe, seed=1, root=str(tmp_path / name), pretrained=False, threads=1)
        scorer = build_scorer(plan, prepared.data, prepared.space, None, CPU, logs.append)
        arch = prepared.space.smallest()
        scores[name] = (scorer.supernet_key, scorer(arch)["val_acc"], scorer.subnet.model(arch).state_dict())
    assert any("(streamed from disk)" in line for line in logs)
    (key_m, acc_m, sd_m), (key_s, acc_s, sd_s) = scores["memory"], scores["streamed"]
    assert key_m == key_s  # the same supernet cache key: streaming is not part of it
    assert acc_m == acc_s and all(torch.equal(sd_m[k], sd_s[k]) for k in sd_m)


@pytest.mark.parametrize("value", ["lots", "0", "-2GB", "12XB", "150%"])
def test_bad_memory_limits_are_refused_with_one_line_naming_the_flag(capsys, value):
    with pytest.raises(SystemExit) as exc:
        _cli(capsys, "train", "arch", "mobilenet_v2", "--data-memory-limit", value)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nas train arch: error: argument --data-memory-limit:") and "expected" in err
    with pytest.raises(ValueError, match=r"^--data-memory-limit: .*expected"):
        SearchRequest(data_memory_limit=value)


def test_bad_data_workers_are_refused(capsys):
    with pytest.raises(SystemExit):
        _cli(capsys, "search", "--budget", "50MFLOPs", "--data-workers", "-1")
    assert "argument --data-workers:" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--data-workers: "):
        SearchRequest(data_workers=-1)


def test_the_flags_stay_out_of_the_study_settings_and_reach_the_plan(tmp_path):
    from nas.search.plan import plan

    a = SearchRequest(out=str(tmp_path))
    b = SearchRequest(out=str(tmp_path), data_memory_limit="2GiB", data_workers=4)
    assert a.study_settings() == b.study_settings() and a.run_name() == b.run_name()
    loading = plan(b).loading
    assert loading == DataLoading(2 * 2**30, 4, str(tmp_path / "data-cache"))
    assert plan(a).loading.memory_limit > 0  # default: a share of physical memory


def test_a_quick_search_streams_end_to_end_and_its_checkpoint_evaluates(idx_set, tmp_path, capsys):
    """`nas search --quick` past --data-memory-limit: the prepare stage streams, the trials score, the chosen
    network is fine-tuned and finalized (on held subsets: here the whole 300-image test set), and `nas eval` of its
    checkpoint, reading the data in memory, finds the recorded fingerprints and the same test accuracy."""
    import json

    out = tmp_path / "out"
    rc, text, err = _cli(capsys, "search", "--budget", "20MFLOPs", "--quick", "--device", "torch-fp32", "--trials",
                         "3", "--val-images", "100", "--no-pretrained", "--threads", "1", "--data", str(idx_set),
                         "--data-memory-limit", "100kB", "--data-workers", "2", "--study", "streamed", "--out",
                         str(out))
    assert rc == 0, err
    assert "(streamed from disk)" in text and "the data streams from disk" in text
    summary = json.loads((out / "streamed" / "summary.json").read_text())
    finalized = summary["finalized"]
    assert finalized["held_images"] == {"train": 512, "val": 100, "test": 300}
    assert summary["request"]["data_memory_limit"] == 100_000
    rc, text, err = _cli(capsys, "eval", finalized["checkpoint"], "--json")
    assert rc == 0, err
    assert json.loads(text)["top1"] == finalized["accuracy"]["int8_test"]
    # and scored streamed, batch by batch, past the same memory limit: the same images, the same accuracy, and
    # ONNX Runtime's predictions on the same batches
    rc, text, err = _cli(capsys, "eval", finalized["checkpoint"], "--json", "--onnx", "--data-memory-limit",
                         "100kB")
    assert rc == 0, err
    streamed = json.loads(text)
    assert streamed["top1"] == finalized["accuracy"]["int8_test"] and streamed["onnx_agreement"] > 0.9
