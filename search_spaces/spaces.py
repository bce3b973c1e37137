"""Factorized hierarchical (MnasNet-style) search spaces with EfficientNet compound scaling.

A space fixes the skeleton (stages, their strides and activations) and lists the choices: per stage the depth
and width (on a channel grid divisible by 8), per block the kernel, expansion ratio and SE, plus the input
resolution. `SearchSpace.scaled(phi)` applies compound scaling; `sample` draws architectures.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from search_spaces.arch import Arch, Block, make_divisible
from search_spaces.cost import count_macs


@dataclass(frozen=True)
class StageSpace:
    """Choices of one stage. The first block of a stage carries `stride`; the others use stride 1."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stride: int
    act: str
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[float, ...] = (3.0, 4.0, 6.0)
    se: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class CompoundScaling:
    """EfficientNet compound scaling: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    phi: float = 0.0
    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15

    def depth(self, d: int) -> int:
        return max(1, math.ceil(d * self.alpha**self.phi))

    def width(self, c: int) -> int:
        return make_divisible(c * self.beta**self.phi, 8)

    def resolution(self, r: int) -> int:
        return max(8, int(round(r * self.gamma**self.phi / 4)) * 4)


@dataclass(frozen=True)
class SearchSpace:
    """A named space of MBConv networks; every sampled `Arch` lies inside it (`contains`)."""

    name: str
    description: str
    resolutions: tuple[int, ...]
    stem_channels: int
    stages: tuple[StageSpace, ...]
    head_channels: int
    stem_stride: int = 2
    stem_act: str = "relu6"
    head_act: str = "relu6"
    head_hidden: int = 0
    se_base: str = "mid"
    num_classes: int = 1000
    in_channels: int = 3
    scaling: CompoundScaling = field(default_factory=CompoundScaling)

    def scaled(self, phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> SearchSpace:
        """Compound-scale depths, widths and resolutions of this (unscaled) space by coefficient `phi`."""
        s = CompoundScaling(phi, alpha, beta, gamma)
        stages = tuple(
            replace(st, depths=tuple(sorted({s.depth(d) for d in st.depths})),
                    widths=tuple(sorted({s.width(w) for w in st.widths})))
            for st in self.stages
        )
        return replace(
            self,
            resolutions=tuple(sorted({s.resolution(r) for r in self.resolutions})),
            stem_channels=s.width(self.stem_channels),
            head_channels=s.width(self.head_channels),
            stages=stages,
            scaling=s,
        )

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        """A space from its `dataclasses.asdict` form read back from JSON (lists become tuples again); a dict that
        is not one raises TypeError, KeyError or AttributeError."""
        def tuples(d: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        stages = tuple(StageSpace(**tuples(st)) for st in data["stages"])
        return cls(**{**tuples(data), "stages": stages, "scaling": CompoundScaling(**data["scaling"])})

    def with_io(self, in_channels: int, num_classes: int) -> SearchSpace:
        """The same space for a dataset with `in_channels` input channels and `num_classes` classes."""
        return replace(self, in_channels=in_channels, num_classes=num_classes)

    def arch(self, resolution: int, stages: tuple[tuple[Block, ...], ...]) -> Arch:
        return Arch(
            resolution=resolution, stem_channels=self.stem_channels, stages=stages,
            head_channels=self.head_channels, num_classes=self.num_classes, in_channels=self.in_channels,
            stem_stride=self.stem_stride, stem_act=self.stem_act, head_act=self.head_act,
            head_hidden=self.head_hidden, se_base=self.se_base,
        )

    def smallest(self) -> Arch:
        """The cheapest architecture of the space (every choice at its minimum)."""
        stages = []
        for st in self.stages:
            b = Block(min(st.kernels), min(st.expands), min(st.widths), 1, min(st.se), st.act)
            stages.append((replace(b, stride=st.stride),) + (b,) * (min(st.depths) - 1))
        return self.arch(min(self.resolutions), tuple(stages))

    def largest(self) -> Arch:
        """The most expensive architecture of the space (every choice at its maximum)."""
        stages = []
        for st in self.stages:
            b = Block(max(st.kernels), max(st.expands), max(st.widths), 1, max(st.se), st.act)
            stages.append((replace(b, stride=st.stride),) + (b,) * (max(st.depths) - 1))
        return self.arch(max(self.resolutions), tuple(stages))

    def contains(self, arch: Arch) -> bool:
        """Whether `arch` is one of this space's architectures."""
        if arch != replace(self.smallest(), resolution=arch.resolution, stages=arch.stages):
            return False
        if arch.resolution not in self.resolutions or len(arch.stages) != len(self.stages):
            return False
        for st, blocks in zip(self.stages, arch.stages, strict=True):
            if len(blocks) not in st.depths or blocks[0].out_channels not in st.widths:
                return False
            for i, b in enumerate(blocks):
                ok = (b.kernel in st.kernels and b.expand in st.expands and b.se in st.se and b.act == st.act
                      and b.out_channels == blocks[0].out_channels and b.mid_channels == 0
                      and b.stride == (st.stride if i == 0 else 1))
                if not ok:
                    return False
        return True

    def random_arch(self, rng: random.Random, toward_largest: float = 0.0) -> Arch:
        """One architecture drawn uniformly per choice; with `toward_largest` = b > 0, each choice is instead its
        maximum with probability b. Uniform draws rarely come near the largest network (in small32-v3 none of
        200,000 landed in 89-100M of a 100M-MAC budget), so draws with b spread over [0, 1] cover the whole range.
        b = 0 draws exactly as before (the same random stream)."""
        if not 0.0 <= toward_largest <= 1.0:
            raise ValueError(f"toward_largest: expected a probability in [0, 1], got {toward_largest}")

        def pick(choices):
            return max(choices) if toward_largest and rng.random() < toward_largest else rng.choice(choices)

        stages = []
        for st in self.stages:
            width = pick(st.widths)
            blocks = tuple(
                Block(pick(st.kernels), pick(st.expands), width, st.stride if i == 0 else 1, pick(st.se), st.act)
                for i in range(pick(st.depths))
            )
            stages.append(blocks)
        return self.arch(pick(self.resolutions), tuple(stages))

    def shrink_moves(self, arch: Arch) -> list[Arch]:
        """Every architecture one choice cheaper than `arch` (a lower resolution, fewer blocks, narrower, ...)."""
        moves = []
        lower_res = [r for r in self.resolutions if r < arch.resolution]
        if lower_res:
            moves.append(replace(arch, resolution=max(lower_res)))
        stages = list(arch.stages)
        for i, (st, blocks) in enumerate(zip(self.stages, stages, strict=True)):
            def with_stage(new: tuple[Block, ...], i: int = i) -> Arch:
                return replace(arch, stages=tuple(stages[:i] + [new] + stages[i + 1:]))

            if len(blocks) > min(st.depths):
                moves.append(with_stage(blocks[: max(d for d in st.depths if d < len(blocks))]))
            narrower = [w for w in st.widths if w < blocks[0].out_channels]
            if narrower:
                moves.append(with_stage(tuple(replace(b, out_channels=max(narrower)) for b in blocks)))
            for j, b in enumerate(blocks):
                for attr, choices in (("kernel", st.kernels), ("expand", st.expands), ("se", st.se)):
                    lower = [c for c in choices if c < getattr(b, attr)]
                    if lower:
                        nb = replace(b, **{attr: max(lower)})
                        moves.append(with_stage(blocks[:j] + (nb,) + blocks[j + 1:]))
        return moves


def _stages(table: list[tuple], kernels=(3, 5, 7), expands=(3.0, 4.0, 6.0), se=(0.0,),
            width_mults=(0.75, 1.0, 1.25), depth_deltas=(-1, 0, 1)) -> tuple[StageSpace, ...]:
    """Stage spaces from (base depth, base width, stride, act[, se choices]) rows; the first row is fixed.

    Expansion choices are Once-for-All's (3, 4, 6), without ratio 1: an unexpanded block has no expand conv,
    so in a supernet it cannot share the expanded blocks' depthwise weights, and with it in the space the
    sandwich rule's smallest network never trains the narrow expanded slices (measured on digits: random
    sub-networks at 0.15-0.20 val accuracy after the expansion/width phase with ratio 1, 0.87 without).
    """
    out = []
    for i, row in enumerate(table):
        depth, width, stride, act = row[:4]
        st_se = row[4] if len(row) > 4 else se
        if i == 0:  # the first stage is the fixed depthwise-separable block of every reference network
            out.append(StageSpace((depth,), (width,), stride, act, (3,), (1.0,), st_se))
            continue
        depths = tuple(sorted({max(1, depth + d) for d in depth_deltas}))
        widths = tuple(sorted({make_divisible(width * m, 8) for m in width_mults}))
        out.append(StageSpace(depths, widths, stride, act, kernels, expands, st_se))
    return tuple(out)


_V2_TABLE = [(1, 16, 1, "relu6"), (2, 24, 2, "relu6"), (3, 32, 2, "relu6"), (4, 64, 2, "relu6"),
             (3, 96, 1, "relu6"), (3, 160, 2, "relu6"), (1, 320, 1, "relu6")]

SPACES: dict[str, SearchSpace] = {
    "mobilenetv2": SearchSpace(
        name="mobilenetv2",
        description="MobileNetV2 skeleton, ReLU6, no SE; per-block kernel/expansion, per-stage depth/width; 224 px",
        resolutions=(160, 192, 224), stem_channels=32, head_channels=1280, stages=_stages(_V2_TABLE),
    ),
    "mobilenetv3": SearchSpace(
        name="mobilenetv3",
        description="MobileNetV3-Large skeleton, ReLU / hard-swish stages, optional SE per block; 224 px",
        resolutions=(160, 192, 224), stem_channels=16, head_channels=960, head_hidden=1280,
        stem_act="hswish", head_act="hswish",
        stages=_stages([(1, 16, 1, "relu", (0.0,)), (2, 24, 2, "relu"), (3, 40, 2, "relu"), (4, 80, 2, "hswish"),
                        (2, 112, 1, "hswish"), (3, 160, 2, "hswish")], se=(0.0, 0.25)),
    ),
    "efficientnet": SearchSpace(
        name="efficientnet",
        description="EfficientNet-B0 skeleton, swish, SE 0.25 of block input; compound scaling via phi; 224 px",
        resolutions=(192, 224, 256), stem_channels=32, head_channels=1280, stem_act="swish", head_act="swish",
        se_base="in",
        stages=_stages([(1, 16, 1, "swish"), (2, 24, 2, "swish"), (2, 40, 2, "swish"), (3, 80, 2, "swish"),
                        (3, 112, 1, "swish"), (4, 192, 2, "swish"), (1, 320, 1, "swish")], se=(0.25,)),
    ),
    "small32": SearchSpace(
        name="small32",
        description="MBConv space for 24-32 px inputs (digits, MNIST, CIFAR): stem stride 1, two fewer early "
                    "strides, optional SE; defaults to 1 input channel and 10 classes",
        resolutions=(24, 28, 32), stem_channels=32, stem_stride=1, head_channels=1280, num_classes=10,
        in_channels=1,
        stages=_stages([(1, 16, 1, "relu6"), (2, 24, 1, "relu6"), (3, 32, 2, "relu6"), (4, 64, 2, "relu6"),
                        (3, 96, 1, "relu6"), (3, 160, 2, "relu6"), (1, 320, 1, "relu6")], se=(0.0, 0.25)),
    ),
    "small32-v3": SearchSpace(
        name="small32-v3",
        description="MobileNetV3-Large skeleton for 24-32 px inputs, as small32 is MobileNetV2's: stem stride 1, "
                    "one fewer early stride, ReLU then hard-swish stages, optional SE, V3's head (960 conv, "
                    "1280 hidden linear); defaults to 1 input channel and 10 classes",
        resolutions=(24, 28, 32), stem_channels=16, stem_stride=1, head_channels=960, head_hidden=1280,
        stem_act="hswish", head_act="hswish", num_classes=10, in_channels=1,
        stages=_stages([(1, 16, 1, "relu", (0.0,)), (2, 24, 1, "relu"), (3, 40, 2, "relu"), (4, 80, 2, "hswish"),
                        (2, 112, 1, "hswish"), (3, 160, 2, "hswish")], se=(0.0, 0.25)),
    ),
}

DEFAULT_SPACE = "small32"


def get_space(name: str, phi: float = 0.0) -> SearchSpace:
    """A named space, compound-scaled by `phi` (0 = unscaled); a `phi` whose scaled networks cannot be built
    (input resolution out of range, no pixels left after the strides) is refused naming the valid range."""
    if name not in SPACES:
        raise ValueError(f"space: expected one of {sorted(SPACES)}, got {name!r}")
    space = SPACES[name]
    if not phi:
        return space
    if not isinstance(phi, int | float) or isinstance(phi, bool) or not math.isfinite(phi) or phi < 0:
        raise ValueError(f"phi: expected a finite number >= 0, got {phi!r}")
    problem = _scaling_problem(space, phi)
    if problem:
        low, high = phi_range(name)
        raise ValueError(f"phi: compound scaling {name!r} by {phi:g} gives {problem}; expected phi in "
                         f"[{low:g}, {high:g}] for this space")
    return space.scaled(phi)


def _scaling_problem(space: SearchSpace, phi: float) -> str | None:
    """Why `space.scaled(phi)` cannot be built, or None."""
    try:
        scaled = space.scaled(phi)
        scaled.smallest()
        scaled.largest()
    except ValueError as exc:
        return str(exc)
    return None


def phi_range(name: str, step: float = 0.1, limit: float = 100.0) -> tuple[float, float]:
    """The coefficients (on a `step` grid, from 0 up) for which compound scaling of space `name` can be built.

    Scaling down (phi < 0) is not offered: a budget below the space's networks is what the search is for.
    """
    space = SPACES[name]
    high = 0.0
    while high + step <= limit and _scaling_problem(space, round(high + step, 6)) is None:
        high = round(high + step, 6)
    return 0.0, high


def trim_to_budget(space: SearchSpace, max_macs: float, slack: float = 1.25) -> SearchSpace:
    """The sub-space whose largest network costs at most `slack * max_macs`.

    Drops the top choice of one dimension at a time (the resolution, or one stage's depth, width, expansion,
    kernel or SE), always the drop that cheapens the largest network most, so the space keeps as many choices as
    the budget allows. A supernet trained on it spends no time on networks far beyond the budget; the few
    members still over it are repaired by the search.
    """
    if slack < 1:
        raise ValueError(f"slack: expected >= 1, got {slack}")
    if count_macs(space.smallest()) > max_macs:
        raise ValueError(f"max_macs: the smallest network of {space.name!r} costs "
                         f"{count_macs(space.smallest()) / 1e6:.2f}M MACs > {max_macs / 1e6:.2f}M")
    while count_macs(space.largest()) > slack * max_macs:
        candidates = []
        if len(space.resolutions) > 1:
            candidates.append(replace(space, resolutions=space.resolutions[:-1]))
        for i, st in enumerate(space.stages):
            for attr in ("depths", "widths", "expands", "kernels", "se"):
                choices = tuple(sorted(getattr(st, attr)))
                if len(choices) > 1:
                    new = replace(st, **{attr: choices[:-1]})
                    candidates.append(replace(space, stages=space.stages[:i] + (new,) + space.stages[i + 1:]))
        if not candidates:
            break
        space = min(candidates, key=lambda s: count_macs(s.largest()))
    return space
