"""Architecture values: JSON and string round trips, hashing, validation of bad input."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import search_spaces as ss
from search_spaces import Arch, ArchError, Block


@st.composite
def archs(draw):
    space = ss.SPACES[draw(st.sampled_from(sorted(ss.SPACES)))]
    arch = space.random_arch(random.Random(draw(st.integers(0, 2**32))))
    if draw(st.booleans()):  # a pruned block with an explicit expansion width
        stages = list(arch.stages)
        i = draw(st.integers(0, len(stages) - 1))
        b = stages[i][0]
        if b.expand != 1:
            stages[i] = (Block(b.kernel, b.expand, b.out_channels, b.stride, b.se, b.act,
                               mid_channels=draw(st.integers(1, 999))),) + stages[i][1:]
        arch = arch.replace(stages=tuple(stages))
    return arch


@settings(max_examples=200, deadline=None)
@given(archs())
def test_string_round_trip(arch):
    text = ss.encode(arch)
    assert ss.decode(text) == arch
    assert ss.decode(text).hash() == arch.hash()
    assert str(arch) == text


@settings(max_examples=200, deadline=None)
@given(archs())
def test_json_round_trip(arch):
    assert Arch.from_json(arch.to_json()) == arch
    assert Arch.from_dict(json.loads(arch.to_json(indent=2))) == arch


def test_presets_decode_to_their_strings():
    for name, text in ss.PRESETS.items():
        assert ss.encode(ss.preset(name)) == text


def test_hash_is_stable_and_content_based():
    a = ss.preset("mobilenetv2")
    assert a.hash() == ss.preset("mobilenetv2").hash()
    assert len(a.hash()) == 12
    assert a.replace(resolution=192).hash() != a.hash()
    # int and float expansion ratios are the same architecture
    b = Block(3, 6, 24)
    assert Block(3, 6.0, 24) == b and hash(Block(3, 6.0, 24)) == hash(b)


def test_repeat_applies_stride_to_first_block_only():
    arch = ss.decode("r32_i1_n10:stem_c8_s1_re:ir_r3_k5_s2_e6_c16_re:head_c32_re")
    strides = [b.stride for b in arch.blocks()]
    assert strides == [2, 1, 1]


@pytest.mark.parametrize("text, field", [
    ("", "non-empty"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k4_e6_c16_re:head_c32_re", "kernel"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_s3_e6_c16_re:head_c32_re", "stride"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_e6_c16_xx:head_c32_re", "activation"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_c16_re:head_c32_re", "_e<ratio>"),
    ("r32_i1_n10:stem_c8_s1_re:ds_k3_e6_c16_re:head_c32_re", "no expansion"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_e6_re:head_c32_re", "_c<n>"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_e6_c16_q9_re:head_c32_re", "unknown option"),
    ("x32:stem_c8_s1_re:ir_k3_e6_c16_re:head_c32_re", "r<resolution>"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_e6_c16_re", "head"),
    ("r4_i1_n10:stem_c8_s2_re:ir_k3_s2_e6_c16_re,ir_k3_s2_e6_c16_re:head_c32_re", "resolution"),
    ("r32_i1_n10:stem_c8_s1_re:ir_k3_e6_c16_se1.5_re:head_c32_re", "se"),
])
def test_bad_strings_name_the_problem(text, field):
    with pytest.raises(ArchError, match=field.replace("<", ".").replace(">", ".") if "<" in field else field):
        ss.decode(text)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("resolution"), "arch.resolution"),
    (lambda d: d.update(resolution="224"), "arch.resolution"),
    (lambda d: d.update(color="red"), "color"),
    (lambda d: d["stages"][1][0].update(kernel=9), r"arch.stages\[1\]\[0\].kernel"),
    (lambda d: d["stages"][2][0].update(out_channels=-8), r"arch.stages\[2\]\[0\].out_channels"),
    (lambda d: d["stages"][2][0].pop("expand"), r"arch.stages\[2\]\[0\].expand"),
    (lambda d: d["stages"][0][0].update(act="gelu"), r"arch.stages\[0\]\[0\].act"),
    (lambda d: d.update(stages=[]), "arch.stages"),
    (lambda d: d.update(se_base="out"), "arch.se_base"),
])
def test_bad_json_names_the_field(mutate, field):
    d = ss.preset("mobilenetv2").to_dict()
    mutate(d)
    with pytest.raises(ArchError, match=field):
        Arch.from_dict(d)


def test_not_json():
    with pytest.raises(ArchError, match="JSON"):
        Arch.from_json("{not json")


def test_parse_arch_accepts_all_forms(tmp_path):
    a = ss.preset("mobilenetv3-small")
    path = tmp_path / "a.json"
    path.write_text(a.to_json())
    for form in ("mobilenetv3-small", str(a), a.to_json(), str(path)):
        assert ss.parse_arch(form) == a
    with pytest.raises(ArchError, match="does not exist"):
        ss.parse_arch(str(tmp_path / "missing.json"))


def test_make_divisible():
    assert ss.make_divisible(32 * 0.75) == 24
    assert ss.make_divisible(184) == 184
    assert ss.make_divisible(18) == 24  # never more than 10% below
    assert all(ss.make_divisible(v) % 8 == 0 for v in range(1, 500))
