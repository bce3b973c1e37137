"""Hand-designed reference networks written in the architecture string, and width/depth/resolution scaling.

The strings follow the reference implementations (torchvision / timm), so their counts can be checked against
the published figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from search_spaces.arch import Arch, make_divisible
from search_spaces.cost import count_macs
from search_spaces.encoding import decode

MOBILENET_V2 = (
    "r224_i3_n1000:stem_c32_s2_re6:ds_k3_c16_re6:ir_r2_k3_s2_e6_c24_re6:ir_r3_k3_s2_e6_c32_re6:"
    "ir_r4_k3_s2_e6_c64_re6:ir_r3_k3_e6_c96_re6:ir_r3_k3_s2_e6_c160_re6:ir_k3_e6_c320_re6:head_c1280_re6"
)
MOBILENET_V3_LARGE = (
    "r224_i3_n1000:stem_c16_s2_hs:ds_k3_c16_re:ir_k3_s2_e4_c24_re,ir_k3_e3_c24_re:ir_r3_k5_s2_e3_c40_se0.25_re:"
    "ir_k3_s2_e6_c80_hs,ir_k3_e2.5_c80_hs,ir_r2_k3_e2.3_c80_hs:ir_r2_k3_e6_c112_se0.25_hs:"
    "ir_r3_k5_s2_e6_c160_se0.25_hs:head_c960_hs:fc_c1280_hs"
)
MOBILENET_V3_SMALL = (
    "r224_i3_n1000:stem_c16_s2_hs:ds_k3_s2_c16_se0.25_re:ir_k3_s2_e4.5_c24_re,ir_k3_e3.67_c24_re:"
    "ir_k5_s2_e4_c40_se0.25_hs,ir_r2_k5_e6_c40_se0.25_hs:ir_r2_k5_e3_c48_se0.25_hs:"
    "ir_r3_k5_s2_e6_c96_se0.25_hs:head_c576_hs:fc_c1024_hs"
)
EFFICIENTNET_B0 = (
    "r224_i3_n1000_sein:stem_c32_s2_sw:ds_k3_c16_se0.25_sw:ir_r2_k3_s2_e6_c24_se0.25_sw:"
    "ir_r2_k5_s2_e6_c40_se0.25_sw:ir_r3_k3_s2_e6_c80_se0.25_sw:ir_r3_k5_e6_c112_se0.25_sw:"
    "ir_r4_k5_s2_e6_c192_se0.25_sw:ir_k3_e6_c320_se0.25_sw:head_c1280_sw"
)

PRESETS = {
    "mobilenetv2": MOBILENET_V2,
    "mobilenetv3-large": MOBILENET_V3_LARGE,
    "mobilenetv3-small": MOBILENET_V3_SMALL,
    "efficientnet-b0": EFFICIENTNET_B0,
}


def preset(name: str) -> Arch:
    """A reference network by name (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return decode(PRESETS[name])


def scale(arch: Arch, width: float = 1.0, depth: float = 1.0, resolution: int | None = None,
          scale_head: bool | None = None) -> Arch:
    """Scale every width by `width` (rounded to multiples of 8), every stage's depth by `depth` (ceil).

    As in the MobileNet references, the head is scaled only when widening unless `scale_head` says otherwise.
    """
    if width <= 0 or depth <= 0:
        raise ValueError(f"scale: expected width > 0 and depth > 0, got width={width}, depth={depth}")
    scale_head = width > 1.0 if scale_head is None else scale_head

    def w(c: int) -> int:
        return make_divisible(c * width, 8)

    stages = []
    for stage in arch.stages:
        n = max(1, math.ceil(len(stage) * depth))
        blocks = [replace(stage[min(i, len(stage) - 1)], stride=1) for i in range(n)]
        blocks[0] = replace(blocks[0], stride=stage[0].stride)
        stages.append(tuple(replace(b, out_channels=w(b.out_channels), mid_channels=0) for b in blocks))
    return replace(
        arch,
        resolution=resolution or arch.resolution,
        stem_channels=w(arch.stem_channels),
        stages=tuple(stages),
        head_channels=w(arch.head_channels) if scale_head else arch.head_channels,
    )


def small_input(arch: Arch, resolution: int = 32, in_channels: int = 1, num_classes: int = 10) -> Arch:
    """A reference network adapted to 24-32 px data the usual way (as `small32`): stem stride 1 and the first
    stride-2 stage at stride 1, so the feature maps stay as large as on ImageNet relative to the input."""
    stages = list(arch.stages)
    for i, stage in enumerate(stages):
        if stage[0].stride == 2:
            stages[i] = (replace(stage[0], stride=1),) + stage[1:]
            break
    return replace(arch, resolution=resolution, in_channels=in_channels, num_classes=num_classes, stem_stride=1,
                   stages=tuple(stages))


def fit_width(arch: Arch, max_macs: float, lo: float = 0.05, hi: float = 4.0,
              cost: Callable[[Arch], float] | None = None) -> tuple[Arch, float]:
    """The widest width-scaled copy of `arch` within `max_macs` (bisection on the width multiplier).

    `cost` replaces the MAC count, e.g. a measured latency in ms with `max_macs` then a time; it should grow with
    the width (noise only makes the bisection stop at a slightly different width).
    """
    cost = cost or count_macs
    if cost(scale(arch, width=lo)) > max_macs:
        raise ValueError(f"max_macs: even width {lo} of this network costs more than {max_macs:g}")
    for _ in range(40 if cost is count_macs else 10):
        mid = (lo + hi) / 2
        if cost(scale(arch, width=mid)) <= max_macs:
            lo = mid
        else:
            hi = mid
    return scale(arch, width=lo), lo


BASELINES = ("mobilenetv2", "mobilenetv3-large")


def width_scaled_baselines(max_macs: float, like: Arch, names: tuple[str, ...] = BASELINES,
                           cost: Callable[[Arch], float] | None = None) -> dict[str, Arch]:
    """Reference networks width-scaled to the widest copy within `max_macs` (or within `max_macs` of `cost`,
    as in `fit_width`), at `like`'s resolution, input channels and classes (in the small-input form of
    `small_input` when `like`'s stem has stride 1).

    Keys are readable labels such as ``"mobilenetv2 x0.52"``. A network whose narrowest copy (width 0.05) is
    still over the budget is left out.
    """
    out = {}
    for name in names:
        ref = preset(name)
        if like.stem_stride == 1:
            ref = small_input(ref, like.resolution, like.in_channels, like.num_classes)
        else:
            ref = replace(ref, resolution=like.resolution, in_channels=like.in_channels, num_classes=like.num_classes)
        try:
            arch, mult = fit_width(ref, max_macs, cost=cost)
        except ValueError:
            continue
        out[f"{name} x{mult:.2f}"] = arch
    return out
