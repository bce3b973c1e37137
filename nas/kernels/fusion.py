"""Which layers the kernels executor runs as one fused step, from layer names alone (pure Python: no `_C`).

The latency tables (`latency_models.ops`) name fused blocks with `FUSED_OPS`; `nas.kernels.memory` decides which
blocks actually fuse (`memory.block_fuses`, from their shapes) and re-exports these helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

FUSABLE = (("expand", "dw", "project"), ("dw", "project"))  # a block's layers (by name) that fuse into one op
FUSED_OPS = ("mbconv", "mbconv1")  # latency-table op of a fused block with / without its expand layer


def fusion_groups(names: Sequence[str]) -> list[list[int]]:
    """The executor's steps with fused blocks: indices of the layers each step runs, in order. A block (layers
    `blocks.<id>.*`) whose layers are exactly expand -> dw -> project or dw -> project is one step; every other layer
    (and every layer of a block with squeeze-excite, which needs the whole depthwise output) is a step of its own."""
    groups: list[list[int]] = []
    i = 0
    while i < len(names):
        parts = names[i].split(".")
        j = i
        if parts[0] == "blocks":
            while j < len(names) and names[j].split(".")[:2] == parts[:2]:
                j += 1
        if j > i and tuple(n.split(".")[-1] for n in names[i:j]) in FUSABLE:
            groups.append(list(range(i, j)))
            i = j
        else:
            groups.append([i])
            i += 1
    return groups


def fused_steps(names: Sequence[str], pays: Callable[[list[int]], bool]) -> list[list[int]]:
    """`fusion_groups(names)` with each group for which `pays(group)` is false split into one step per layer."""
    return [s for g in fusion_groups(names) for s in ([g] if len(g) == 1 or pays(g) else [[i] for i in g])]


def fused_name(names: Sequence[str], group: Sequence[int]) -> str:
    """The step name of a group: the layer's own name, or `blocks.<id>.fused` for a fused block."""
    return names[group[0]] if len(group) == 1 else ".".join(names[group[0]].split(".")[:2]) + ".fused"


__all__ = ["FUSABLE", "FUSED_OPS", "fused_name", "fused_steps", "fusion_groups"]
