"""Stand-alone training, fine-tuning and evaluation of one architecture, plus the helpers supernet training shares.

>>> model, metrics = train_standalone(arch, split(load_dataset("digits")), TrainRecipe(epochs=10))
>>> tuned, m = train_standalone(arch, splits, recipe, init=supernet.extract(arch), teacher=supernet)
>>> model, metrics = train_standalone(arch, splits, recipe, backend=resolve("cuda", "bf16"))   # on a GPU

Every loop here and in `nas.supernet.training` / `nas.compress._train` runs on a `nas.backend.TrainBackend`
(device and precision), which is an argument rather than a recipe field: it does not change what is learnt beyond
summation order, so it stays out of `recipe_key`, as `threads` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import search_spaces as ss
from nas.backend import CPU, TrainBackend
from nas.cores import fair_threads, tick
from nas.data import DataSource, Splits, TensorSplits, data_source, to_tensors


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


def as_source(splits: Splits | DataSource, workers: int = 2) -> DataSource:
    """The batch source of `splits`: unchanged when already one (so caches are shared), else
    `nas.data.data_source` (in-memory tensors, or streamed from disk by `workers` decoding processes)."""
    return data_source(splits, workers) if isinstance(splits, Splits) else splits


def train_images(data: DataSource, positions: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """The normalised training images at `positions` of the train split, at `resolution`, as one tensor: a subset
    small enough to hold (a calibration set). In memory it is a slice of the cached tensor; a streamed source reads
    just those images (`nas.data.normalise` gives them the same values)."""
    if isinstance(data, TensorSplits):
        return data.tensors("train", resolution)[0][positions]
    part = data.splits.train.subset(np.asarray(positions, dtype=np.int64)).load()
    return to_tensors(part, resolution, data.mean, data.std)[0]


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
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500, backend: TrainBackend = CPU) -> torch.Tensor:
    """Top-1 class of every image of `x` (model put in eval mode), in batches: one forward pass over 10,000
    Fashion-MNIST test images at 24 px took over 20 GB for a MobileNetV2 x1.46. `model` is on `backend`'s device;
    `x` and the result are on the CPU."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with backend.autocast():
            out.append(model(backend.tensor(x[i : i + batch_size])).argmax(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def batches_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     backend: TrainBackend = CPU) -> float:
    """Top-1 accuracy of `model` (put in eval mode, on `backend`'s device) over CPU batches `(x, y)`; 0.0 for
    none."""
    model.eval()
    correct = seen = 0
    for x, y in batches:
        with backend.autocast():
            correct += int((model(backend.tensor(x)).argmax(1).cpu() == y).sum())
        seen += len(y)
    return correct / seen if seen else 0.0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             backend: TrainBackend = CPU) -> float:
    """Top-1 accuracy of `model` (put in eval mode, on `backend`'s device) on CPU tensors `x`, `y`."""
    return batches_accuracy(model, zip(x.split(batch_size), y.split(batch_size), strict=True), backend)


def split_accuracy(model: nn.Module, data: DataSource, part: str, resolution: int, batch_size: int = 500,
                   backend: TrainBackend = CPU) -> float:
    """Top-1 accuracy of `model` on the split `part` of `data` at `resolution`, read `batch_size` images at a time
    (in memory or streamed from disk)."""
    return batches_accuracy(model, data.eval_batches(part, resolution, batch_size), backend)


def _batches(x: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    return x.split(batch_size) if isinstance(x, torch.Tensor) else x


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, batch_size: int = 256,
                   backend: TrainBackend = CPU) -> torch.Tensor:
    """`teacher`'s outputs (eval mode) for every image of `x`: computed once instead of once per batch and epoch,
    which is exact because training batches are un-augmented slices of the same tensors. The teacher is moved to
    `backend`'s device for the pass and back to the CPU; the logits are float32 on the CPU."""
    teacher.eval()
    out = []
    with backend.placed(teacher):
        for i in range(0, len(x), batch_size):
            with backend.autocast():
                out.append(teacher(backend.tensor(x[i : i + batch_size])).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256,
                   backend: TrainBackend = CPU) -> None:
    """Replace every batch norm's running statistics by their exact average over the images `x` (a CPU tensor,
    taken `batch_size` at a time, or CPU batches; `model` on `backend`'s device); leaves `model` in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.train()
    for xb in _batches(x, batch_size):
        with backend.autocast():
            model(backend.tensor(xb))
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def first_train_images(data: DataSource, n: int, resolution: int, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The first `n` images of the train split (in split order, un-augmented) at `resolution`, `batch_size` at a
    time: what `recalibrate_bn` averages over, without holding them all."""
    left = n
    for x, _ in data.eval_batches("train", resolution, batch_size):
        if left <= 0:
            return
        yield x[:left]
        left -= len(x)


def _resolution(model: nn.Module) -> int:
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ss.Arch):
        raise ValueError("teacher: expected a model with an `arch` (MBConvNet or Supernet)")
    return arch.resolution


def train_standalone(arch: ss.Arch, splits: Splits | DataSource, recipe: TrainRecipe = TrainRecipe(),
                     init: nn.Module | dict[str, torch.Tensor] | None = None, teacher: nn.Module | None = None,
                     progress: bool = False, backend: TrainBackend = CPU) -> tuple[ss.MBConvNet, dict]:
    """Train `arch` on the train split (from scratch, or fine-tune from `init` weights) and evaluate it.

    `splits`: in memory or streamed from disk (`nas.data.data_source`), the same batches either way.
    `teacher` (e.g. the supernet with its largest sub-network active) adds `kd_weight` x distillation loss; it
    sees the same images at its own resolution. Returns the model (eval mode) and metrics: val/test accuracy,
    final train loss, per-epoch history, wall time, MACs, parameters and the back end. Trains on `backend`'s
    device and precision; the model comes back on the CPU. Runs `recipe.threads` torch threads, fewer while other
    processes keep the cores busy (`nas.cores`).
    """
    with fair_threads(recipe.threads):  # restores the caller's thread count afterwards
        return _train_standalone(arch, splits, recipe, init, teacher, progress, backend)


def _train_standalone(arch: ss.Arch, splits: Splits | DataSource, recipe: TrainRecipe,
                      init: nn.Module | dict[str, torch.Tensor] | None, teacher: nn.Module | None,
                      progress: bool, backend: TrainBackend) -> tuple[ss.MBConvNet, dict]:
    torch.manual_seed(recipe.seed)
    data = as_source(splits)
    start = time.perf_counter()
    model = ss.build(arch)
    if init is not None:
        state = init.state_dict() if isinstance(init, nn.Module) else init
        model.load_state_dict(state)
    # oneDNN's NHWC kernels: ~25% faster training steps (cuDNN's mixed-precision convolutions prefer NHWC too)
    model = backend.module(model).to(memory_format=torch.channels_last)
    res = arch.resolution
    distil = teacher is not None and bool(recipe.kd_weight)
    t_res = _resolution(teacher) if distil else res
    # in memory: distillation targets for the whole training set in one pass (the largest supernet network costs
    # several times the student's forward pass; per batch it was ~25% of a fine-tuning step). Streamed: per batch,
    # since one row per image of a set larger than memory need not fit either
    soft_all = (teacher_logits(teacher, data.tensors("train", t_res)[0], backend=backend)
                if distil and isinstance(data, TensorSplits) else None)
    per_batch = distil and soft_all is None
    n_train = len(data.splits.train)
    source = data.train_batches(recipe.batch_size, resolutions=(res, t_res) if per_batch and t_res != res else (res,),
                                seed=recipe.seed, drop_last=n_train > recipe.batch_size)
    opt = make_optimizer(model, recipe.lr, recipe.momentum, recipe.weight_decay)
    scaler = backend.grad_scaler()
    total, step, history = recipe.epochs * len(source), 0, []
    bar = tqdm(range(recipe.epochs), desc=f"train {arch.hash()}", disable=not progress, leave=False)
    # CPU fp32: depthwise weight gradients on the kernel library (faster than oneDNN's); a per-batch teacher stays
    # on the device for the whole loop
    with backend.training(model), (backend.placed(teacher) if per_batch else contextlib.nullcontext()):
        if per_batch:
            teacher.eval()
        for epoch in bar:
            model.train()
            loss_sum = correct = seen = 0.0
            for b in source.batches(epoch):
                tick()  # between steps: re-size the threads to the cores other processes leave free
                set_lr(opt, cosine_lr(recipe.lr, step, total))
                yd = backend.tensor(b.y)
                soft = None
                if soft_all is not None:
                    soft = backend.tensor(soft_all[b.idx])
                elif per_batch:
                    with torch.no_grad(), backend.autocast():
                        soft = teacher(backend.tensor(b.at(t_res))).float()
                with backend.autocast():
                    out = model(backend.tensor(b.at(res)))
                    loss = F.cross_entropy(out, yd, label_smoothing=recipe.label_smoothing)
                    if soft is not None:
                        loss = loss + recipe.kd_weight * kd_loss(out, soft, recipe.kd_temperature)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                # summed on the device, read once per epoch: a read per step would make the host wait for a GPU
                loss_sum += loss.detach().double() * len(b.y)
                correct += (out.argmax(1) == yd).sum()
                seen += len(b.y)
            val = split_accuracy(model, data, "val", res, backend=backend)
            loss_sum, correct = float(loss_sum), float(correct)
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val})
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", val=f"{val:.3f}")
    del source  # a streamed source's decoding processes end with it
    if recipe.recalibrate_bn:
        recalibrate_bn(model, first_train_images(data, recipe.recalibrate_bn, res), backend=backend)
    cost = ss.count(arch)
    metrics = {
        "val_acc": split_accuracy(model, data, "val", res, backend=backend),
        "test_acc": split_accuracy(model, data, "test", res, backend=backend),
        "train_loss": history[-1]["loss"] if history else float("nan"), "history": history,
        "wall_s": time.perf_counter() - start, "macs": cost.macs, "params": cost.params,
        "init": "inherited" if init is not None else "scratch", "distilled": teacher is not None,
        "recipe": asdict(recipe), "backend": backend.to_dict(),
    }
    return model.to("cpu", memory_format=torch.contiguous_format).eval(), metrics


def evaluate(model: nn.Module, splits: Splits | DataSource, part: str = "val") -> float:
    """Top-1 accuracy of an `MBConvNet` on a split (in memory or streamed), at the model's own resolution."""
    return split_accuracy(model, as_source(splits), part, _resolution(model))
