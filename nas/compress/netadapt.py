"""NetAdapt-style pruning toward a latency or MACs target (Yang et al. 2018), on real channel removal.

Each iteration asks for a fixed cost reduction. For every channel group it finds the fewest channels (least
important first) whose removal reaches that reduction according to the latency table (`latency_models`
predictor, which interpolates unseen channel counts) or MACs, measures the loss each proposal costs on a held-out
slice of the training data, takes the proposal that saves the most cost per loss added, and fine-tunes briefly
with distillation from the unpruned model. The target is checked for reachability first.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import latency_models
import search_spaces as ss
from nas.compress._train import finetune, loss_and_accuracy
from nas.compress.prune import channel_groups, importance, prune_channels, pruned_arch
from nas.train import teacher_logits

log = logging.getLogger(__name__)
METRICS = ("latency", "macs")


def cost_function(metric: str = "latency", device: str = "kernels",
                  table: str | None = None) -> tuple[Callable[[ss.Arch], float], str]:
    """(arch -> cost, unit). `latency`: predicted ms from the device's latency table (`table`, or the device's
    default path); without a table it falls back to MACs with a warning (unit says which was used)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if metric == "latency":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a fingerprint mismatch still gives a usable relative cost
                predictor = latency_models.load_predictor(device, table)
            return predictor.predict_ms, f"ms ({device} latency table)"
        except (FileNotFoundError, OSError, ValueError) as exc:
            warnings.warn(f"no usable latency table for device {device!r} ({exc}); pruning by MACs instead",
                          stacklevel=2)
    return (lambda a: float(ss.count_macs(a))), "MACs"


@dataclass(frozen=True)
class NetAdaptConfig:
    """Target and schedule of `netadapt`. `target` is in the cost's unit (ms, or MACs); `target_ratio` (of the
    starting cost) is used when `target` is None."""

    target: float | None = None
    target_ratio: float = 0.7
    metric: str = "latency"
    device: str = "kernels"
    step_ratio: float = 0.08  # cost removed per iteration, as a fraction of the starting cost
    # when no single group can remove a whole step, the step is halved down to this fraction of the starting cost
    # (a latency table prices groups unevenly: one 8% step can be out of reach while two 4% steps are not)
    min_step_ratio: float = 0.01
    importance: str = "l1"
    finetune_steps: int = 60
    lr: float = 0.01
    batch_size: int = 64
    holdout: int = 400  # training images held out to score proposals
    divisor: int = 1
    min_keep: float = 0.25  # no group is pruned below this fraction of its starting width
    max_iters: int = 30
    seed: int = 0


@dataclass
class NetAdaptReport:
    unit: str
    start_cost: float
    target: float
    final_cost: float
    start_arch: str
    final_arch: str
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _sizes(arch: ss.Arch) -> dict[str, int]:
    return {g.name: g.size for g in channel_groups(arch) if g.name != "hidden"}


def smallest_cost(arch: ss.Arch, cost: Callable[[ss.Arch], float], divisor: int = 1) -> float:
    """The cost with every prunable group at its minimum width (what `netadapt` can reach at best)."""
    sizes = {n: min(s, divisor) for n, s in _sizes(arch).items()}
    for _ in range(64):
        try:
            return cost(pruned_arch(arch, sizes))
        except ValueError as exc:
            if "residual" not in str(exc):
                raise
            i = int(str(exc).split("block ")[1].split(" ")[0])
            name = next(g.name for g in channel_groups(arch) if ("out", i) in g.sets)
            sizes[name] += 1
    raise ValueError("netadapt: could not size the smallest network")


def _proposal(arch: ss.Arch, group: str, size: int, cost: Callable[[ss.Arch], float], goal: float,
              divisor: int, floor: int = 1) -> tuple[int, ss.Arch, float] | None:
    """The widest kept width of `group` (a multiple of `divisor`, at least `floor`) whose arch costs <= `goal`, by
    bisection (cost grows with width); None if even the narrowest misses."""

    def at(keep: int) -> tuple[ss.Arch, float] | None:
        for k in (keep, keep - 1, keep + 1):  # step around a width that would create a residual connection
            if 1 <= k < size:
                try:
                    a = pruned_arch(arch, {group: k})
                except ValueError:
                    continue
                return a, cost(a)
        return None

    widths = sorted({k for k in range(divisor, size, divisor) if k >= floor} | ({floor} if floor < size else set()))
    if not widths:
        return None
    lo, hi, found = 0, len(widths) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        r = at(widths[mid])
        if r is not None and r[1] <= goal:
            found = (widths[mid], *r)
            lo = mid + 1
        else:
            hi = mid - 1
    if found is None:
        return None
    keep, a, c = found
    return _width(a, group, keep), a, c


def _width(new: ss.Arch, group: str, fallback: int) -> int:
    """The width `group` has in `new` (the bisection may have stepped around a residual collision)."""
    for g in channel_groups(new):
        if g.name == group:
            return g.size
    return fallback


def _best_proposal(model: nn.Module, arch: ss.Arch, scores: dict[str, torch.Tensor], initial: dict[str, int],
                   current: float, goal: float, base_loss: float, xh: torch.Tensor, yh: torch.Tensor,
                   cost: Callable[[ss.Arch], float], config: NetAdaptConfig) -> tuple | None:
    """Over all channel groups, the pruned candidate that reaches `goal` with the most cost saved per holdout loss
    added: (score, group, kept, was, model, arch, cost, loss, acc), or None if no group can reach it."""
    best = None
    for name, size in _sizes(arch).items():
        floor = max(1, math.ceil(config.min_keep * initial.get(name, size)))
        prop = _proposal(arch, name, size, cost, goal, config.divisor, floor)
        if prop is None:
            continue
        keep, new_arch, c = prop
        cand, _ = prune_channels(model, arch, {name: scores[name].topk(keep).indices})
        loss, acc = loss_and_accuracy(cand, xh, yh)
        score = (current - c) / max(loss - base_loss, 1e-3)
        if best is None or score > best[0]:
            best = (score, name, keep, size, cand, new_arch, c, loss, acc)
    return best


def netadapt(model: nn.Module, arch: ss.Arch, x: torch.Tensor, y: torch.Tensor,
             config: NetAdaptConfig = NetAdaptConfig(),
             cost: Callable[[ss.Arch], float] | None = None, unit: str | None = None
             ) -> tuple[nn.Module, ss.Arch, NetAdaptReport]:
    """Prune `model` (with `arch`) toward `config.target` using training tensors `x`, `y` (at arch resolution).

    Returns the pruned, fine-tuned model, its arch and a report of every step. Raises ValueError, naming the
    smallest reachable cost, when the target cannot be met by pruning.
    """
    if cost is None:
        cost, unit = cost_function(config.metric, config.device)
    unit = unit or "cost"
    teacher = copy.deepcopy(model).eval()
    start = cost(arch)
    target = config.target if config.target is not None else start * config.target_ratio
    floor = smallest_cost(arch, cost, config.divisor)
    if target < floor:
        raise ValueError(f"netadapt: target {target:.4g} {unit} is below the smallest reachable cost {floor:.4g} "
                         f"{unit} of {arch}")
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(len(x), generator=g)
    n_hold = min(config.holdout, len(x) // 5)
    xh, yh = x[perm[:n_hold]], y[perm[:n_hold]]
    xt, yt = x[perm[n_hold:]], y[perm[n_hold:]]
    report = NetAdaptReport(unit, start, target, start, str(arch), str(arch))
    model = copy.deepcopy(model).eval()
    current = start
    initial = _sizes(arch)
    step = config.step_ratio * start
    soft = None
    for it in range(config.max_iters):
        if current <= target:
            break
        scores = importance(model, arch, config.importance, [(xh[:128], yh[:128])]
                            if config.importance == "taylor" else None)
        base_loss, _ = loss_and_accuracy(model, xh, yh)
        while True:
            goal = max(target, current - step)
            best = _best_proposal(model, arch, scores, initial, current, goal, base_loss, xh, yh, cost, config)
            if best is not None or step / 2 < config.min_step_ratio * start:
                break
            step /= 2
            log.info("netadapt %d: no group can reach %.4g %s; step halved to %.4g", it, goal, unit, step)
        if best is None:
            log.warning("netadapt: no group can reach %.4g %s; stopping at %.4g", goal, unit, current)
            break
        _, name, keep, size, model, arch, current, loss, acc = best
        if soft is None and config.finetune_steps > 0:
            # the unpruned teacher's outputs on the fine-tuning images: once, not once per iteration
            soft = teacher_logits(teacher, xt)
        model = finetune(model, xt, yt, config.finetune_steps, teacher, config.lr, config.batch_size,
                         seed=config.seed + it, teacher_out=soft)
        ft_loss, ft_acc = loss_and_accuracy(model, xh, yh)
        report.steps.append({"iteration": it, "group": name, "kept": keep, "was": size, "cost": current, "goal": goal,
                             "holdout_loss_before_ft": loss, "holdout_acc_before_ft": acc,
                             "holdout_acc": ft_acc, "holdout_loss": ft_loss})
        log.info("netadapt %d: %s %d->%d, %.4g %s, holdout acc %.3f", it, name, size, keep, current, unit, ft_acc)
    report.final_cost, report.final_arch = current, str(arch)
    if not math.isfinite(current) or current > target:
        log.warning("netadapt: stopped at %.4g %s above the target %.4g", current, unit, target)
    return model, arch, report
