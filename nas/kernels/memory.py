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

The stem fused into the first block (issue #33, MCUNetV2's patch-based first stage; fused mode only): where that
block has no expand layer and no residual, the stem runs inside its banded step (ops.h FusedBlock with a stem head),
so the stem output never exists either: stem -> dw -> project for a block without squeeze-excite, stem -> dw for one
with it (the step writes the depthwise output; SE and project follow as steps of their own). It is fused where
`stem_fuses` (ops.h ``stem_fused_pays``) says the step needs fewer bytes than the stem step and the block's steps
it replaces, and the network's arena is smaller with it than without (`stem_lowers_arena`); its band buffers
(`fused_stem_scratch`) are in the arena like any fused step's.

In place (issue #33, both modes): a step whose input no later step reads writes its output over it where ops.h
``in_place_pays`` says so (inside `_C.plan_arena`, for all three alike): squeeze-excite exactly over its input, a
stride-1 depthwise starting `in_place_headroom` bytes (a few rows; more on several threads, whose rows go in waves)
before it, so the step holds its input and those rows instead of two tensors. Not the depthwise of an
expand-ratio-1 block with a residual, whose input is kept for the add, nor one whose headroom is the whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nas.kernels import _C
from nas.kernels.fusion import FUSABLE, fused_name, fused_steps, fusion_groups
from nas.kernels.ops import FusedBlockSpec, conv_out_size
from search_spaces import MEMORY_KINDS, Arch, layers

ALIGN = 64  # bytes: every buffer starts on a cache line
NOT_IN_PLACE = int(_C.NOT_IN_PLACE)  # headroom of a step whose op cannot write over its input


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


def fused_scratch(batch: int, h: int, w: int, c: int, k: int, stride: int, expand: bool, threads: int,
                  band_rows: int = 0) -> int:
    """Arena bytes of a fused block's band buffers: `scratch_slots` slots of `_C.fused_scratch_bytes` each."""
    per = _C.fused_scratch_bytes(h, w, c, k, stride, expand, band_rows)
    return per * scratch_slots(threads, batch * conv_out_size(h, k, stride))


def fused_stem_scratch(batch: int, h: int, w: int, cin: int, stem_k: int, stem_stride: int, c: int, k: int,
                       stride: int, project: bool, threads: int, band_rows: int = 0) -> int:
    """Arena bytes of a stem-fused step's band buffers on `batch` network inputs of `h` x `w` x `cin`: `scratch_slots`
    slots of `_C.fused_stem_scratch_bytes` each (the stem's output rows of a band, the band's depthwise output when
    it has a `project`, the stem's padded or im2col rows)."""
    per = _C.fused_stem_scratch_bytes(h, w, cin, stem_k, stem_stride, c, k, stride, project, band_rows)
    oh = conv_out_size(conv_out_size(h, stem_k, stem_stride), k, stride)
    return per * scratch_slots(threads, batch * oh)


def fused_step_scratch(spec: FusedBlockSpec, shape: Sequence[int], threads: int) -> int:
    """`fused_scratch` (`fused_stem_scratch` with a stem) of a fused step of `spec` on uint8 NHWC input of `shape`:
    the bytes the executor's arena holds for it (and the latency tables time it with)."""
    n, h, w, cin = shape
    c, k, _ = spec.dw.weight.shape
    if spec.stem is not None:
        return fused_stem_scratch(n, h, w, cin, spec.stem.weight.shape[1], spec.stem.stride, c, k, spec.dw.stride,
                                  spec.project is not None, threads, spec.band_rows)
    return fused_scratch(n, h, w, c, k, spec.dw.stride, spec.expand is not None, threads, spec.band_rows)


def in_place_headroom(op: str, stride: int, w: int, c: int, k: int, threads: int) -> int:
    """Bytes a layer's output starts before its input when it runs in place (ops.h): 0 for squeeze-excite
    (`op` "se"), `_C.dw_in_place_headroom` for a stride-1 depthwise (`op` "dw") on rows of `w` x `c` bytes with a
    `k` x `k` kernel on `threads` threads, `NOT_IN_PLACE` for any other op (whether it does is `plan`'s to say)."""
    if op == "se":
        return 0
    if op == "dw" and stride == 1:
        return int(_C.dw_in_place_headroom(int(threads), int(w), int(c), int(k)))
    return NOT_IN_PLACE


def fusing_pays(x: int, expanded: int, dw: int, out: int, scratch: int, expand: bool, residual: bool,
                dw_headroom: int) -> bool:
    """Whether a fused block's step (its input, output and band buffers alive) holds no more bytes than its layers'
    fullest step: expand (input + expanded), depthwise (its input + its output, or + `dw_headroom` where it runs in
    place, + the block input it keeps for the residual) and project (depthwise output + output, + the block input
    for the residual). Sizes in bytes; `dw_headroom`: `in_place_headroom` of the depthwise.

    The rule is ops.h ``fused_block_pays``, the one the C runtime applies too, so all three decide alike."""
    return bool(_C.fused_block_pays(int(x), int(expanded), int(dw), int(out), int(scratch), bool(expand),
                                    bool(residual), int(dw_headroom)))


def block_fuses(batch: int, h: int, w: int, cin: int, mid: int, cout: int, kernel: int, stride: int, expand: bool,
                residual: bool, threads: int) -> bool:
    """Whether the default execution runs one inverted-residual block without squeeze-excite as one fused step:
    `batch` images of `h` x `w` x `cin`, expanded to `mid` channels (`expand`; for expand ratio 1 `mid` is `cin`),
    a `kernel` x `kernel` depthwise of `stride`, projected to `cout` (+ the block input when `residual`), on
    `threads` threads. `fusing_pays` on the block's buffer sizes and band-buffer scratch: the one per-block rule
    `activation_plan`, `QuantizedNetwork.steps` and the latency tables (`latency_models.ops.fuses`) share."""
    oh, ow = conv_out_size(h, kernel, stride), conv_out_size(w, kernel, stride)
    x, dw, out = batch * h * w * cin, batch * oh * ow * mid, batch * oh * ow * cout
    scratch = fused_scratch(batch, h, w, mid, kernel, stride, expand, threads)
    headroom = in_place_headroom("dw", stride, w, mid, kernel, threads)
    return fusing_pays(x, batch * h * w * mid if expand else 0, dw, out, scratch, expand, residual, headroom)


def stem_fuses(batch: int, h: int, w: int, cin: int, c: int, stem_k: int, stem_stride: int, kernel: int, stride: int,
               cout: int | None, residual: bool, threads: int) -> bool:
    """Whether the default execution runs the stem (`batch` images of `h` x `w` x `cin` -> `c` channels, `stem_k` x
    `stem_k`, `stem_stride`) fused with the first block's `kernel` x `kernel` depthwise of `stride` and its project
    to `cout` channels (None: a block with squeeze-excite, whose depthwise output the step writes), on `threads`
    threads: ops.h ``stem_fused_pays`` on the buffer sizes and band buffers (never for a `residual` block), the one
    rule `activation_plan`, `QuantizedNetwork.steps` and the C runtime share."""
    h1, w1 = conv_out_size(h, stem_k, stem_stride), conv_out_size(w, stem_k, stem_stride)
    oh, ow = conv_out_size(h1, kernel, stride), conv_out_size(w1, kernel, stride)
    x, stem, dw = batch * h * w * cin, batch * h1 * w1 * c, batch * oh * ow * c
    project = cout is not None
    out = batch * oh * ow * cout if project else dw
    scratch = fused_stem_scratch(batch, h, w, cin, stem_k, stem_stride, c, kernel, stride, project, threads)
    block_scratch = fused_scratch(batch, h1, w1, c, kernel, stride, False, threads) if project else 0
    headroom = in_place_headroom("dw", stride, w1, c, kernel, threads)
    return bool(_C.stem_fused_pays(x, stem, dw, out, scratch, project, bool(residual), headroom, block_scratch))


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
    in_place: tuple[bool, ...] = ()  # per buffer: written over the buffer its step reads (shares its bytes)

    @property
    def unplanned_bytes(self) -> int:
        """One buffer per tensor, none reused: what the executor allocated before it had a planner."""
        return sum(self.sizes)

    def live_bytes(self) -> list[int]:
        """Bytes in use at each step (0 = input quantization, i + 1 = layer i): the buffers live then, bytes that an
        in-place output shares with its input counted once. The least any plan with these in-place steps can need at
        that step."""
        steps = max(self.last) + 1
        out = []
        for t in range(steps):
            spans = sorted((o, o + s) for o, s, f, la in zip(self.offsets, self.sizes, self.first, self.last,
                                                              strict=True) if f <= t <= la)
            total, end = 0, 0
            for lo, hi in spans:  # the union's length
                total += max(0, hi - max(lo, end))
                end = max(end, hi)
            out.append(total)
        return out


def plan(sizes: Sequence[int], wires: Sequence[tuple[int, int | None]], scratch: Sequence[int] = (),
         headroom: Sequence[int] = ()) -> MemoryPlan:
    """The arena plan of a network whose input buffer has `sizes[0]` bytes and whose layer i (wired as `wires[i]`)
    writes `sizes[i + 1]` bytes; `scratch[i]` (if given and nonzero) are bytes step i alone uses besides;
    `headroom[i]` (if given): `in_place_headroom` of step i's op, which then runs in place where ops.h
    ``in_place_pays`` says so (`MemoryPlan.in_place`)."""
    if len(sizes) != len(wires) + 1:
        raise ValueError(f"sizes: expected {len(wires) + 1} buffers (input + one per layer), got {len(sizes)}")
    if scratch and len(scratch) != len(wires):
        raise ValueError(f"scratch: expected one entry per layer ({len(wires)}), got {len(scratch)}")
    if headroom and len(headroom) != len(wires):
        raise ValueError(f"headroom: expected one entry per layer ({len(wires)}), got {len(headroom)}")
    first = list(range(len(sizes)))
    last = list(first)
    for i, (src, res) in enumerate(wires):
        for b in (src, res):
            if b is not None:
                last[b + 1] = max(last[b + 1], i + 1)
    sizes = list(sizes)
    inputs = [0] + [src + 1 for src, _ in wires]  # the buffer each step reads (buffer 0: none)
    rooms = [NOT_IN_PLACE] + [int(h) for h in (headroom or [NOT_IN_PLACE] * len(wires))]
    for i, n in enumerate(scratch):
        if n:
            sizes.append(n)
            first.append(i + 1)
            last.append(i + 1)
            inputs.append(0)
            rooms.append(NOT_IN_PLACE)
    offsets, arena, in_place = _C.plan_arena([int(s) for s in sizes], first, last, ALIGN, inputs, rooms)
    return MemoryPlan(tuple(int(s) for s in sizes), tuple(first), tuple(last), tuple(offsets), int(arena),
                      tuple(bool(b) for b in in_place))


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
        if g[0] == 0:  # the stem and the first block's dw (-> project)
            stem, dw = ls[0], ls[1]
            project = ls[2] if len(g) == 3 else None
            return stem_fuses(batch, stem.in_hw, stem.in_hw, stem.in_channels, stem.out_channels, stem.kernel,
                              stem.stride, dw.kernel, dw.stride, None if project is None else project.out_channels,
                              ls[3 if project is None else 2].residual, threads)  # the block's project
        dw, project = ls[g[-2]], ls[g[-1]]
        return block_fuses(batch, dw.in_hw, dw.in_hw, ls[g[0]].in_channels, dw.in_channels, project.out_channels,
                           dw.kernel, dw.stride, len(g) == 3, project.residual, threads)

    names = [x.name for x in ls]
    steps = fused_steps(names, pays)
    if len(steps[0]) == 1:
        return steps
    return stem_lowers_arena(steps, fused_steps(names, pays, stem=False),
                             lambda s: _plan(ls, s, batch, threads).arena_bytes)


def stem_lowers_arena(steps: list, without: list, arena: Callable[[list], int]) -> list:
    """`steps` (whose first step is the stem fused into the first block) where the arena `arena(steps)` plans for
    them is smaller than for `without` (the same steps with the stem and that block as they run otherwise), else
    `without`. The second half of the stem's rule: ops.h ``stem_fused_pays`` compares one step with the steps it
    replaces, but the greedy placement can fit the steps around it worse (MobileNetV2-0.35@144 on 2 threads: every
    step <= 145,152 bytes, yet 174,848 with the stem fused against 145,152 without), so the stem fuses only where the
    arena shrinks. The C runtime decides alike (capi.cpp, both plans from plan_arena)."""
    return steps if arena(steps) < arena(without) else without


def activation_plan(arch: Arch, batch: int = 1, fused: bool = True, threads: int = 1) -> MemoryPlan:
    """The executor's arena plan for `arch` at `batch` images on `threads` threads, from the architecture alone (no
    weights): with the blocks `block_fuses` fuses (the default execution, `arch_steps`; their scratch grows with
    `threads`), or layer by layer (`fused=False`, as `QuantizedNetwork.run(fused=False)`)."""
    ls = layers(arch)
    return _plan(ls, _steps(ls, batch, fused, threads), batch, threads)


def _plan(ls: Sequence, groups: list[list[int]], batch: int, threads: int) -> MemoryPlan:
    """The arena plan of layers `ls` run as `groups` (steps)."""
    names = [x.name for x in ls]
    out_bytes = [batch * x.out_hw ** 2 * x.out_channels for x in ls]
    sizes = [batch * ls[0].in_hw ** 2 * ls[0].in_channels]
    scratch, headroom = [], []
    for g in groups:
        # the classifier writes int32 logits
        sizes.append(out_bytes[g[-1]] * (4 if g[-1] == len(ls) - 1 else 1))
        x = ls[g[0]]
        dw = next((ls[i] for i in g if ls[i].op == "dw"), None) if len(g) > 1 else None
        if dw is None:
            scratch.append(0)
        elif x.op == "conv":  # the stem fused into the first block
            scratch.append(fused_stem_scratch(batch, x.in_hw, x.in_hw, x.in_channels, x.kernel, x.stride,
                                              dw.in_channels, dw.kernel, dw.stride, ls[g[-1]].op != "dw", threads))
        else:
            scratch.append(fused_scratch(batch, dw.in_hw, dw.in_hw, dw.in_channels, dw.kernel, dw.stride, len(g) == 3,
                                         threads))
        headroom.append(NOT_IN_PLACE if dw is not None else
                        in_place_headroom(x.op, x.stride, x.in_hw, x.in_channels, x.kernel, threads))
    wires = wiring([fused_name(names, g) for g in groups], [len(g) == 1 and ls[g[0]].residual for g in groups])
    return plan(sizes, wires, scratch, headroom)


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


__all__ = ["ALIGN", "FUSABLE", "NOT_IN_PLACE", "MemoryPlan", "activation_plan", "arch_steps", "block_fuses", "cost",
           "fused_name", "fused_scratch", "fused_step_scratch", "fused_steps", "fusing_pays", "fusion_groups",
           "fused_stem_scratch", "in_place_headroom", "peak_activation_bytes", "plan", "scratch_slots", "stem_fuses",
           "stem_lowers_arena",
           "weight_bytes", "wiring"]
