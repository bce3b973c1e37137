"""Short fine-tuning with distillation (used after a pruning step and for QAT) and small evaluation helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.backend import CPU, TrainBackend
from nas.cores import fair_threads, tick
from nas.data import MemoryBatches
from nas.train import cosine_lr, kd_loss, make_optimizer, set_lr, teacher_logits


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, teacher: nn.Module | None = None,
             lr: float = 0.01, batch_size: int = 64, kd_weight: float = 1.0, seed: int = 0,
             extra_params: list[nn.Parameter] | None = None, bn_frozen: bool = False,
             teacher_out: torch.Tensor | None = None, backend: TrainBackend = CPU) -> nn.Module:
    """`steps` SGD steps (cosine learning rate) on cross-entropy plus distillation from `teacher` (if given).

    `teacher_out`: the teacher's outputs for `x`, computed once by a caller that fine-tunes repeatedly on the same
    images (`teacher_logits`). `bn_frozen` keeps batch norms in eval mode (QAT: they are folded into the
    convolutions at conversion). Trains on `backend`'s device and precision (`x`, `y` and `teacher_out` stay on
    the CPU; `extra_params` should be parameters of `model`, which move with it). Returns `model` in eval mode,
    on the CPU.
    """
    if steps <= 0:
        return model.eval()
    if teacher_out is not None and len(teacher_out) != len(x):
        raise ValueError(f"teacher_out: expected one row per image of x ({len(x)}), got {len(teacher_out)}")
    soft = None
    if kd_weight and teacher_out is not None:
        soft = teacher_out
    elif kd_weight and teacher is not None:
        soft = teacher_logits(teacher, x, backend=backend)
    source = MemoryBatches({tuple(x.shape[2:]): x}, y, batch_size, seed=seed, drop_last=len(y) > batch_size)
    # onto the device before the optimizer is made; oneDNN's NHWC kernels (NCHW depthwise backward is ~4x slower)
    backend.module(model).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, lr, 0.9, 5e-5)
    if extra_params:
        opt.add_param_group({"params": extra_params, "weight_decay": 0.0})
    # the caller's thread count at most, fewer while other processes keep the cores busy (nas.cores)
    with backend.training(model), fair_threads():
        _run_steps(model, source, opt, steps, soft, lr, kd_weight, bn_frozen, backend)
    return model.to("cpu", memory_format=torch.contiguous_format).eval()


def _run_steps(model: nn.Module, source: MemoryBatches, opt: torch.optim.Optimizer, steps: int,
               soft: torch.Tensor | None, lr: float, kd_weight: float, bn_frozen: bool,
               backend: TrainBackend) -> None:
    scaler = backend.grad_scaler()
    step = epoch = 0
    while step < steps:
        for b in source.batches(epoch):
            if step >= steps:
                break
            tick()  # between steps: re-size the threads to the cores other processes leave free
            model.train()
            if bn_frozen:
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
            set_lr(opt, cosine_lr(lr, step, steps))
            with backend.autocast():
                out = model(backend.tensor(b.x))
                loss = F.cross_entropy(out, backend.tensor(b.y))
                if soft is not None:
                    loss = loss + kd_weight * kd_loss(out, backend.tensor(soft[b.idx]))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
        epoch += 1


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                      backend: TrainBackend = CPU) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of `model` (eval mode, on `backend`'s device) on CPU tensors `x`, `y`."""
    model.eval()
    loss = correct = 0.0
    for i in range(0, len(x), batch_size):
        with backend.autocast():
            out = model(backend.tensor(x[i : i + batch_size])).float()
        yb = backend.tensor(y[i : i + batch_size])
        loss += F.cross_entropy(out, yb, reduction="sum").double()  # read once at the end, not per batch
        correct += (out.argmax(1) == yb).sum()
    return float(loss) / max(len(x), 1), float(correct) / max(len(x), 1)
