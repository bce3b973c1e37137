"""Training back end (#30): --train-device / --precision resolved and checked before any work, and the training
loops run the same device/autocast/scaler code on the CPU that a GPU runs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import nas.kernels.training as kt
import search_spaces as ss
from nas.backend import CPU, TrainBackend, cpu_bf16_support, resolve
from nas.cli import main
from nas.compress._train import finetune
from nas.data import TensorSplits, load_dataset, split
from nas.supernet import SupernetRecipe, load_supernet, train_supernet
from nas.train import TrainRecipe, train_standalone

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = ss.SearchSpace(
    name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1, head_channels=32,
    num_classes=10, in_channels=1,
    stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
            ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5), (1.0, 3.0), (0.0, 0.25))),
)

ARCH = SPACE.largest()  # has 5x5 depthwise convolutions: the kernel library's weight gradient applies
RECIPE = TrainRecipe(epochs=2, lr=0.2, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def digits() -> TensorSplits:
    return TensorSplits(split(load_dataset("digits").subset(np.arange(600)), seed=0))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("device", "precision", "probe", "flag", "says"), [
    ("cuda", "fp32", {"cuda_devices": 0}, "--train-device", "asks for a GPU, but PyTorch"),
    ("cuda:0", "fp32", {"cuda_devices": 0}, "--train-device", "sees none here"),
    ("cuda:7", "fp32", {"cuda_devices": 1}, "--train-device", "sees 1 GPU(s) here (cuda:0 to cuda:0)"),
    ("cpu", "bf16", {"cpu_bf16": False}, "--precision", "needs AMX-BF16 or AVX512-BF16, which this CPU ("),
    ("auto", "bf16", {"cuda_devices": 0, "cpu_bf16": False}, "--precision", "bf16 on the CPU"),
    ("cpu", "fp16", {"cpu_bf16": True}, "--precision", "fp16 needs a GPU"),
    ("cuda", "bf16", {"cuda_devices": 1, "cuda_bf16": False}, "--precision", "bf16 needs a GPU with bf16"),
    ("gpu", "fp32", {}, "--train-device", "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("cuda:-1", "fp32", {}, "--train-device", "expected auto, cpu, cuda or cuda:N"),
    ("", "fp32", {}, "--train-device", "expected auto, cpu, cuda or cuda:N, got ''"),
    ("cpu", "fp8", {}, "--precision", "expected fp32, bf16, fp16, got 'fp8'"),
    ("cpu", "half", {}, "--precision", "expected fp32, bf16, fp16"),
])
def test_bad_values_are_refused_in_one_line_naming_the_flag(device, precision, probe, flag, says) -> None:
    with pytest.raises(ValueError) as err:
        resolve(device, precision, **probe)
    message = str(err.value)
    assert message.startswith(f"{flag}: ") and says in message and "\n" not in message


@pytest.mark.parametrize(("device", "precision", "probe", "expected"), [
    ("auto", "fp32", {"cuda_devices": 0}, TrainBackend("cpu", "fp32")),
    ("auto", "fp16", {"cuda_devices": 2, "cuda_bf16": True}, TrainBackend("cuda:0", "fp16")),
    ("CUDA", "bf16", {"cuda_devices": 1, "cuda_bf16": True}, TrainBackend("cuda:0", "bf16")),
    ("cuda:01", "fp32", {"cuda_devices": 2}, TrainBackend("cuda:1", "fp32")),
    ("cpu", "bf16", {"cpu_bf16": True}, TrainBackend("cpu", "bf16")),
    (" cpu ", "FP32", {}, CPU),
])
def test_resolve_picks_the_device_and_keeps_one_spelling(device, precision, probe, expected) -> None:
    assert resolve(device, precision, **probe) == expected


def test_bf16_on_this_cpu_follows_its_instruction_set() -> None:
    feature = cpu_bf16_support()
    if feature is None:  # e.g. a Xeon with AVX-512 VNNI but no bf16 instructions: refused, naming the CPU
        with pytest.raises(ValueError, match=r"^--precision: bf16 on the CPU needs AMX-BF16 or AVX512-BF16"):
            resolve("cpu", "bf16")
    else:
        assert resolve("cpu", "bf16") == TrainBackend("cpu", "bf16")


def test_cpu_bf16_support_reads_the_cpu_flags(monkeypatch) -> None:
    import nas.cpuinfo

    monkeypatch.setattr(nas.cpuinfo, "cpu_flags", lambda: {"fpu", "avx512f", "avx512_vnni"})
    assert cpu_bf16_support() is None
    monkeypatch.setattr(nas.cpuinfo, "cpu_flags", lambda: {"fpu", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert cpu_bf16_support() == "amx_bf16"


def test_backend_parts() -> None:
    assert CPU.uses_cpu_kernels and not TrainBackend("cpu", "bf16").uses_cpu_kernels
    assert not TrainBackend("cuda:0", "fp32").uses_cpu_kernels and TrainBackend("cuda:1").is_cuda
    assert not CPU.grad_scaler().is_enabled() and not TrainBackend("cpu", "bf16").grad_scaler().is_enabled()
    assert TrainBackend("cpu", "fp16").grad_scaler().is_enabled()  # fp16 gradients underflow without one
    x = torch.zeros(3)
    assert CPU.tensor(x) is x  # batches are not copied on the CPU
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with TrainBackend("cpu", "bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    record = CPU.to_dict()
    assert record["device"] == "cpu" and record["precision"] == "fp32" and record["hardware"]
    for bad in ({"device": "cuda"}, {"device": "tpu"}, {"precision": "fp64"}):
        with pytest.raises(ValueError):
            TrainBackend(**bad)


def test_cpu_fp32_through_the_backend_is_bit_identical_and_uses_the_kernels(digits, monkeypatch) -> None:
    calls = []
    real = kt.depthwise_weight_grad
    monkeypatch.setattr(kt, "depthwise_weight_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, m0 = train_standalone(ARCH, digits, RECIPE)  # no backend argument: the default
    assert calls, "CPU fp32 trains the 5x5 depthwise weights with the kernel library"
    explicit, m1 = train_standalone(ARCH, digits, RECIPE, backend=resolve("cpu", "fp32"))
    auto, _ = train_standalone(ARCH, digits, RECIPE, backend=resolve("auto", "fp32", cuda_devices=0))
    assert _same_weights(plain, explicit) and _same_weights(plain, auto)
    assert m0["history"] == m1["history"] and m1["backend"]["device"] == "cpu"
    assert next(explicit.parameters()).device.type == "cpu"


def test_bf16_autocast_path_runs_on_the_cpu_without_the_kernels(digits, monkeypatch) -> None:
    """bf16 support injected: proves the autocast code path (its speed here is emulation's, not a finding)."""
    bf16 = resolve("cpu", "bf16", cpu_bf16=True)
    calls = []
    real = kt.depthwise_weight_grad
    monkeypatch.setattr(kt, "depthwise_weight_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen: set[torch.dtype] = set()  # every convolution's output dtype while training (a process-wide hook)

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        model, m = train_standalone(ARCH, digits, RECIPE, backend=bf16)
    finally:
        handle.remove()
    assert seen == {torch.bfloat16}
    assert not calls, "the kernel library's float32 weight gradient steps aside under bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights
    assert m["backend"]["precision"] == "bf16" and m["val_acc"] > 0.3  # learns (chance is 0.1)
    fp32, _ = train_standalone(ARCH, digits, RECIPE)
    assert not _same_weights(model, fp32)


def test_fp16_loss_scaler_path_runs_on_the_cpu() -> None:
    """The GPU's fp16 code (autocast + GradScaler.scale/step/update) on the CPU, where resolve() refuses it for
    users because it is slow there, not wrong."""
    fp16 = TrainBackend("cpu", "fp16")
    torch.manual_seed(0)
    model = ss.build(ARCH)
    before = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 12, 12, generator=g), torch.randint(0, 10, (96,), generator=g)
    tuned = finetune(model, x, y, steps=4, teacher=before, batch_size=32, backend=fp16)
    weights = [p for p in tuned.parameters() if p.ndim > 1]
    assert all(torch.isfinite(p).all() for p in weights)
    assert any(not torch.equal(p, q) for p, q in zip(weights, (p for p in before.parameters() if p.ndim > 1),
                                                      strict=True))


def test_supernet_cache_is_shared_across_back_ends(digits, tmp_path: Path) -> None:
    """The back end is not part of the key: a supernet trained in bf16 is found and loaded by an fp32 run."""
    recipe = SupernetRecipe(epochs=(1, 1, 0, 0), batch_size=128, random_subnets=1, calib_images=64, threads=1)
    bf16 = resolve("cpu", "bf16", cpu_bf16=True)
    run = train_supernet(SPACE, digits, recipe, root=tmp_path, progress=False, pretrained=None, backend=bf16)
    assert run.finished and all(np.isfinite(h["loss"]) for h in run.history)
    assert next(run.supernet.parameters()).device.type == "cpu"
    again = train_supernet(SPACE, digits, recipe, root=tmp_path, progress=False, pretrained=None)  # CPU fp32
    assert again.key == run.key and again.history == run.history  # loaded, not retrained
    assert _same_weights(again.supernet, run.supernet) and _same_weights(load_supernet(run.path), run.supernet)


@pytest.mark.parametrize("command", [["arch", "mbv2", "--out", "{out}/model.safetensors"],
                                     ["supernet", "--out", "{out}"], ["eval", "{out}/no-such-supernet", "mbv2"]])
def test_cli_refuses_a_missing_gpu_before_any_work(command, capsys, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    missing = tmp_path / "no-such-dataset"  # loading it would fail with another message: the check comes first
    argv = ["train", *(c.format(out=out) for c in command), "--data", str(missing), "--train-device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas train: error: --train-device: 'cuda' asks for a GPU") and "\n" not in err
    assert not out.exists()  # nothing written either


def test_cli_refuses_a_malformed_device_while_parsing(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:  # a malformed value: argparse's one line, while parsing
        main(["train", "eval", str(tmp_path), "mbv2", "--train-device", "gpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "argument --train-device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in err and "\n" not in err


def test_cli_refuses_bf16_on_a_cpu_without_it(capsys, tmp_path: Path) -> None:
    if torch.cuda.is_available() or cpu_bf16_support() is not None:
        pytest.skip("bf16 runs here")
    assert main(["train", "arch", "mbv2", "--data", str(tmp_path / "none"), "--train-device", "cpu",
                 "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas train: error: --precision: bf16 on the CPU needs") and "\n" not in err
