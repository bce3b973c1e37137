"""Op configurations: the unit of a latency table, enumerated from search spaces and read off architectures.

An `OpKey` is everything that changes an op's run time on a given device: op type, input and output size,
channels, kernel, stride, fused activation, fused residual add and the SE squeeze width. The number of bits,
the thread count and the ISA are properties of the whole table (the device spec), not of a row.

Fused blocks (issue #33). The kernel executor runs an inverted-residual block without squeeze-excite as ONE op
(`nas.kernels.ops.FusedBlockSpec`) wherever `nas.kernels.memory.block_fuses` says fusing pays at its thread count.
Such a block has a key of its own besides its three (or two) layer keys:

- `op`: ``"mbconv"`` for expand 1x1 -> depthwise -> project 1x1, ``"mbconv1"`` for an expand-ratio-1 block
  (depthwise -> project, no expand layer). Two op types, not a flag: a pruned block can expand to as many channels
  as it takes in, so ``hidden == in_channels`` alone cannot tell the two apart.
- `in_hw`, `out_hw`: the block's input and output size; `in_channels`, `out_channels`: its input and output width;
- `hidden`: the depthwise width (the expanded width; for ``"mbconv1"`` equal to `in_channels`);
- `kernel`, `stride`: the depthwise's; `act`: the block's activation (expand and depthwise; the project has none);
- `residual`: the project adds the block input (stride 1 and equal widths).

`fused_block_op` builds the key of a block, `fused_layers` gives back its layer keys, `fuses` is the executor's
decision (batch 1). The stem fused into the first block (issue #33, `nas.kernels.memory.stem_fuses`) has no key
of its own: it is priced as the steps it replaces (the stem key, then the first block as `executor_block_ops` lists
it), which it matched within 0.98-1.03 on an AMD Zen 3 (benchmarks/RESULTS_memory.md); whether it fuses depends on
the whole network's arena (`memory.stem_lowers_arena`), which a search's prediction should not plan twice per
network. `enumerate_ops(..., device=spec)` adds the fused keys of a `kernels` device at its thread count
(`DeviceSpec.fused_threads`); other devices run layer by layer and get none. The layer keys of fused blocks stay
(`fused=False` runs them, and interpolation uses them).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from nas.kernels.fusion import FUSED_OPS
from search_spaces import Arch, Block, Layer, SearchSpace, layers
from search_spaces.cost import se_channels

if TYPE_CHECKING:  # devices imports this module
    from latency_models.devices import DeviceSpec

KEY_COLUMNS = ("op", "in_hw", "out_hw", "in_channels", "out_channels", "kernel", "stride", "act", "residual",
               "hidden")


class OpKey(NamedTuple):
    """One distinct op configuration (a row key of a latency table)."""

    op: str
    in_hw: int
    out_hw: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    act: str
    residual: bool
    hidden: int

    @classmethod
    def of(cls, layer: Layer) -> OpKey:
        return cls(layer.op, layer.in_hw, layer.out_hw, layer.in_channels, layer.out_channels, layer.kernel,
                   layer.stride, layer.act, layer.residual, layer.hidden)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the op (the convention of `search_spaces.cost`)."""
        o2 = self.out_hw * self.out_hw
        if self.op == "conv":
            return o2 * self.in_channels * self.out_channels * self.kernel * self.kernel
        if self.op == "pw":
            return o2 * self.in_channels * self.out_channels
        if self.op == "dw":
            return o2 * self.out_channels * self.kernel * self.kernel
        if self.op == "se":
            return 2 * self.in_channels * self.hidden
        if self.op == "linear":
            return self.in_channels * self.out_channels
        if self.op in FUSED_OPS:  # its layers' MACs: expand (mbconv only), depthwise, project
            expand = self.in_hw * self.in_hw * self.in_channels * self.hidden if self.op == "mbconv" else 0
            return expand + o2 * self.hidden * (self.kernel * self.kernel + self.out_channels)
        return 0

    def describe(self) -> str:
        extra = (f" hidden={self.hidden}" if self.hidden else "") + (" +res" if self.residual else "")
        return (f"{self.op} {self.in_hw}x{self.in_hw}x{self.in_channels}->{self.out_hw}x{self.out_hw}x"
                f"{self.out_channels} k{self.kernel} s{self.stride} {self.act}{extra}")


def _out(hw: int, stride: int) -> int:
    return (hw - 1) // stride + 1


def block_ops(arch_like: Arch | SearchSpace, cin: int, hw: int, b: Block) -> list[OpKey]:
    """The ops of one MBConv block with input width `cin` at `hw` x `hw`, as `search_spaces.layers` lists them."""
    ops = []
    mid = b.mid(cin)
    if b.expand != 1:
        ops.append(OpKey("pw", hw, hw, cin, mid, 1, 1, b.act, False, 0))
    ohw = _out(hw, b.stride)
    ops.append(OpKey("dw", hw, ohw, mid, mid, b.kernel, b.stride, b.act, False, 0))
    if b.se:
        ops.append(OpKey("se", ohw, ohw, mid, mid, 1, 1, "relu", False, se_channels(arch_like, cin, mid, b.se)))
    ops.append(OpKey("pw", ohw, ohw, mid, b.out_channels, 1, 1, "none", b.stride == 1 and cin == b.out_channels,
                     0))
    return ops


def stem_op(arch_like: Arch | SearchSpace, resolution: int) -> OpKey:
    s = arch_like.stem_stride
    return OpKey("conv", resolution, _out(resolution, s), arch_like.in_channels, arch_like.stem_channels, 3, s,
                 arch_like.stem_act, False, 0)


def head_ops(arch_like: Arch | SearchSpace, cin: int, hw: int) -> list[OpKey]:
    """Head 1x1 conv, global pool, optional hidden linear and the classifier."""
    h = arch_like.head_channels
    ops = [OpKey("pw", hw, hw, cin, h, 1, 1, arch_like.head_act, False, 0), OpKey("pool", hw, 1, h, h, 1, 1,
                                                                                   "none", False, 0)]
    c = h
    if arch_like.head_hidden:
        ops.append(OpKey("linear", 1, 1, c, arch_like.head_hidden, 1, 1, arch_like.head_act, False, 0))
        c = arch_like.head_hidden
    ops.append(OpKey("linear", 1, 1, c, arch_like.num_classes, 1, 1, "none", False, 0))
    return ops


def fused_block_op(cin: int, hw: int, b: Block) -> OpKey | None:
    """The fused-op key of MBConv block `b` with input width `cin` at `hw` x `hw` (see the module docstring), or
    None for a block with squeeze-excite (never fused: SE needs the whole depthwise output)."""
    if b.se:
        return None
    return OpKey("mbconv" if b.expand != 1 else "mbconv1", hw, _out(hw, b.stride), cin, b.out_channels, b.kernel,
                 b.stride, b.act, b.stride == 1 and cin == b.out_channels, b.mid(cin))


def fused_layers(op: OpKey) -> list[OpKey]:
    """The layer keys of a fused block's key, in execution order (`block_ops` of its block)."""
    if op.op not in FUSED_OPS:
        raise ValueError(f"op: expected a fused block ({' or '.join(FUSED_OPS)}), got {op.op!r}")
    mid = op.hidden
    ops = [OpKey("pw", op.in_hw, op.in_hw, op.in_channels, mid, 1, 1, op.act, False, 0)] if op.op == "mbconv" else []
    ops.append(OpKey("dw", op.in_hw, op.out_hw, mid, mid, op.kernel, op.stride, op.act, False, 0))
    ops.append(OpKey("pw", op.out_hw, op.out_hw, mid, op.out_channels, 1, 1, "none", op.residual, 0))
    return ops


@lru_cache(maxsize=65536)
def fuses(op: OpKey, threads: int) -> bool:
    """Whether the kernel executor runs the fused block `op` as one op on `threads` threads for one image:
    `nas.kernels.memory.block_fuses`, the rule `activation_plan` and `QuantizedNetwork.steps` apply (cached: a
    search asks about the same blocks over and over)."""
    from nas.kernels.memory import block_fuses  # the compiled library, needed only for the kernels device

    if op.op not in FUSED_OPS:
        raise ValueError(f"op: expected a fused block ({' or '.join(FUSED_OPS)}), got {op.op!r}")
    return block_fuses(1, op.in_hw, op.in_hw, op.in_channels, op.hidden, op.out_channels, op.kernel, op.stride,
                       op.op == "mbconv", op.residual, int(threads))


def executor_block_ops(arch_like: Arch | SearchSpace, cin: int, hw: int, b: Block,
                       fused_threads: int | None) -> list[OpKey]:
    """The ops the kernel executor runs for one block on `fused_threads` threads: its fused key where `fuses`
    says so, else its layers (`block_ops`); `fused_threads` None: always its layers (a device without fusion)."""
    if fused_threads is not None:
        key = fused_block_op(cin, hw, b)
        if key is not None and fuses(key, fused_threads):
            return [key]
    return block_ops(arch_like, cin, hw, b)


def arch_ops(arch: Arch, fused_threads: int | None = None) -> list[OpKey]:
    """The ops of `arch` in execution order (equal to `OpKey.of` over `search_spaces.layers(arch)`); with
    `fused_threads`, each block the kernel executor fuses on that many threads is its one fused key instead."""
    hw = arch.resolution
    ops = [stem_op(arch, hw)]
    hw, c = ops[0].out_hw, arch.stem_channels
    for b in arch.blocks():
        ops.extend(executor_block_ops(arch, c, hw, b, fused_threads))
        hw, c = _out(hw, b.stride), b.out_channels
    return ops + head_ops(arch, c, hw)


def space_ops(space: SearchSpace, resolutions: Iterable[int] | None = None,
              fused_threads: int | None = None) -> set[OpKey]:
    """Every distinct op any architecture of `space` can contain (optionally only at some resolutions); with
    `fused_threads`, also the fused key of every block the kernel executor fuses on that many threads."""
    res = tuple(space.resolutions if resolutions is None else resolutions)
    bad = [r for r in res if r not in space.resolutions]
    if bad:
        raise ValueError(f"resolution: {bad} not in space {space.name!r} (choices {list(space.resolutions)})")
    if fused_threads is not None and (not isinstance(fused_threads, int) or fused_threads < 1):
        raise ValueError(f"fused_threads: expected a positive int or None, got {fused_threads!r}")
    ops: set[OpKey] = set()

    def add(cin: int, hw: int, b: Block) -> None:
        ops.update(block_ops(space, cin, hw, b))
        key = fused_block_op(cin, hw, b) if fused_threads is not None else None
        if key is not None and fuses(key, fused_threads):
            ops.add(key)

    for r in res:
        stem = stem_op(space, r)
        ops.add(stem)
        hw, prev_widths = stem.out_hw, {space.stem_channels}
        for st in space.stages:
            nhw = _out(hw, st.stride)
            for w in st.widths:
                for k in st.kernels:
                    for e in st.expands:
                        for se in st.se:
                            for cin in prev_widths:
                                add(cin, hw, Block(k, e, w, st.stride, se, st.act))
                            if max(st.depths) > 1:
                                add(w, nhw, Block(k, e, w, 1, se, st.act))
            hw, prev_widths = nhw, set(st.widths)
        for c in prev_widths:
            ops.update(head_ops(space, c, hw))
    return ops


def enumerate_ops(spaces: Iterable[SearchSpace], resolutions: Iterable[int] | None = None,
                  device: DeviceSpec | None = None) -> list[OpKey]:
    """The deduplicated ops of several spaces, sorted (cheap ops first within each op type). With `device`, the
    ops that device runs: for `kernels` (any bits) also the fused blocks its executor fuses at its thread count
    (`DeviceSpec.fused_threads`); other devices run layer by layer and get the layer ops only."""
    threads = None if device is None else device.fused_threads
    ops: set[OpKey] = set()
    for space in spaces:
        res = None if resolutions is None else [r for r in resolutions if r in space.resolutions]
        ops |= space_ops(space, res, threads)
    return sorted(ops, key=lambda k: (k.op, k.macs, k))


def check_layers_match(arch: Arch) -> None:
    """Raise if `arch_ops` and `search_spaces.layers` disagree (they are two codings of one rule)."""
    want = [OpKey.of(layer) for layer in layers(arch)]
    got = arch_ops(arch)
    if want != got:
        raise AssertionError(f"arch_ops differs from layers() for {arch}")
