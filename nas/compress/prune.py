"""Structured channel pruning of MBConv networks that really removes channels, and magnitude pruning.

Channel groups are derived from the architecture's data flow (as Torch-Pruning derives them from its dependency
graph): every tensor slice that must lose the same channel index is in one `ChannelGroup`.

- `mid.i`: the expansion width of block i (expand conv out, depthwise, SE in/out, project in).
- `width.*`: a chain of block outputs joined by residual adds, plus every consumer of that chain (the stem output
  starts chain `width.stem`). A block without expansion (`ds`) runs its depthwise on its input group.
- `head`, `hidden`: the 1x1 head width and the optional pre-classifier linear width.

`prune_channels(model, arch, keep)` removes channels and returns a new (model, arch) whose weights are copies;
`prune(model, arch, ratio, importance=...)` picks the channels to keep by L1 norm, batch-norm gamma or Taylor
importance. `magnitude_prune` zeroes the smallest weights (storage compression only: dense kernels run at the
same speed on a sparse tensor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from search_spaces import Arch, build
from search_spaces.cost import se_channels

IMPORTANCES = ("l1", "bn", "taylor")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class ChannelGroup:
    """Channels that are pruned together: every (state-dict key, dim) slice indexed by the group's channels."""

    name: str
    size: int
    slices: list[tuple[str, int]] = field(default_factory=list)
    bns: list[str] = field(default_factory=list)  # batch-norm prefixes producing this group's channels
    sets: list[tuple[str, int]] = field(default_factory=list)  # arch fields: ("stem"|"out"|"mid"|"head"|"hidden", i)

    def add_bn(self, prefix: str) -> None:
        self.bns.append(prefix)
        self.slices.extend((f"{prefix}.{k}", 0) for k in _BN_KEYS)


def channel_groups(arch: Arch) -> list[ChannelGroup]:
    """The prunable channel groups of `arch` (SE squeeze widths are dependent, see `prune_channels`)."""
    groups: list[ChannelGroup] = []

    def new(name: str, size: int, sets: tuple[str, int]) -> ChannelGroup:
        g = ChannelGroup(name, size, sets=[sets])
        groups.append(g)
        return g

    cur = new("width.stem", arch.stem_channels, ("stem", -1))
    cur.slices.append(("stem.conv.weight", 0))
    cur.add_bn("stem.bn")
    cin = arch.stem_channels
    for i, b in enumerate(arch.blocks()):
        p = f"blocks.{i}"
        if b.expand != 1:
            cur.slices.append((f"{p}.expand.conv.weight", 1))
            mid = new(f"mid.{i}", b.mid(cin), ("mid", i))
            mid.slices.append((f"{p}.expand.conv.weight", 0))
            mid.add_bn(f"{p}.expand.bn")
        else:
            mid = cur
        mid.slices.append((f"{p}.dw.conv.weight", 0))
        mid.add_bn(f"{p}.dw.bn")
        if b.se:
            mid.slices += [(f"{p}.se.reduce.weight", 1), (f"{p}.se.expand.weight", 0), (f"{p}.se.expand.bias", 0)]
        mid.slices.append((f"{p}.project.conv.weight", 1))
        residual = b.stride == 1 and cin == b.out_channels
        if not residual:
            cur = new(f"width.{i}", b.out_channels, ("out", i))
        else:
            cur.sets.append(("out", i))
        cur.slices.append((f"{p}.project.conv.weight", 0))
        cur.add_bn(f"{p}.project.bn")
        cin = b.out_channels
    cur.slices.append(("head.conv.weight", 1))
    head = new("head", arch.head_channels, ("head", -1))
    head.slices.append(("head.conv.weight", 0))
    head.add_bn("head.bn")
    if arch.head_hidden:
        head.slices.append(("hidden.weight", 1))
        hidden = new("hidden", arch.head_hidden, ("hidden", -1))
        hidden.slices += [("hidden.weight", 0), ("hidden.bias", 0), ("classifier.weight", 1)]
    else:
        head.slices.append(("classifier.weight", 1))
    return groups


def pruned_arch(arch: Arch, sizes: dict[str, int]) -> Arch:
    """`arch` with group widths replaced by `sizes` (group name -> channels); expansion widths become explicit.

    Raises ValueError if a width is out of range or if the new widths would create a residual connection that
    the original network does not have (a stride-1 block whose input and output widths become equal).
    """
    groups = {g.name: g for g in channel_groups(arch)}
    unknown = set(sizes) - set(groups)
    if unknown:
        raise ValueError(f"prune: unknown channel groups {sorted(unknown)} (have {sorted(groups)})")
    stem, head, hidden = arch.stem_channels, arch.head_channels, arch.head_hidden
    blocks = list(arch.blocks())
    cin = arch.stem_channels
    mids = []
    for b in blocks:
        mids.append(b.mid(cin))
        cin = b.out_channels
    outs = [b.out_channels for b in blocks]
    for name, n in sizes.items():
        g = groups[name]
        if not 1 <= int(n) <= g.size:
            raise ValueError(f"prune: group {name!r} keeps {n} channels, expected 1..{g.size}")
        for kind, i in g.sets:
            if kind == "stem":
                stem = int(n)
            elif kind == "out":
                outs[i] = int(n)
            elif kind == "mid":
                mids[i] = int(n)
            elif kind == "head":
                head = int(n)
            else:
                hidden = int(n)
    new_blocks = []
    cin_old, cin_new = arch.stem_channels, stem
    for i, b in enumerate(blocks):
        was_res = b.stride == 1 and cin_old == b.out_channels
        if b.stride == 1 and not was_res and cin_new == outs[i]:
            raise ValueError(f"prune: block {i} would get a residual connection (input and output both {outs[i]} "
                             f"channels); keep a different number of channels")
        mid = mids[i] if b.expand != 1 else 0
        new_blocks.append(replace(b, out_channels=outs[i], mid_channels=mid))
        cin_old, cin_new = b.out_channels, outs[i]
    it = iter(new_blocks)
    stages = tuple(tuple(next(it) for _ in stage) for stage in arch.stages)
    return arch.replace(stem_channels=stem, stages=stages, head_channels=head, head_hidden=hidden)


def _se_widths(arch: Arch) -> list[int]:
    out, cin = [], arch.stem_channels
    for b in arch.blocks():
        out.append(se_channels(arch, cin, b.mid(cin), b.se) if b.se else 0)
        cin = b.out_channels
    return out


def prune_channels(model: nn.Module, arch: Arch, keep: dict[str, Iterable[int]]) -> tuple[nn.Module, Arch]:
    """A new (model, arch) keeping, for each named group, the listed channel indices (other groups untouched).

    Weights are copied (the input model is not changed). SE squeeze widths follow the new expansion widths as
    `search_spaces` derives them; when a squeeze width shrinks, its least important hidden units (L1 of their
    weights) are dropped, and when it grows the new units are zero (an exact no-op).
    """
    groups = {g.name: g for g in channel_groups(arch)}
    idx = {}
    for name, ch in keep.items():
        if name not in groups:
            raise ValueError(f"prune: unknown channel group {name!r} (have {sorted(groups)})")
        t = torch.as_tensor(sorted(set(int(c) for c in ch)), dtype=torch.long)
        if len(t) == 0 or t[0] < 0 or t[-1] >= groups[name].size:
            raise ValueError(f"prune: group {name!r} keeps indices outside 0..{groups[name].size - 1} or none")
        idx[name] = t
    new_arch = pruned_arch(arch, {n: len(t) for n, t in idx.items()})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, t in idx.items():
        for key, dim in groups[name].slices:
            state[key] = state[key].index_select(dim, t)
    # SE hidden units: a dependent width.
    for i, (old, new) in enumerate(zip(_se_widths(arch), _se_widths(new_arch), strict=True)):
        if old == new or not old:
            continue
        p = f"blocks.{i}.se"
        rw, rb, ew = state[f"{p}.reduce.weight"], state[f"{p}.reduce.bias"], state[f"{p}.expand.weight"]
        if new < old:
            score = rw.abs().flatten(1).sum(1) + ew.abs().transpose(0, 1).flatten(1).sum(1)
            t = score.topk(new).indices.sort().values
            rw, rb, ew = rw[t], rb[t], ew[:, t]
        else:
            pad = new - old
            rw = torch.cat([rw, rw.new_zeros((pad, *rw.shape[1:]))])
            rb = torch.cat([rb, rb.new_zeros(pad)])
            ew = torch.cat([ew, ew.new_zeros((ew.shape[0], pad, *ew.shape[2:]))], 1)
        state[f"{p}.reduce.weight"], state[f"{p}.reduce.bias"], state[f"{p}.expand.weight"] = rw, rb, ew
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)
    new_model = build(new_arch, dropout)
    new_model.load_state_dict(state)
    new_model.train(model.training)
    return new_model, new_arch


def taylor_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """First-order Taylor importance per parameter element: (sum over batches of p * dL/dp)^2.

    Molchanov et al. 2019; summed per channel over a group's slices by `importance`.
    """
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.detach() * p.grad
    model.zero_grad(set_to_none=True)
    model.train(was)
    return {k: v.square() for k, v in acc.items()}


def importance(model: nn.Module, arch: Arch, method: str = "l1",
               batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group: group name -> tensor of `size` non-negative scores.

    - `l1`: sum over the group's weight slices of each channel's L1 norm, each slice normalised by its mean.
    - `bn`: sum of |gamma| of the batch norms producing the channel (groups with none fall back to `l1`).
    - `taylor`: first-order Taylor scores summed over the group's parameter slices (needs `batches`); ties
      (e.g. no gradient through saturated units) are broken by the `l1` score.
    A channel whose every slice is zero scores 0 under each method.
    """
    if method not in IMPORTANCES:
        raise ValueError(f"importance: expected one of {IMPORTANCES}, got {method!r}")
    state = model.state_dict()
    params = dict(model.named_parameters())
    if method == "taylor":
        if batches is None:
            raise ValueError("importance: 'taylor' needs batches of (x, y)")
        taylor = taylor_scores(model, batches)
    out = {}
    for g in channel_groups(arch):
        score = torch.zeros(g.size)
        if method == "bn" and g.bns:
            for prefix in g.bns:
                score += state[f"{prefix}.weight"].detach().abs().float()
        else:
            for key, dim in g.slices:
                if key not in params or key.endswith("bias") or ".bn." in key:
                    continue
                s = state[key].detach().abs().transpose(0, dim).reshape(g.size, -1).sum(1).float()
                if s.mean() > 0:
                    score += s / s.mean()
            if method == "taylor":  # ties (no gradient signal through saturated units) broken by magnitude
                t = torch.zeros(g.size, dtype=torch.float64)
                for key, dim in g.slices:
                    if key in taylor:
                        t += taylor[key].double().transpose(0, dim).reshape(g.size, -1).sum(1)
                score = (t + 1e-9 * float(t.max().clamp_min(1e-30)) * score.double() / max(float(score.max()), 1e-30))
        out[g.name] = score.float() if method != "taylor" else score
    return out


def _fix_residual_collisions(arch: Arch, sizes: dict[str, int]) -> dict[str, int]:
    """Nudge output widths so that no stride-1 block gains a residual connection the original lacks."""
    groups = {g.name: g for g in channel_groups(arch)}
    for _ in range(64):
        try:
            pruned_arch(arch, sizes)
            return sizes
        except ValueError as exc:
            if "residual" not in str(exc):
                raise
            i = int(str(exc).split("block ")[1].split(" ")[0])
            name = next(g.name for g in groups.values() if ("out", i) in g.sets)
            n = sizes.get(name, groups[name].size)
            sizes[name] = n + 1 if n < groups[name].size else n - 1
    raise ValueError("prune: could not avoid a new residual connection")


def prune(model: nn.Module, arch: Arch, ratio: float | dict[str, float], importance_method: str = "l1",
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, groups: Iterable[str] | None = None,
          divisor: int = 1) -> tuple[nn.Module, Arch]:
    """Remove `ratio` of the channels of each group (or per-group ratios), keeping the most important.

    `groups` limits pruning to some groups (default: every `mid.*` and `width.*` group and `head`); kept widths
    are rounded to a multiple of `divisor` (at least `divisor`).
    """
    scores = importance(model, arch, importance_method, batches)
    names = list(groups) if groups is not None else [n for n in scores if n != "hidden"]
    sizes = {}
    for n in names:
        r = ratio[n] if isinstance(ratio, dict) else ratio
        if not 0 <= r < 1:
            raise ValueError(f"prune: ratio for {n!r} must be in [0, 1), got {r}")
        size = len(scores[n])
        k = max(divisor, round(size * (1 - r) / divisor) * divisor) if r else size
        sizes[n] = min(size, k)
    sizes = _fix_residual_collisions(arch, sizes)
    keep = {n: scores[n].topk(k).indices for n, k in sizes.items()}
    return prune_channels(model, arch, keep)


@dataclass
class SparsityReport:
    """Result of `magnitude_prune`: the fraction of zero weights and the storage it would take sparse."""

    sparsity: float
    nonzero: int
    total: int
    dense_bytes: int
    csr_bytes: int  # int8 values + uint16 column indices + int32 row pointers


def magnitude_prune(model: nn.Module, sparsity: float) -> tuple[nn.Module, SparsityReport]:
    """A copy of `model` with the smallest `sparsity` fraction of conv/linear weights (per layer) set to zero.

    Honest note: this shrinks storage (compressed / sparse formats) but not dense-kernel latency; structured
    `prune` is what makes the network faster.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"magnitude_prune: sparsity must be in [0, 1), got {sparsity}")
    import copy

    out = copy.deepcopy(model)
    nz = total = csr = 0
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(w.numel() * sparsity)
                if k:
                    thr = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= thr] = 0
                n = int((w != 0).sum())
                nz, total = nz + n, total + w.numel()
                csr += 3 * n + 4 * (w.shape[0] + 1)
    return out, SparsityReport(1 - nz / max(total, 1), nz, total, total, csr)
