"""Activation memory of a network on the kernels: one arena, planned once per input shape.

Buffers: the quantized input, then each layer's output (uint8 NHWC; the classifier's int32 logits). Step 0 writes
the input, step i + 1 runs layer i, which reads its input and (a project GEMM of a residual block) its block's input.
A buffer lives from the step that writes it to the last step that reads it; `_C.plan_arena` (csrc/ops.h, the planner
the C runtime uses too) places buffers whose lives overlap at disjoint offsets and lets the others share bytes. The
executor runs on exactly this plan, so `activation_plan(arch).arena_bytes` is the executor's activation memory,
input and output included. Not in the arena: an op's own scratch (the stem convolution's padded input or im2col
rows, kept per thread and reused; squeeze-excite's pooled and hidden vectors, a few hundred bytes), and the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nas.kernels import _C
from search_spaces import MEMORY_KINDS, Arch, layers

ALIGN = 64  # bytes: every buffer starts on a cache line


def wiring(names: Sequence[str], residual: Sequence[bool]) -> list[tuple[int, int | None]]:
    """(input, residual input) of each layer as indices of earlier layers' outputs (-1 = the network input): each
    layer reads the previous one's output; one with `residual` set also reads its block's input, the output
    before the block's first layer (blocks are the layers named `blocks.<id>.*`)."""
    wires, prev, block, block_input = [], -1, None, -1
    for i, (name, res) in enumerate(zip(names, residual, strict=True)):
        parts = name.split(".")
        if parts[0] == "blocks" and parts[1] != block:
            block, block_input = parts[1], prev
        wires.append((prev, block_input if res else None))
        prev = i
    return wires


@dataclass(frozen=True)
class MemoryPlan:
    """Where each activation buffer lives in the arena (buffer 0: the input; buffer i + 1: layer i's output)."""

    sizes: tuple[int, ...]  # bytes
    first: tuple[int, ...]  # the step that writes it
    last: tuple[int, ...]  # the last step that reads it
    offsets: tuple[int, ...]  # bytes from the arena's start
    arena_bytes: int  # the peak activation memory under this plan

    @property
    def unplanned_bytes(self) -> int:
        """One buffer per tensor, none reused: what the executor allocated before it had a planner."""
        return sum(self.sizes)

    def live_bytes(self) -> list[int]:
        """Bytes of the buffers live at each step (0 = input quantization, i + 1 = layer i): the least any
        layer-by-layer plan can need at that step."""
        steps = max(self.last) + 1
        return [sum(s for s, f, la in zip(self.sizes, self.first, self.last, strict=True) if f <= t <= la)
                for t in range(steps)]


def plan(sizes: Sequence[int], wires: Sequence[tuple[int, int | None]]) -> MemoryPlan:
    """The arena plan of a network whose input buffer has `sizes[0]` bytes and whose layer i (wired as `wires[i]`)
    writes `sizes[i + 1]` bytes."""
    if len(sizes) != len(wires) + 1:
        raise ValueError(f"sizes: expected {len(wires) + 1} buffers (input + one per layer), got {len(sizes)}")
    first = list(range(len(sizes)))
    last = list(first)
    for i, (src, res) in enumerate(wires):
        for b in (src, res):
            if b is not None:
                last[b + 1] = max(last[b + 1], i + 1)
    offsets, arena = _C.plan_arena([int(s) for s in sizes], first, last, ALIGN)
    return MemoryPlan(tuple(int(s) for s in sizes), tuple(first), tuple(last), tuple(offsets), int(arena))


def activation_plan(arch: Arch, batch: int = 1) -> MemoryPlan:
    """The executor's arena plan for `arch` at `batch` images, from the architecture alone (no weights)."""
    if batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch}")
    ls = layers(arch)
    sizes = [batch * arch.resolution ** 2 * arch.in_channels]
    for i, layer in enumerate(ls):
        # the classifier writes int32 logits
        sizes.append(batch * layer.out_hw ** 2 * layer.out_channels * (4 if i == len(ls) - 1 else 1))
    return plan(sizes, wiring([x.name for x in ls], [x.residual for x in ls]))


def peak_activation_bytes(arch: Arch, batch: int = 1) -> int:
    """Peak activation memory (bytes) of `arch` on the kernels: its arena, input and logits included."""
    return activation_plan(arch, batch).arena_bytes


def weight_bytes(arch: Arch) -> int:
    """Bytes of `arch`'s int8 weights as the kernels store them (one byte per weight; biases, scales and
    batch-norm folded away are not counted), as `QuantizedNetwork.weight_bytes` of its int8 network."""
    total = 0
    for layer in layers(arch):
        cin, cout, k = layer.in_channels, layer.out_channels, layer.kernel
        total += {"conv": k * k * cin * cout, "pw": cin * cout, "linear": cin * cout, "dw": k * k * cout,
                  "se": 2 * cout * layer.hidden, "pool": 0}[layer.op]
    return total


def cost(kind: str, arch: Arch) -> float:
    """`arch`'s cost in one of `search_spaces.MEMORY_KINDS` (bytes, batch 1)."""
    if kind == "peak_bytes":
        return peak_activation_bytes(arch)
    if kind == "weight_bytes":
        return weight_bytes(arch)
    raise ValueError(f"kind: expected one of {MEMORY_KINDS}, got {kind!r}")


__all__ = ["ALIGN", "MemoryPlan", "activation_plan", "cost", "peak_activation_bytes", "plan", "weight_bytes", "wiring"]
