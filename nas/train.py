"""Stand-alone training, fine-tuning and evaluation of one architecture, plus the helpers supernet training shares.

>>> model, metrics = train_standalone(arch, split(load_dataset("digits")), TrainRecipe(epochs=10))
>>> tuned, m = train_standalone(arch, splits, recipe, init=supernet.extract(arch), teacher=supernet)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import search_spaces as ss
from nas.cores import fair_threads, tick
from nas.data import BatchLoader, Splits, TensorSplits
from nas.kernels.training import fast_depthwise


@dataclass(frozen=True)
class TrainRecipe:
    """How to train one architecture: SGD with Nesterov momentum, cosine learning rate, optional distillation."""

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0
    kd_weight: float = 1.0  # weight of the distillation loss when a teacher is given
    kd_temperature: float = 1.0
    seed: int = 0
    threads: int = 2
    # after training, re-estimate batch-norm statistics on the first this-many training images (0: keep the running
    # averages). Short fine-tunes need it: after a few dozen steps the running averages still describe the old
    # weights (measured: --quick's 16-step fine-tune scored 0.10 val with them, 0.54 recalibrated)
    recalibrate_bn: int = 0


def recipe_key(recipe: TrainRecipe) -> str:
    """8 hex digits naming what `recipe` learns, for caches of trained networks: `threads` is left out, as for the
    supernet's cache key, since it changes only the floating-point summation order."""
    fields = {k: v for k, v in asdict(recipe).items() if k != "threads"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def as_tensor_splits(splits: Splits | TensorSplits) -> TensorSplits:
    """`TensorSplits` for `splits` (unchanged when already tensors, so caches are shared)."""
    return splits if isinstance(splits, TensorSplits) else TensorSplits(splits)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened probabilities, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from `base` to 0 over `total` steps."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD (Nesterov) with weight decay on weights only, not on biases, batch-norm parameters or transforms."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "transforms" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum, nesterov=momentum > 0)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 class of every image of `x` (model put in eval mode), in batches: one forward pass over 10,000
    Fashion-MNIST test images at 24 px took over 20 GB for a MobileNetV2 x1.46."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` (put in eval mode) on tensors `x`, `y`."""
    if len(x) == 0:
        model.eval()
        return 0.0
    return int((predictions(model, x, batch_size) == y).sum()) / len(x)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`teacher`'s outputs (eval mode) for every image of `x`: computed once instead of once per batch and epoch,
    which is exact because training batches are un-augmented slices of the same tensors."""
    teacher.eval()
    return torch.cat([teacher(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Replace every batch norm's running statistics by their exact average over `x`; leaves `model` in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def _resolution(model: nn.Module) -> int:
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ss.Arch):
        raise ValueError("teacher: expected a model with an `arch` (MBConvNet or Supernet)")
    return arch.resolution


def train_standalone(arch: ss.Arch, splits: Splits | TensorSplits, recipe: TrainRecipe = TrainRecipe(),
                     init: nn.Module | dict[str, torch.Tensor] | None = None, teacher: nn.Module | None = None,
                     progress: bool = False) -> tuple[ss.MBConvNet, dict]:
    """Train `arch` on the train split (from scratch, or fine-tune from `init` weights) and evaluate it.

    `teacher` (e.g. the supernet with its largest sub-network active) adds `kd_weight` x distillation loss; it
    sees the same images at its own resolution. Returns the model (eval mode) and metrics: val/test accuracy,
    final train loss, per-epoch history, wall time, MACs and parameters. Runs `recipe.threads` torch threads,
    fewer while other processes keep the cores busy (`nas.cores`).
    """
    with fair_threads(recipe.threads):  # restores the caller's thread count afterwards
        return _train_standalone(arch, splits, recipe, init, teacher, progress)


def _train_standalone(arch: ss.Arch, splits: Splits | TensorSplits, recipe: TrainRecipe,
                      init: nn.Module | dict[str, torch.Tensor] | None, teacher: nn.Module | None,
                      progress: bool) -> tuple[ss.MBConvNet, dict]:
    torch.manual_seed(recipe.seed)
    data = as_tensor_splits(splits)
    start = time.perf_counter()
    model = ss.build(arch)
    if init is not None:
        state = init.state_dict() if isinstance(init, nn.Module) else init
        model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last)  # oneDNN's NHWC kernels: ~25% faster training steps
    x, y = data.tensors("train", arch.resolution)
    # distillation targets for the whole training set in one pass (the largest supernet network costs several
    # times the student's forward pass; per batch it was ~25% of a fine-tuning step)
    soft_all = (teacher_logits(teacher, data.tensors("train", _resolution(teacher))[0])
                if teacher is not None and recipe.kd_weight else None)
    xv, yv = data.tensors("val", arch.resolution)
    loader = BatchLoader(torch.arange(len(y)), y, recipe.batch_size, seed=recipe.seed,
                         drop_last=len(y) > recipe.batch_size)
    opt = make_optimizer(model, recipe.lr, recipe.momentum, recipe.weight_decay)
    total, step, history = recipe.epochs * len(loader), 0, []
    bar = tqdm(range(recipe.epochs), desc=f"train {arch.hash()}", disable=not progress, leave=False)
    with fast_depthwise(model):  # depthwise weight gradients on the kernel library (faster than oneDNN's)
        for epoch in bar:
            model.train()
            loss_sum = correct = seen = 0.0
            for idx, yb in loader:
                tick()  # between steps: re-size the threads to the cores other processes leave free
                set_lr(opt, cosine_lr(recipe.lr, step, total))
                out = model(x[idx])
                loss = F.cross_entropy(out, yb, label_smoothing=recipe.label_smoothing)
                if soft_all is not None:
                    loss = loss + recipe.kd_weight * kd_loss(out, soft_all[idx], recipe.kd_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += float(loss.detach()) * len(yb)
                correct += float((out.argmax(1) == yb).sum())
                seen += len(yb)
            val = accuracy(model, xv, yv)
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val})
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", val=f"{val:.3f}")
    if recipe.recalibrate_bn:
        recalibrate_bn(model, x[: recipe.recalibrate_bn])
    xs, ys = data.tensors("test", arch.resolution)
    cost = ss.count(arch)
    metrics = {
        "val_acc": accuracy(model, xv, yv), "test_acc": accuracy(model, xs, ys),
        "train_loss": history[-1]["loss"] if history else float("nan"), "history": history,
        "wall_s": time.perf_counter() - start, "macs": cost.macs, "params": cost.params,
        "init": "inherited" if init is not None else "scratch", "distilled": teacher is not None,
        "recipe": asdict(recipe),
    }
    return model.to(memory_format=torch.contiguous_format).eval(), metrics


def evaluate(model: nn.Module, splits: Splits | TensorSplits, part: str = "val") -> float:
    """Top-1 accuracy of an `MBConvNet` on a split, at the model's own resolution."""
    x, y = as_tensor_splits(splits).tensors(part, _resolution(model))
    return accuracy(model, x, y)
