"""Stand-alone training: learns digits from scratch, fine-tunes from supernet weights, distils, evaluates."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from nas.data import TensorSplits, load_dataset, split
from nas.supernet import Supernet
from nas.train import TrainRecipe, accuracy, evaluate, kd_loss, recalibrate_bn, recipe_key, train_standalone

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = ss.SearchSpace(
    name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1, head_channels=32,
    num_classes=10, in_channels=1,
    stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
            ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5), (1.0, 3.0), (0.0, 0.25))),
)

RECIPE = TrainRecipe(epochs=3, lr=0.2, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def digits() -> TensorSplits:
    return TensorSplits(split(load_dataset("digits").subset(np.arange(900)), seed=0))


def test_scratch_training_beats_chance(digits: TensorSplits) -> None:
    arch = SPACE.smallest()
    model, m = train_standalone(arch, digits, RECIPE)
    assert isinstance(model, ss.MBConvNet) and not model.training
    assert m["val_acc"] > 0.6 and m["test_acc"] > 0.6  # chance is 0.1
    losses = [h["loss"] for h in m["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert m["params"] == sum(p.numel() for p in model.parameters()) and m["init"] == "scratch"
    assert evaluate(model, digits, "test") == pytest.approx(m["test_acc"])
    again, m2 = train_standalone(arch, digits, RECIPE)  # seeded: repeatable
    assert m2["val_acc"] == m["val_acc"]


def test_fine_tune_from_supernet_with_distillation(digits: TensorSplits) -> None:
    torch.manual_seed(0)
    net = Supernet(SPACE)
    arch = SPACE.largest()
    teacher, _ = train_standalone(arch, digits, RECIPE)
    sub = SPACE.smallest().replace(resolution=12)
    inherited = net.extract(sub)
    zero = TrainRecipe(epochs=0, threads=1)
    same, m0 = train_standalone(sub, digits, zero, init=inherited)
    for a, b in zip(same.state_dict().values(), inherited.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # init weights are really loaded
    assert m0["init"] == "inherited" and m0["history"] == []
    tuned, m = train_standalone(sub, digits, dataclasses.replace(RECIPE, epochs=5), init=inherited, teacher=teacher)
    assert m["distilled"] and m["val_acc"] > 0.6
    with pytest.raises(RuntimeError):
        train_standalone(SPACE.largest(), digits, zero, init=inherited)  # shapes do not match


def test_teacher_needs_an_arch(digits: TensorSplits) -> None:
    with pytest.raises(ValueError, match="teacher"):
        train_standalone(SPACE.smallest(), digits, RECIPE, teacher=nn.Linear(1, 10))


def test_kd_loss_zero_iff_same_distribution() -> None:
    a = torch.randn(8, 10)
    assert kd_loss(a, a).abs() < 1e-6
    assert kd_loss(a, a + 5.0).abs() < 1e-5  # softmax is shift-invariant
    assert kd_loss(a, torch.randn(8, 10)) > 0.01


def test_recalibrate_bn_uses_exact_batch_statistics() -> None:
    model = ss.build(SPACE.smallest())
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    recalibrate_bn(model, x, batch_size=64)
    assert not model.training
    stem_out = model.stem.conv(x)
    torch.testing.assert_close(model.stem.bn.running_mean, stem_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    y = torch.randint(0, 10, (64,))
    assert 0.0 <= accuracy(model, x, y) <= 1.0


def test_recalibrate_after_training(digits: TensorSplits) -> None:
    arch = SPACE.smallest()
    recipe = dataclasses.replace(RECIPE, epochs=1, recalibrate_bn=200)
    model, m = train_standalone(arch, digits, recipe)
    x = digits.tensors("train", arch.resolution)[0][:200]
    with torch.no_grad():
        stem_out = model.stem.conv(x)
    # the running statistics are the exact mean over the first 200 training images, not a lagging average
    torch.testing.assert_close(model.stem.bn.running_mean, stem_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert m["val_acc"] == pytest.approx(evaluate(model, digits, "val"))
    plain, _ = train_standalone(arch, digits, dataclasses.replace(recipe, recalibrate_bn=0))
    assert not torch.allclose(plain.stem.bn.running_mean, model.stem.bn.running_mean)


def test_predictions_in_batches_match_one_pass() -> None:
    from nas.train import predictions

    torch.manual_seed(0)
    arch = ss.get_space("small32").smallest()
    model = ss.build(arch).eval()
    x = torch.randn(7, arch.in_channels, arch.resolution, arch.resolution)
    with torch.no_grad():
        whole = model(x).argmax(1)
    got = predictions(model, x, batch_size=3)
    assert torch.equal(got, whole)
    assert accuracy(model, x, whole, batch_size=2) == 1.0
    assert accuracy(model, x[:0], whole[:0]) == 0.0


def test_recipe_key_names_what_is_learnt_and_ignores_threads():
    base = TrainRecipe(epochs=6, lr=0.05, seed=0, threads=2)
    assert recipe_key(base) == recipe_key(dataclasses.replace(base, threads=1))
    assert len(recipe_key(base)) == 8
    keys = {recipe_key(dataclasses.replace(base, **change))
            for change in ({}, {"epochs": 7}, {"seed": 1}, {"lr": 0.1}, {"kd_weight": 0.0}, {"recalibrate_bn": 1024})}
    assert len(keys) == 6


def test_split_accuracy_and_first_train_images_read_through_the_data_source(digits: TensorSplits) -> None:
    from nas.train import first_train_images, split_accuracy

    arch = SPACE.smallest()
    model = ss.build(arch).eval()
    xv, yv = digits.tensors("val", arch.resolution)
    assert split_accuracy(model, digits, "val", arch.resolution, batch_size=7) == accuracy(model, xv, yv)
    x = digits.tensors("train", arch.resolution)[0]
    parts = list(first_train_images(digits, 100, arch.resolution, batch_size=32))
    assert [len(p) for p in parts] == [32, 32, 32, 4] and torch.equal(torch.cat(parts), x[:100])
    a, b = ss.build(arch), ss.build(arch)
    b.load_state_dict(a.state_dict())
    recalibrate_bn(a, x[:100], batch_size=32)
    recalibrate_bn(b, parts)  # batches given as they come: the same statistics
    assert torch.equal(a.stem.bn.running_mean, b.stem.bn.running_mean)
