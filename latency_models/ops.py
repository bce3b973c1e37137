"""Op configurations: the unit of a latency table, enumerated from search spaces and read off architectures.

An `OpKey` is everything that changes an op's run time on a given device: op type, input and output size,
channels, kernel, stride, fused activation, fused residual add and the SE squeeze width. The number of bits,
the thread count and the ISA are properties of the whole table (the device spec), not of a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from search_spaces import Arch, Block, Layer, SearchSpace, layers
from search_spaces.cost import se_channels

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


def arch_ops(arch: Arch) -> list[OpKey]:
    """The ops of `arch` in execution order (equal to `OpKey.of` over `search_spaces.layers(arch)`)."""
    hw = arch.resolution
    ops = [stem_op(arch, hw)]
    hw, c = ops[0].out_hw, arch.stem_channels
    for b in arch.blocks():
        ops.extend(block_ops(arch, c, hw, b))
        hw, c = _out(hw, b.stride), b.out_channels
    return ops + head_ops(arch, c, hw)


def space_ops(space: SearchSpace, resolutions: Iterable[int] | None = None) -> set[OpKey]:
    """Every distinct op any architecture of `space` can contain (optionally only at some resolutions)."""
    res = tuple(space.resolutions if resolutions is None else resolutions)
    bad = [r for r in res if r not in space.resolutions]
    if bad:
        raise ValueError(f"resolution: {bad} not in space {space.name!r} (choices {list(space.resolutions)})")
    ops: set[OpKey] = set()
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
                                ops.update(block_ops(space, cin, hw, Block(k, e, w, st.stride, se, st.act)))
                            if max(st.depths) > 1:
                                ops.update(block_ops(space, w, nhw, Block(k, e, w, 1, se, st.act)))
            hw, prev_widths = nhw, set(st.widths)
        for c in prev_widths:
            ops.update(head_ops(space, c, hw))
    return ops


def enumerate_ops(spaces: Iterable[SearchSpace], resolutions: Iterable[int] | None = None) -> list[OpKey]:
    """The deduplicated ops of several spaces, sorted (cheap ops first within each op type)."""
    ops: set[OpKey] = set()
    for space in spaces:
        res = None if resolutions is None else [r for r in resolutions if r in space.resolutions]
        ops |= space_ops(space, res)
    return sorted(ops, key=lambda k: (k.op, k.macs, k))


def check_layers_match(arch: Arch) -> None:
    """Raise if `arch_ops` and `search_spaces.layers` disagree (they are two codings of one rule)."""
    want = [OpKey.of(layer) for layer in layers(arch)]
    got = arch_ops(arch)
    if want != got:
        raise AssertionError(f"arch_ops differs from layers() for {arch}")
