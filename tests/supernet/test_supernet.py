"""Supernet: sub-network forward == extracted model, elastic dimensions, training, resume after a crash."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from nas.data import TensorSplits, load_dataset, split
from nas.supernet import (
    SubnetEvaluator,
    Supernet,
    SupernetRecipe,
    cache_key,
    dataset_fingerprint,
    load_supernet,
    phase_space,
    train_supernet,
)
from nas.supernet.model import ElasticDepthwise
from nas.supernet.training import phase_lr
from nas.train import cosine_lr

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]

TINY = ss.SearchSpace(
    name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1, head_channels=32,
    num_classes=10, in_channels=1,
    stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
            ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5, 7), (1.0, 3.0, 6.0), (0.0, 0.25)),
            ss.StageSpace((1, 2), (16, 24), 2, "hswish", (3, 5), (3.0, 4.0), (0.0, 0.25))),
)
# One thread: on a busy shared 2-core machine, two spinning OpenMP threads per process run several times slower.
FAST = SupernetRecipe(epochs=(1, 1, 1, 1), batch_size=128, random_subnets=1, calib_images=128, threads=1)


def tiny_digits(n: int = 700) -> TensorSplits:
    """The first `n` digits images (keeps training tests fast on a busy machine), split with seed 0."""
    return TensorSplits(split(load_dataset("digits").subset(np.arange(n)), seed=0))


@pytest.fixture(scope="module")
def digits() -> TensorSplits:
    return tiny_digits()


def _randomise(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics and affine parameters, a larger classifier, for output comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
            elif isinstance(m, ElasticDepthwise):
                for p in m.transforms.values():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("space", [TINY, ss.get_space("small32"), ss.get_space("small32-v3")],
                         ids=["tiny", "small32", "small32-v3"])
def test_extract_matches_supernet_forward(space: ss.SearchSpace) -> None:
    torch.manual_seed(0)
    net = Supernet(space).eval()
    _randomise(net)
    rng = random.Random(1)
    for arch in [space.smallest(), space.largest()] + [space.random_arch(rng) for _ in range(6)]:
        x = torch.randn(3, space.in_channels, arch.resolution, arch.resolution)
        net.set_active(arch)
        ref = net(x)
        model = net.extract(arch)
        assert isinstance(model, ss.MBConvNet) and not model.training and model.arch == arch
        out = model(x)
        assert ref.std() > 1e-3  # the comparison is not between two near-zero outputs
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in model.parameters()) == ss.count(arch).params


def test_forward_resizes_input_to_active_resolution() -> None:
    net = Supernet(TINY).eval()
    arch = TINY.smallest()  # resolution 8
    net.set_active(arch)
    x = torch.randn(2, 1, 12, 12)
    small = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(net(x), net(small))


def test_elastic_kernel_crop_and_transform() -> None:
    dw = ElasticDepthwise(4, (3, 5, 7), stride=1)
    w7 = dw.conv.weight
    for k in (3, 5, 7):
        assert dw.kernel_weight(k, 4).shape == (4, 1, k, k)
        assert dw.kernel_weight(k, 2).shape == (2, 1, k, k)
    # identity transforms: pure centre crops of the shared 7x7 kernel
    torch.testing.assert_close(dw.kernel_weight(5, 4), w7[:, :, 1:6, 1:6])
    torch.testing.assert_close(dw.kernel_weight(3, 4), w7[:, :, 2:5, 2:5])
    torch.testing.assert_close(dw.kernel_weight(7, 4), w7)
    with torch.no_grad():
        dw.transforms["5"].copy_(torch.eye(25).flip(0))  # reverse the 25 taps
    torch.testing.assert_close(dw.kernel_weight(5, 4), w7[:, :, 1:6, 1:6].flip(2, 3))
    # the 3x3 kernel is cropped from the *transformed* 5x5 one (7 -> 5 -> 3)
    torch.testing.assert_close(dw.kernel_weight(3, 4), w7[:, :, 2:5, 2:5].flip(2, 3))
    with pytest.raises(ValueError, match="kernel"):
        dw.kernel_weight(4, 4)


def test_smallest_and_largest_shapes_and_slices() -> None:
    space = ss.get_space("small32")
    net = Supernet(space).eval()
    for arch in (space.smallest(), space.largest()):
        model = net.extract(arch)
        assert len(model.blocks) == sum(len(s) for s in arch.stages)
        c = arch.stem_channels
        for block, b in zip(model.blocks, arch.blocks(), strict=True):
            mid = b.mid(c)
            assert block.dw.conv.weight.shape == (mid, 1, b.kernel, b.kernel)
            assert block.project.conv.weight.shape == (b.out_channels, mid, 1, 1)
            assert (block.expand is None) == (b.expand == 1)
            assert (block.se is None) == (b.se == 0)
            c = b.out_channels
        assert net.extract(arch)(torch.randn(2, 1, arch.resolution, arch.resolution)).shape == (2, 10)
    small = space.smallest()
    sm = net.extract(small)
    # depth: the first blocks of each stage; width/expand: the first channels of the shared tensors
    src = net.stages[3][2]  # stage 3, third block (smallest depth is 3), expansion 3 of 48 channels
    dst = sm.blocks[1 + 1 + 2 + 2]
    assert torch.equal(dst.expand.conv.weight, src.expand.conv.weight[:144, :48])
    assert torch.equal(dst.dw.conv.weight, src.main.dw.conv.weight[:144, :, 2:5, 2:5])
    assert torch.equal(dst.project.conv.weight, src.main.project.conv.weight[:48, :144])
    big = net.extract(space.largest())
    assert torch.equal(big.blocks[1 + 3 + 4].expand.conv.weight, net.stages[3][0].expand.conv.weight)


def test_sort_channels_keeps_largest_function_and_orders_importance() -> None:
    torch.manual_seed(0)
    net = Supernet(TINY).eval()
    _randomise(net)
    arch = TINY.largest()
    x = torch.randn(4, 1, 12, 12)
    before = net(x)
    net.sort_channels()
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    block = net.stages[1][0]
    imp = block.main.project.conv.weight.abs().sum((0, 2, 3))
    assert torch.all(imp[:-1] >= imp[1:])
    stream = sum(m.main.project.conv.weight.abs().sum((1, 2, 3)) for m in net.stages[2])
    assert torch.all(stream[:-1] >= stream[1:])
    mid = TINY.random_arch(random.Random(0))
    net.set_active(mid)
    torch.testing.assert_close(net.extract(mid)(x[:, :, : mid.resolution, : mid.resolution]),
                               net(x[:, :, : mid.resolution, : mid.resolution]), rtol=1e-5, atol=1e-5)
    assert arch == net.space.largest()
    net.init_plain_paths()
    block = net.stages[1][1]  # 16 -> 16 channels; expansion 1 reads the first 16 sorted expanded channels' weights
    plain = dataclasses.replace(TINY.largest().stages[1][1], expand=1.0)
    assert block.path(plain) is block.plain
    assert torch.equal(block.plain.dw.conv.weight, block.main.dw.conv.weight[:16])
    assert torch.equal(block.plain.project.conv.weight, block.main.project.conv.weight[:, :16])


def test_arch_outside_space_is_rejected_with_reasons() -> None:
    space = ss.get_space("small32")
    net = Supernet(space)
    arch = space.largest()
    stages = list(arch.stages)
    stages[1] = tuple(dataclasses.replace(b, out_channels=48) for b in stages[1])
    bad = arch.replace(resolution=20, stages=tuple(stages))
    with pytest.raises(ValueError, match=r"resolution = 20.*stages\[1\]\[0\]\.out_channels = 48"):
        net.set_active(bad)
    with pytest.raises(ValueError, match="not in the supernet's space"):
        net.extract(bad)
    with pytest.raises(ValueError, match="num_classes"):
        net.extract(arch.replace(num_classes=100))
    deeper = arch.replace(stages=arch.stages[:-1] + (arch.stages[-1] * 3,))
    with pytest.raises(ValueError, match=r"stages\[6\] depth = 6"):
        net.set_active(deeper)
    assert net.arch == space.largest()  # a rejected arch does not change the active one


def test_phase_spaces_free_dimensions_in_order() -> None:
    kernel, depth, width = (phase_space(TINY, p) for p in ("kernel", "depth", "width"))
    assert phase_space(TINY, "largest").smallest() == TINY.largest()
    s = kernel.smallest()
    assert [len(st) for st in s.stages] == [1, 2, 2] and s.blocks()[1].kernel == 3 and s.blocks()[1].expand == 6
    assert [len(st) for st in depth.smallest().stages] == [1, 1, 1]
    assert depth.smallest().blocks()[1].out_channels == 16
    assert width.smallest() == TINY.smallest() and width.largest() == TINY.largest()
    with pytest.raises(ValueError, match="phase"):
        phase_space(TINY, "resolution")


def test_cache_key_depends_on_space_data_recipe_seed(digits: TensorSplits) -> None:
    fp = dataset_fingerprint(digits.splits)
    key = cache_key(TINY, fp, FAST, 0)
    assert key == cache_key(TINY, dataset_fingerprint(digits.splits), FAST, 0)
    assert len({key, cache_key(TINY, fp, FAST, 1), cache_key(ss.get_space("small32"), fp, FAST, 0),
                cache_key(TINY, fp, SupernetRecipe(epochs=(1, 1, 1, 2)), 0),
                cache_key(TINY, dataset_fingerprint(split(load_dataset("digits"), seed=1)), FAST, 0)}) == 5
    # the thread count changes speed, not the trained weights' meaning: a run may resume with other threads
    assert key == cache_key(TINY, fp, dataclasses.replace(FAST, threads=FAST.threads + 1), 0)


def test_phase_lr_ramps_up_linearly_then_follows_the_cosine() -> None:
    assert [phase_lr(0.02, t, 40) for t in range(40)] == [cosine_lr(0.02, t, 40) for t in range(40)]
    lrs = [phase_lr(0.02, t, 40, warmup_steps=10) for t in range(40)]
    assert lrs[0] == pytest.approx(0.1 * cosine_lr(0.02, 0, 40))
    assert lrs[4] == pytest.approx(0.5 * cosine_lr(0.02, 4, 40))
    assert lrs[9:] == [cosine_lr(0.02, t, 40) for t in range(9, 40)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    with pytest.raises(ValueError, match="warmup"):
        SupernetRecipe(warmup=1.5)


def test_warmup_changes_the_shrinking_phases_only(digits: TensorSplits, tmp_path: Path) -> None:
    fp = dataset_fingerprint(digits.splits)
    warm = dataclasses.replace(FAST, warmup=0.5)
    assert cache_key(TINY, fp, warm, 0) != cache_key(TINY, fp, FAST, 0)
    a = train_supernet(TINY, digits, FAST, root=tmp_path / "a", progress=False)
    b = train_supernet(TINY, digits, warm, root=tmp_path / "b", progress=False)
    assert a.history[0]["loss"] == b.history[0]["loss"]  # the largest phase has no warm-up
    assert a.history[1]["loss"] != b.history[1]["loss"]


def test_random_subnets_per_shrinking_phase(digits: TensorSplits, tmp_path: Path) -> None:
    fp = dataset_fingerprint(digits.splits)
    per_phase = dataclasses.replace(FAST, random_subnets=(0, 1, 1))
    assert [per_phase.random_in(p) for p in ("largest", "kernel", "depth", "width")] == [0, 0, 1, 1]
    same = dataclasses.replace(FAST, random_subnets=(1, 1, 1))  # one spelling, one cache key
    assert same.random_subnets == 1 and cache_key(TINY, fp, same, 0) == cache_key(TINY, fp, FAST, 0)
    assert cache_key(TINY, fp, per_phase, 0) != cache_key(TINY, fp, FAST, 0)
    for bad in ((1, 1), (1, -1, 1), -1, (1.5, 1, 1)):
        with pytest.raises(ValueError, match="random_subnets"):
            dataclasses.replace(FAST, random_subnets=bad)
    a = train_supernet(TINY, digits, FAST, root=tmp_path / "a", progress=False)
    b = train_supernet(TINY, digits, per_phase, root=tmp_path / "b", progress=False)
    assert a.history[0]["loss"] == b.history[0]["loss"] and b.finished
    assert a.history[1]["loss"] != b.history[1]["loss"]  # the kernel phase trained largest + smallest only

def test_supernet_training_loss_decreases_and_evaluates(digits: TensorSplits, tmp_path: Path) -> None:
    recipe = SupernetRecipe(epochs=(3, 0, 0, 0), batch_size=32, calib_images=128, threads=1)
    run = train_supernet(TINY, digits, recipe,
                         root=tmp_path, progress=False)
    losses = [h["loss"] for h in run.history]
    assert losses[-1] < losses[0] < 3.0
    assert run.history[-1]["val_acc_largest"] > 0.5
    # probes (val accuracy) only at the end of each phase unless asked for every epoch; the cache is shared
    assert ["val_acc_largest" in h for h in run.history] == [False, False, True]
    again = dataclasses.replace(recipe, epochs=(2, 0, 0, 0), probe_each_epoch=True)
    assert cache_key(TINY, dataset_fingerprint(digits.splits), again, 0) == cache_key(
        TINY, dataset_fingerprint(digits.splits), dataclasses.replace(again, probe_each_epoch=False), 0)
    every = train_supernet(TINY, digits, again, root=tmp_path, progress=False)
    assert all("val_acc_random" in h for h in every.history)
    run = train_supernet(TINY, digits, FAST, root=tmp_path, progress=False)
    assert [h["phase"] for h in run.history] == ["largest", "kernel", "depth", "width"] and run.finished
    evaluator = SubnetEvaluator(run.supernet, digits, calib_images=128)
    accs, rate = evaluator.evaluate_many([TINY.largest(), TINY.smallest(), TINY.largest()])
    assert accs[0] == accs[2] and all(0.1 < a <= 1 for a in accs) and rate > 0
    assert load_supernet(run.path).state_dict().keys() == run.supernet.state_dict().keys()


_CHILD = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_supernet import TINY, FAST, tiny_digits
from nas.supernet import train_supernet
train_supernet(TINY, tiny_digits(), FAST, root={out!r}, progress=False)
"""


def test_resume_after_kill_runs_no_finished_epoch_again(digits: TensorSplits, tmp_path: Path) -> None:
    code = _CHILD.format(root=str(ROOT), tests=str(Path(__file__).parent), out=str(tmp_path / "a"))
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = None
    deadline = time.time() + 90
    while time.time() < deadline and child.poll() is None:
        found = list((tmp_path / "a").glob("*/state.json"))  # replaced atomically: never half written
        if found and json.loads(found[0].read_text())["epoch"] >= 1:
            ckpt = found[0]
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert ckpt is not None, "the child finished or never checkpointed"
    killed_at = json.loads(ckpt.read_text())["epoch"]
    assert 1 <= killed_at < 4
    seen: list[int] = []
    run = train_supernet(TINY, digits, FAST, root=tmp_path / "a", progress=False,
                         callback=lambda r: seen.append(r["epoch"]))
    assert ckpt.parent == run.path
    assert seen == list(range(killed_at + 1, 5))  # resumed after the last finished epoch, none ran twice
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4] and run.finished
    again: list[int] = []
    loaded = train_supernet(TINY, digits, FAST, root=tmp_path / "a", progress=False,
                            callback=lambda r: again.append(1))
    assert again == [] and loaded.epochs_done == 4  # a finished run only loads
    # killed + resumed == uninterrupted (seeded batches, sub-network draws and optimizer state all restored)
    straight = train_supernet(TINY, digits, FAST, root=tmp_path / "b", progress=False)
    for (name, a), b in zip(run.supernet.state_dict().items(), straight.supernet.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)


class _Stop(Exception):
    pass


def test_fp16_loss_scale_is_saved_and_resumed(digits: TensorSplits, tmp_path: Path) -> None:
    # CPU autocast fp16 with a CPU loss scaler: the code a GPU runs (resolve refuses fp16 on a CPU as too slow,
    # so the back end is built directly)
    from nas.backend import TrainBackend
    from nas.supernet.training import STATE_FILE, SupernetCacheError

    fp16 = TrainBackend("cpu", "fp16")
    two = dataclasses.replace(FAST, epochs=(1, 1, 0, 0))  # CPU fp16 is emulated (slow): two epochs, one resumed

    def stop_after_one(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train_supernet(TINY, digits, two, root=tmp_path, progress=False, callback=stop_after_one, backend=fp16)
    state_file = next(tmp_path.glob(f"*/{STATE_FILE}"))
    saved = json.loads(state_file.read_text())["scaler"]
    assert saved is not None and saved["scale"] > 0 and "_growth_tracker" in saved
    # a scale the scaler could not have reached by itself: the resumed run must start from it
    saved["scale"] = 2.0 ** 7
    text = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**text, "scaler": saved}))
    run = train_supernet(TINY, digits, two, root=tmp_path, progress=False, backend=fp16)
    assert run.finished
    final = json.loads(state_file.read_text())["scaler"]
    assert final["scale"] <= 2.0 ** 7  # continued from 128 (it only grows after 2000 clean steps)
    # fp32 keeps no scaler state; a tampered one is refused naming the file
    plain = train_supernet(TINY, digits, dataclasses.replace(FAST, epochs=(1, 0, 0, 0)), root=tmp_path / "fp32",
                           progress=False)
    assert json.loads((plain.path / STATE_FILE).read_text())["scaler"] is None
    text = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**text, "epoch": 1, "history": text["history"][:1], "scaler": {"scale": -1}}))
    with pytest.raises(SupernetCacheError, match="scaler"):
        train_supernet(TINY, digits, two, root=tmp_path, progress=False, backend=fp16)
