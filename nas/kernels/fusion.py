"""Which layers the kernels executor runs as one fused step, from layer names alone (pure Python: no `_C`).

The latency tables (`latency_models.ops`) name fused blocks with `FUSED_OPS`; `nas.kernels.memory` decides which
blocks actually fuse (`memory.block_fuses`, from their shapes) and re-exports these helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

FUSABLE = (("expand", "dw", "project"), ("dw", "project"))  # a block's layers (by name) that fuse into one op
FUSED_OPS = ("mbconv", "mbconv1")  # latency-table op of a fused block with / without its expand layer
# The first block's layers the stem fuses with (issue #33): a block without expand runs dw -> project in the stem's
# step; one with squeeze-excite only its dw (SE needs the whole depthwise output; SE and project run after).
STEM_FUSABLE = {("dw", "project"): 2, ("dw", "se", "project"): 1}  # roles -> how many of them join the stem


def fusion_groups(names: Sequence[str]) -> list[list[int]]:
    """The executor's steps with fused blocks: indices of the layers each step runs, in order. A block (layers
    `blocks.<id>.*`) whose layers are exactly expand -> dw -> project or dw -> project is one step; every other layer
    (and every layer of a block with squeeze-excite, which needs the whole depthwise output) is a step of its own."""
    parts = [n.split(".") for n in names]
    groups: list[list[int]] = []
    i = 0
    while i < len(names):
        j = i
        if parts[i][0] == "blocks":
            while j < len(names) and parts[j][:2] == parts[i][:2]:
                j += 1
        if j > i and tuple(p[-1] for p in parts[i:j]) in FUSABLE:
            groups.append(list(range(i, j)))
            i = j
        else:
            groups.append([i])
            i += 1
    return groups


def stem_group(names: Sequence[str]) -> list[int] | None:
    """The layers a stem-fused step would run (indices): the stem (layer 0, named ``stem``) and the first layers of
    the block after it as `STEM_FUSABLE` says, or None where that block does not have that form."""
    if len(names) < 2 or names[0] != "stem" or names[1].split(".")[0] != "blocks":
        return None
    block = names[1].split(".")[:2]
    j = 1
    while j < len(names) and names[j].split(".")[:2] == block:
        j += 1
    joined = STEM_FUSABLE.get(tuple(n.split(".")[-1] for n in names[1:j]))
    return None if joined is None else list(range(joined + 1))


def fused_steps(names: Sequence[str], pays: Callable[[list[int]], bool], stem: bool = True) -> list[list[int]]:
    """The executor's steps: the stem fused into the first block (`stem_group`) where `pays(group)` says so (and
    `stem`), then `fusion_groups` of the other layers with each group for which `pays(group)` is false split into
    one step per layer. `pays` tells the two kinds apart by the group's first layer (the stem: index 0)."""
    group = stem_group(names) if stem else None
    start = len(group) if group is not None and pays(group) else 0
    rest = [[start + i for i in g] for g in fusion_groups(names[start:])]
    return ([group] if start else []) + [s for g in rest for s in ([g] if len(g) == 1 or pays(g) else [[i] for i in g])]


def fused_name(names: Sequence[str], group: Sequence[int]) -> str:
    """The step name of a group: the layer's own name, `blocks.<id>.fused` for a fused block, `stem.fused` for the
    stem fused into the first block."""
    return names[group[0]] if len(group) == 1 else ".".join(names[group[0]].split(".")[:2]) + ".fused"


__all__ = ["FUSABLE", "FUSED_OPS", "STEM_FUSABLE", "fused_name", "fused_steps", "fusion_groups", "stem_group"]
