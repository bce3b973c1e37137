"""Activation memory of a network on the kernels: one arena, planned once per input shape.

Buffers: the quantized input, then each layer's output (uint8 NHWC; the classifier's int32 logits). Step 0 writes
the input, step i + 1 runs layer i, which reads its input and (a project GEMM of a residual block) its block's input.
A buffer lives from the step that writes it to the last step that reads it; `_C.plan_arena` (csrc/ops.h, the planner
the C runtime uses too) places buffers whose lives overlap at disjoint offsets and lets the others share bytes. The
executor runs on exactly this plan (layer by layer: `activation_plan(arch, fused=False)`), so its `arena_bytes` is
the executor's activation memory, input and output included. Not in the arena: an op's own scratch (the stem
convolution's padded input or im2col rows, kept per thread and reused; squeeze-excite's pooled and hidden vectors, a
few hundred bytes), and the weights.

Fused blocks (the default, issue #33; `fused=False` plans layer by layer): an inverted-residual block without
squeeze-excite runs as one step (ops.h FusedBlock, in bands of rows), so its expanded and depthwise tensors never
exist; the arena holds the block's input and output, plus the fused op's band buffers for its step: one slot per
thread (`threads`, at most one per output row), each `_C.fused_scratch_bytes` long. A block is fused only where that
holds no more bytes than its layers would at their fullest step (`fusing_pays`, ops.h fused_block_pays: not so for
small late blocks whose band is the whole image, their buffers as big as the tensors they replace); the executor and
the C runtime (capi.cpp) decide with the same rule (here `block_fuses`, from one block's shapes, which the executor's
`steps` and the latency tables' fused ops use too), so the prediction stays exact, and `peak_activation_bytes(arch)`
is the arena the default execution (Python `QuantizedNetwork.run` or the C runtime) allocates for one image on one
thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


FUSABLE = (("expand", "dw", "project"), ("dw", "project"))  # a block's layers (by name) that fuse into one op


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


def fused_scratch(batch: int, h: int, w: int, c: int, k: int, stride: int, expand: bool, threads: int) -> int:
    """Arena bytes of a fused block's band buffers: `scratch_slots` slots of `_C.fused_scratch_bytes` each."""
    per = _C.fused_scratch_bytes(h, w, c, k, stride, expand)
    return per * scratch_slots(threads, batch * ((h - 1) // stride + 1))


def fusing_pays(x: int, expanded: int, dw: int, out: int, scratch: int, expand: bool, residual: bool) -> bool:
    """Whether a fused block's step (its input, output and band buffers alive) holds no more bytes than its layers'
    fullest step: expand (input + expanded), depthwise (its input + its output, + the block input it keeps for the
    residual) and project (depthwise output + output, + the block input for the residual). Sizes in bytes.

    The rule is ops.h ``fused_block_pays``, the one the C runtime applies too, so all three decide alike."""
    return bool(_C.fused_block_pays(int(x), int(expanded), int(dw), int(out), int(scratch), bool(expand),
                                    bool(residual)))


def block_fuses(batch: int, h: int, w: int, cin: int, mid: int, cout: int, kernel: int, stride: int, expand: bool,
                residual: bool, threads: int) -> bool:
    """Whether the default execution runs one inverted-residual block without squeeze-excite as one fused step:
    `batch` images of `h` x `w` x `cin`, expanded to `mid` channels (`expand`; for expand ratio 1 `mid` is `cin`),
    a `kernel` x `kernel` depthwise of `stride`, projected to `cout` (+ the block input when `residual`), on
    `threads` threads. `fusing_pays` on the block's buffer sizes and band-buffer scratch: the one per-block rule
    `activation_plan`, `QuantizedNetwork.steps` and the latency tables (`latency_models.ops.fuses`) share."""
    oh = (h + 2 * (kernel // 2) - kernel) // stride + 1  # ops.out_shape of the depthwise (padding k // 2)
    ow = (w + 2 * (kernel // 2) - kernel) // stride + 1
    x, dw, out = batch * h * w * cin, batch * oh * ow * mid, batch * oh * ow * cout
    scratch = fused_scratch(batch, h, w, mid, kernel, stride, expand, threads)
    return fusing_pays(x, batch * h * w * mid if expand else 0, dw, out, scratch, expand, residual)


def fused_name(names: Sequence[str], group: Sequence[int]) -> str:
    """The step name of a group: the layer's own name, or `blocks.<id>.fused` for a fused block."""
    return names[group[0]] if len(group) == 1 else ".".join(names[group[0]].split(".")[:2]) + ".fused"


def scratch_slots(threads: int, rows: int) -> int:
    """Band-buffer slots a fused step gets: one per thread, at most one per output row (batch x height)."""
    return int(_C.fused_scratch_slots(int(threads), int(rows)))  # ops.h, as the C runtime counts them


@dataclass(frozen=True)
class MemoryPlan:
    """Where each activation buffer lives in the arena (buffer 0: the input; buffer i + 1: step i's output, a step
    being a layer or a fused block; then the fused steps' scratch, in step order)."""

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


def plan(sizes: Sequence[int], wires: Sequence[tuple[int, int | None]], scratch: Sequence[int] = ()) -> MemoryPlan:
    """The arena plan of a network whose input buffer has `sizes[0]` bytes and whose layer i (wired as `wires[i]`)
    writes `sizes[i + 1]` bytes; `scratch[i]` (if given and nonzero) are bytes step i alone uses besides."""
    if len(sizes) != len(wires) + 1:
        raise ValueError(f"sizes: expected {len(wires) + 1} buffers (input + one per layer), got {len(sizes)}")
    if scratch and len(scratch) != len(wires):
        raise ValueError(f"scratch: expected one entry per layer ({len(wires)}), got {len(scratch)}")
    first = list(range(len(sizes)))
    last = list(first)
    for i, (src, res) in enumerate(wires):
        for b in (src, res):
            if b is not None:
                last[b + 1] = max(last[b + 1], i + 1)
    sizes = list(sizes)
    for i, n in enumerate(scratch):
        if n:
            sizes.append(n)
            first.append(i + 1)
            last.append(i + 1)
    offsets, arena = _C.plan_arena([int(s) for s in sizes], first, last, ALIGN)
    return MemoryPlan(tuple(int(s) for s in sizes), tuple(first), tuple(last), tuple(offsets), int(arena))


def arch_steps(arch: Arch, batch: int = 1, fused: bool = True, threads: int = 1) -> list[list[int]]:
    """The executor's steps for `arch` at `batch` images on `threads` threads, as lists of indices into
    `search_spaces.layers(arch)`: each block `block_fuses` fuses is one step of its layers, every other layer a
    step of its own (`fused=False`: every layer alone)."""
    return _steps(layers(arch), batch, fused, threads)


def _steps(ls: Sequence, batch: int, fused: bool, threads: int) -> list[list[int]]:
    if batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch}")
    if threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads}")
    if not fused:
        return [[i] for i in range(len(ls))]

    def pays(g: list[int]) -> bool:
        dw, project = ls[g[-2]], ls[g[-1]]
        return block_fuses(batch, dw.in_hw, dw.in_hw, ls[g[0]].in_channels, dw.in_channels, project.out_channels,
                           dw.kernel, dw.stride, len(g) == 3, project.residual, threads)

    return fused_steps([x.name for x in ls], pays)


def activation_plan(arch: Arch, batch: int = 1, fused: bool = True, threads: int = 1) -> MemoryPlan:
    """The executor's arena plan for `arch` at `batch` images on `threads` threads, from the architecture alone (no
    weights): with the blocks `block_fuses` fuses (the default execution, `arch_steps`; their scratch grows with
    `threads`), or layer by layer (`fused=False`, as `QuantizedNetwork.run(fused=False)`)."""
    ls = layers(arch)
    groups = _steps(ls, batch, fused, threads)
    names = [x.name for x in ls]
    out_bytes = [batch * x.out_hw ** 2 * x.out_channels for x in ls]
    sizes = [batch * arch.resolution ** 2 * arch.in_channels]
    scratch = []
    for g in groups:
        # the classifier writes int32 logits
        sizes.append(out_bytes[g[-1]] * (4 if g[-1] == len(ls) - 1 else 1))
        dw = ls[g[-2]] if len(g) > 1 else None
        scratch.append(0 if dw is None else fused_scratch(batch, dw.in_hw, dw.in_hw, dw.in_channels, dw.kernel,
                                                          dw.stride, len(g) == 3, threads))
    wires = wiring([fused_name(names, g) for g in groups], [len(g) == 1 and ls[g[0]].residual for g in groups])
    return plan(sizes, wires, scratch)


def peak_activation_bytes(arch: Arch, batch: int = 1, fused: bool = True, threads: int = 1) -> int:
    """Peak activation memory (bytes) of `arch` on the kernels: the arena its default execution allocates (fused
    blocks where they pay; `fused=False`: layer by layer) on `threads` threads, input and logits included."""
    return activation_plan(arch, batch, fused, threads).arena_bytes


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


__all__ = ["ALIGN", "FUSABLE", "MemoryPlan", "activation_plan", "arch_steps", "block_fuses", "cost", "fused_name",
           "fused_scratch", "fused_steps", "fusing_pays", "fusion_groups", "peak_activation_bytes", "plan",
           "scratch_slots", "weight_bytes", "wiring"]
