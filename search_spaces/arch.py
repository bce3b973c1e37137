"""Architectures as plain immutable values: `Block`, `Arch`, validation, JSON and hashing."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ACTIVATIONS = ("relu", "relu6", "hswish", "swish")
KERNELS = (3, 5, 7)
STRIDES = (1, 2)
SE_BASES = ("mid", "in")


class ArchError(ValueError):
    """An architecture value is invalid; the message names the field and what was expected."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never dropping more than 10%.

    The rounding rule of the MobileNet/EfficientNet reference code, used for every width in this package.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Block:
    """One inverted-residual (MBConv) block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project."""

    kernel: int
    expand: float
    out_channels: int
    stride: int = 1
    se: float = 0.0
    act: str = "relu6"
    mid_channels: int = 0  # explicit expansion width (after pruning); 0 = derived from `expand`

    def __post_init__(self) -> None:
        # Canonical floats so that equal blocks have equal JSON, strings and hashes.
        for name in ("expand", "se"):
            v = getattr(self, name)
            if _is_num(v):
                object.__setattr__(self, name, float(v))

    def mid(self, in_channels: int) -> int:
        """Width of the depthwise conv given the block's input width."""
        if self.expand == 1:
            return in_channels
        return self.mid_channels or make_divisible(in_channels * self.expand, 8)


@dataclass(frozen=True)
class Arch:
    """A whole MBConv network: stem, stages of blocks, head, classifier."""

    resolution: int
    stem_channels: int
    stages: tuple[tuple[Block, ...], ...]
    head_channels: int
    num_classes: int = 1000
    in_channels: int = 3
    stem_stride: int = 2
    stem_act: str = "relu6"
    head_act: str = "relu6"
    head_hidden: int = 0  # MobileNetV3-style pre-classifier linear width; 0 = none
    se_base: str = "mid"  # SE squeeze width from the expanded width ("mid") or the block input ("in")

    def __post_init__(self) -> None:
        validate(self)

    def blocks(self) -> tuple[Block, ...]:
        """All blocks in execution order."""
        return tuple(b for stage in self.stages for b in stage)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [[asdict(b) for b in stage] for stage in self.stages]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Arch:
        """Build from a JSON-like dict; unknown, missing or ill-typed fields raise `ArchError` naming them."""
        return _arch_from_dict(data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"arch: not valid JSON ({exc})") from exc
        return _arch_from_dict(data)

    def hash(self) -> str:
        """A stable 12-hex-digit content hash (of the canonical JSON)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> Arch:
        return replace(self, **changes)

    def __str__(self) -> str:
        return encode(self)


def _check(cond: bool, field: str, expected: str, got: Any) -> None:
    if not cond:
        raise ArchError(f"{field}: expected {expected}, got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_block(b: Block, where: str) -> None:
    _check(_is_int(b.kernel) and b.kernel in KERNELS, f"{where}.kernel", f"one of {KERNELS}", b.kernel)
    _check(_is_num(b.expand) and 1 <= b.expand <= 12, f"{where}.expand", "a number in [1, 12]", b.expand)
    _check(_is_int(b.out_channels) and b.out_channels >= 1, f"{where}.out_channels", "a positive int",
           b.out_channels)
    _check(_is_int(b.stride) and b.stride in STRIDES, f"{where}.stride", f"one of {STRIDES}", b.stride)
    _check(_is_num(b.se) and 0 <= b.se < 1, f"{where}.se", "a ratio in [0, 1)", b.se)
    _check(b.act in ACTIVATIONS, f"{where}.act", f"one of {ACTIVATIONS}", b.act)
    _check(_is_int(b.mid_channels) and b.mid_channels >= 0, f"{where}.mid_channels", "an int >= 0",
           b.mid_channels)
    _check(not (b.expand == 1 and b.mid_channels), f"{where}.mid_channels",
           "0 when expand == 1 (no expansion conv)", b.mid_channels)


def validate(arch: Arch) -> None:
    """Raise `ArchError` naming the first invalid field."""
    _check(_is_int(arch.resolution) and 8 <= arch.resolution <= 1024, "arch.resolution", "an int in [8, 1024]",
           arch.resolution)
    for name in ("stem_channels", "head_channels", "num_classes", "in_channels"):
        v = getattr(arch, name)
        _check(_is_int(v) and v >= 1, f"arch.{name}", "a positive int", v)
    _check(_is_int(arch.head_hidden) and arch.head_hidden >= 0, "arch.head_hidden", "an int >= 0",
           arch.head_hidden)
    _check(arch.stem_stride in STRIDES, "arch.stem_stride", f"one of {STRIDES}", arch.stem_stride)
    _check(arch.stem_act in ACTIVATIONS, "arch.stem_act", f"one of {ACTIVATIONS}", arch.stem_act)
    _check(arch.head_act in ACTIVATIONS, "arch.head_act", f"one of {ACTIVATIONS}", arch.head_act)
    _check(arch.se_base in SE_BASES, "arch.se_base", f"one of {SE_BASES}", arch.se_base)
    _check(isinstance(arch.stages, tuple) and len(arch.stages) >= 1, "arch.stages", "a non-empty tuple of stages",
           type(arch.stages).__name__)
    hw = _conv_out(arch.resolution, arch.stem_stride)
    for i, stage in enumerate(arch.stages):
        _check(isinstance(stage, tuple) and len(stage) >= 1, f"arch.stages[{i}]", "a non-empty tuple of Blocks",
               stage)
        for j, b in enumerate(stage):
            where = f"arch.stages[{i}][{j}]"
            _check(isinstance(b, Block), where, "a Block", type(b).__name__)
            validate_block(b, where)
            hw = _conv_out(hw, b.stride)
    _check(hw >= 1, "arch.resolution", "large enough for the network's strides", arch.resolution)


def _conv_out(hw: int, stride: int) -> int:
    # "same" padding (k // 2) with odd kernels: ceil(hw / stride)
    return (hw - 1) // stride + 1


_ARCH_FIELDS = {f.name for f in fields(Arch)}
_BLOCK_FIELDS = {f.name for f in fields(Block)}


def _block_from_dict(data: Any, where: str) -> Block:
    _check(isinstance(data, dict), where, "an object", type(data).__name__)
    unknown = set(data) - _BLOCK_FIELDS
    _check(not unknown, where, f"only fields {sorted(_BLOCK_FIELDS)}", sorted(unknown))
    for req in ("kernel", "expand", "out_channels"):
        _check(req in data, f"{where}.{req}", "a value (field is required)", None)
    b = Block(**data)
    validate_block(b, where)
    return b


def _arch_from_dict(data: Any) -> Arch:
    _check(isinstance(data, dict), "arch", "an object", type(data).__name__)
    unknown = set(data) - _ARCH_FIELDS
    _check(not unknown, "arch", f"only fields {sorted(_ARCH_FIELDS)}", sorted(unknown))
    for req in ("resolution", "stem_channels", "stages", "head_channels"):
        _check(req in data, f"arch.{req}", "a value (field is required)", None)
    stages = data["stages"]
    _check(isinstance(stages, (list, tuple)) and len(stages) > 0, "arch.stages", "a non-empty list of stages",
           stages)
    parsed = []
    for i, stage in enumerate(stages):
        _check(isinstance(stage, (list, tuple)) and len(stage) > 0, f"arch.stages[{i}]",
               "a non-empty list of blocks", stage)
        parsed.append(tuple(_block_from_dict(b, f"arch.stages[{i}][{j}]") for j, b in enumerate(stage)))
    return Arch(**{**data, "stages": tuple(parsed)})


# The compact string form (grammar in search_spaces/encoding.py, which parses it).
ACT_TOKENS = {"relu": "re", "relu6": "re6", "hswish": "hs", "swish": "sw"}


def _num(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _encode_block(b: Block, repeat: int) -> str:
    parts = ["ds" if b.expand == 1 else "ir"]
    if repeat > 1:
        parts.append(f"r{repeat}")
    parts.append(f"k{b.kernel}")
    if b.stride != 1:
        parts.append(f"s{b.stride}")
    if b.expand != 1:
        parts.append(f"e{_num(b.expand)}")
    parts.append(f"c{b.out_channels}")
    if b.se:
        parts.append(f"se{_num(b.se)}")
    if b.mid_channels:
        parts.append(f"m{b.mid_channels}")
    parts.append(ACT_TOKENS[b.act])
    return "_".join(parts)


def _encode_stage(stage: tuple[Block, ...]) -> str:
    out = []
    i = 0
    while i < len(stage):
        first = stage[i]
        follower = replace(first, stride=1)
        j = i + 1
        while j < len(stage) and stage[j] == follower:
            j += 1
        out.append(_encode_block(first, j - i))
        i = j
    return ",".join(out)


def encode(arch: Arch) -> str:
    """The compact string of an architecture; `decode(encode(a)) == a` for every valid `a`."""
    head = f"r{arch.resolution}_i{arch.in_channels}_n{arch.num_classes}"
    if arch.se_base == "in":
        head += "_sein"
    segs = [head, f"stem_c{arch.stem_channels}_s{arch.stem_stride}_{ACT_TOKENS[arch.stem_act]}"]
    segs += [_encode_stage(s) for s in arch.stages]
    segs.append(f"head_c{arch.head_channels}_{ACT_TOKENS[arch.head_act]}")
    if arch.head_hidden:
        segs.append(f"fc_c{arch.head_hidden}_{ACT_TOKENS[arch.head_act]}")
    return ":".join(segs)
