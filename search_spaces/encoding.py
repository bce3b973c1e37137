"""A compact, readable architecture string in the spirit of timm's `ir_r2_k5_s2_e6_c40_se0.25`.

Grammar (segments joined by ':'; blocks of one stage joined by ','):

    r224_i3_n1000[_sein] : stem_c32_s2_re6 : <stage> : ... : head_c1280_re6 [: fc_c1280_hs]

    stage  = block {"," block}
    block  = ("ir" | "ds") ["_r" N] "_k" K ["_s" S] ["_e" E] "_c" C ["_se" R] ["_m" MID] "_" ACT

`ds` is a block without expansion (e = 1). `_rN` repeats a block N times; as in timm, its stride applies to the
first repeat only. Defaults that are omitted when encoding: r1, s1. Activations: re (ReLU), re6 (ReLU6),
hs (hard-swish), sw (swish). `sein` marks EfficientNet-style SE widths (from the block input).
"""

from __future__ import annotations

import re
from dataclasses import replace

from search_spaces.arch import ACT_TOKENS, Arch, ArchError, Block

TOKEN_ACTS = {v: k for k, v in ACT_TOKENS.items()}

_BLOCK_OPT = re.compile(r"^(r|k|s|e|c|se|m)(\d+(?:\.\d+)?)$")


def _parse_int(text: str, where: str) -> int:
    if not text.isdigit():
        raise ArchError(f"{where}: expected an integer, got {text!r}")
    return int(text)


def _decode_block(token: str, where: str) -> list[Block]:
    parts = token.split("_")
    kind = parts[0]
    if kind not in ("ir", "ds"):
        raise ArchError(f"{where}: expected a block starting with 'ir' or 'ds', got {token!r}")
    if len(parts) < 2 or parts[-1] not in TOKEN_ACTS:
        raise ArchError(f"{where}: expected the block to end with an activation {sorted(TOKEN_ACTS)}, got {token!r}")
    opts: dict[str, str] = {}
    for p in parts[1:-1]:
        m = _BLOCK_OPT.match(p)
        if not m:
            raise ArchError(f"{where}: unknown option {p!r} in {token!r} (expected r,k,s,e,c,se,m + a number)")
        if m.group(1) in opts:
            raise ArchError(f"{where}: option {m.group(1)!r} given twice in {token!r}")
        opts[m.group(1)] = m.group(2)
    for req in ("k", "c"):
        if req not in opts:
            raise ArchError(f"{where}: block {token!r} needs '_{req}<n>'")
    if kind == "ds" and float(opts.get("e", "1")) != 1:
        raise ArchError(f"{where}: 'ds' blocks have no expansion, got {token!r}")
    if kind == "ir" and "e" not in opts:
        raise ArchError(f"{where}: 'ir' block {token!r} needs '_e<ratio>'")
    block = Block(
        kernel=_parse_int(opts["k"], f"{where}.kernel"),
        expand=float(opts.get("e", "1")),
        out_channels=_parse_int(opts["c"], f"{where}.out_channels"),
        stride=_parse_int(opts.get("s", "1"), f"{where}.stride"),
        se=float(opts.get("se", "0")),
        act=TOKEN_ACTS[parts[-1]],
        mid_channels=_parse_int(opts.get("m", "0"), f"{where}.mid_channels"),
    )
    repeat = _parse_int(opts.get("r", "1"), f"{where}.repeat")
    if repeat < 1:
        raise ArchError(f"{where}: repeat must be >= 1, got {repeat}")
    return [block] + [replace(block, stride=1)] * (repeat - 1)


def _fields(seg: str, prefix: str, where: str) -> dict[str, str]:
    parts = seg.split("_")
    if parts[0] != prefix:
        raise ArchError(f"{where}: expected a segment starting with {prefix!r}, got {seg!r}")
    out: dict[str, str] = {}
    for p in parts[1:]:
        if p in TOKEN_ACTS:
            out["act"] = TOKEN_ACTS[p]
        elif p[:1] in ("c", "s") and p[1:].isdigit():
            out[p[0]] = p[1:]
        else:
            raise ArchError(f"{where}: unknown option {p!r} in {seg!r}")
    return out


def _decode_top(seg: str) -> dict[str, str]:
    where = "arch string segment 0"
    parts = seg.split("_")
    m = re.fullmatch(r"r(\d+)", parts[0])
    if not m:
        raise ArchError(f"{where}: expected 'r<resolution>_i<in>_n<classes>', got {seg!r}")
    out = {"res": m.group(1)}
    for p in parts[1:]:
        if p == "sein":
            out["se_base"] = "in"
        elif p[:1] in ("i", "n") and p[1:].isdigit():
            out[p[0]] = p[1:]
        else:
            raise ArchError(f"{where}: unknown option {p!r} in {seg!r} (expected i<n>, n<n> or sein)")
    return out


def decode(text: str) -> Arch:
    """Parse the compact string (see module docstring); errors name the segment and what was expected."""
    if not isinstance(text, str) or not text.strip():
        raise ArchError(f"arch string: expected a non-empty string, got {text!r}")
    segs = [s.strip() for s in text.strip().split(":")]
    if len(segs) < 4:
        raise ArchError(f"arch string: expected 'r<res>_i<ch>_n<classes>:stem_...:<stages>...:head_...', got {text!r}")
    top = _decode_top(segs[0])
    stem = _fields(segs[1], "stem", "arch string segment 1 (stem)")
    rest = segs[2:]
    hidden = 0
    if rest and rest[-1].startswith("fc_"):
        fc = _fields(rest.pop(), "fc", "arch string segment fc")
        hidden = _parse_int(fc.get("c", ""), "arch.head_hidden")
    if not rest or not rest[-1].startswith("head_"):
        raise ArchError("arch string: expected a 'head_c<n>_<act>' segment after the stages")
    head = _fields(rest.pop(), "head", "arch string segment head")
    stages = []
    for i, seg in enumerate(rest):
        blocks: list[Block] = []
        for j, tok in enumerate(seg.split(",")):
            blocks += _decode_block(tok.strip(), f"arch string stage {i} block {j}")
        stages.append(tuple(blocks))
    if not stages:
        raise ArchError("arch string: expected at least one stage of blocks")
    for name, d, key in (("stem", stem, "c"), ("head", head, "c")):
        if key not in d:
            raise ArchError(f"arch string {name}: expected '_c<channels>'")
        if "act" not in d:
            raise ArchError(f"arch string {name}: expected an activation {sorted(TOKEN_ACTS)}")
    return Arch(
        resolution=_parse_int(top["res"], "arch.resolution"),
        in_channels=_parse_int(top.get("i", "3"), "arch.in_channels"),
        num_classes=_parse_int(top.get("n", "1000"), "arch.num_classes"),
        se_base=top.get("se_base", "mid"),
        stem_channels=_parse_int(stem["c"], "arch.stem_channels"),
        stem_stride=_parse_int(stem.get("s", "2"), "arch.stem_stride"),
        stem_act=stem["act"],
        stages=tuple(stages),
        head_channels=_parse_int(head["c"], "arch.head_channels"),
        head_act=head["act"],
        head_hidden=hidden,
    )
