"""Search spaces: every choice builds with correct shapes; compound scaling; containment."""

import itertools
import random

import pytest
import torch

import search_spaces as ss
from search_spaces import Block
from search_spaces.presets import small_input


@pytest.mark.parametrize("kernel, expand, se, act, stride", list(itertools.product(
    (3, 5, 7), (1.0, 3.0, 4.0, 6.0), (0.0, 0.25), ("relu", "relu6", "hswish", "swish"), (1, 2))))
def test_every_block_choice_builds_with_correct_shapes(kernel, expand, se, act, stride):
    for se_base in ("mid", "in"):
        arch = ss.Arch(resolution=13, stem_channels=8, in_channels=2, num_classes=5, stem_stride=1, se_base=se_base,
                       stages=((Block(kernel, expand, 16, stride, se, act), Block(kernel, expand, 16, 1, se, act)),),
                       head_channels=24, head_hidden=12 if se else 0)
        model = ss.build(arch).eval()
        x = torch.randn(2, 2, 13, 13)
        feats = model.stem(x)
        for layer, block in zip([t for t in ss.layers(arch) if t.name.endswith("project")], model.blocks, strict=True):
            feats = block(feats)
            assert feats.shape == (2, layer.out_channels, layer.out_hw, layer.out_hw)
        assert model.blocks[1].use_residual
        assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_spaces_forward_smallest_and_largest(name):
    space = ss.get_space(name)
    for arch in (space.smallest(), space.largest()):
        assert space.contains(arch)
        arch = arch.replace(resolution=min(space.resolutions))
        out = ss.build(arch).eval()(torch.randn(1, arch.in_channels, arch.resolution, arch.resolution))
        assert out.shape == (1, arch.num_classes)
    assert ss.count_macs(space.smallest()) < ss.count_macs(space.largest())


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_space_choices_are_on_the_grid(name):
    space = ss.get_space(name)
    for stage in space.stages:
        assert all(w % 8 == 0 for w in stage.widths)
        assert set(stage.kernels) <= {3, 5, 7}
        assert set(stage.expands) <= {1.0, 3.0, 4.0, 6.0}
    for arch in ss.sample(space, n=20, seed=1):
        assert space.contains(arch)


@pytest.mark.parametrize("space_name, preset_name", [("small32", "mobilenetv2"), ("small32-v3", "mobilenetv3-large")])
def test_small_input_spaces_follow_their_reference_skeleton(space_name, preset_name):
    """small32 / small32-v3 are MobileNetV2 / V3-Large in their small-input form: the same strides, activations,
    stem and head, so a search in them and the width-scaled reference differ only in the searched choices."""
    space = ss.get_space(space_name)
    ref = small_input(ss.preset(preset_name), space.resolutions[0])
    assert [st.stride for st in space.stages] == [stage[0].stride for stage in ref.stages]
    assert [st.act for st in space.stages] == [stage[0].act for stage in ref.stages]
    assert all(stage[0].out_channels in st.widths for st, stage in zip(space.stages, ref.stages, strict=True))
    for field in ("stem_stride", "stem_act", "stem_channels", "head_act", "head_channels", "head_hidden",
                  "in_channels", "num_classes", "se_base"):
        assert getattr(space.smallest(), field) == getattr(ref, field), field
    # MobileNetV2 itself is one of small32's networks; V3-Large's e2.5 / e2.3 blocks are not choices of small32-v3
    assert space.contains(ref) == (preset_name == "mobilenetv2")


def test_contains_rejects_outside_archs():
    space = ss.get_space("small32")
    arch = space.random_arch(random.Random(0))
    assert space.contains(arch)
    assert not space.contains(arch.replace(resolution=40))
    assert not space.contains(arch.replace(head_channels=64))
    assert not space.contains(ss.preset("mobilenetv2"))


def test_random_arch_toward_largest():
    space = ss.get_space("small32-v3")
    assert space.random_arch(random.Random(0), toward_largest=1.0) == space.largest()
    # bias 0 is the uniform draw, random stream included
    a, b = random.Random(3), random.Random(3)
    assert space.random_arch(a, toward_largest=0.0) == space.random_arch(b)
    assert a.random() == b.random()
    rng = random.Random(0)
    uniform = [ss.count_macs(space.random_arch(rng)) for _ in range(200)]
    biased = [ss.count_macs(space.random_arch(rng, toward_largest=0.8)) for _ in range(200)]
    assert all(space.contains(space.random_arch(rng, toward_largest=0.5)) for _ in range(20))
    assert sum(biased) / len(biased) > 1.5 * sum(uniform) / len(uniform)
    with pytest.raises(ValueError, match="toward_largest"):
        space.random_arch(rng, toward_largest=1.5)


def test_compound_scaling_follows_efficientnet():
    base = ss.get_space("efficientnet")
    b1 = ss.get_space("efficientnet", phi=1)
    assert b1.scaling.alpha == 1.2 and b1.scaling.beta == 1.1 and b1.scaling.gamma == 1.15
    assert b1.resolutions == (220, 256, 296)  # 192/224/256 * 1.15, multiples of 4
    assert max(b1.stages[5].depths) == 6  # ceil(5 * 1.2)
    assert b1.stem_channels == 32 and b1.head_channels == 1408  # 1280 * 1.1
    # alpha * beta^2 * gamma^2 ~= 2: the cost of the largest network roughly doubles per unit of phi
    ratio = ss.count_macs(b1.largest()) / ss.count_macs(base.largest())
    assert 1.7 < ratio < 2.4
    custom = base.scaled(2, alpha=1.0, beta=1.0, gamma=1.5)
    assert custom.stages == base.stages and max(custom.resolutions) == 576


def test_scale_presets_by_width():
    v2 = ss.preset("mobilenetv2")
    half = ss.scale(v2, width=0.5)
    assert half.stem_channels == 16 and half.head_channels == 1280
    assert 90e6 < ss.count_macs(half) < 110e6  # MobileNetV2 0.5 ~ 97M MACs
    deeper = ss.scale(v2, depth=2.0)
    assert [len(s) for s in deeper.stages] == [2 * len(s) for s in v2.stages]
    assert [s[0].stride for s in deeper.stages] == [s[0].stride for s in v2.stages]
    with pytest.raises(ValueError, match="width"):
        ss.scale(v2, width=0)


def test_trim_to_budget_keeps_choices_and_fits():
    space = ss.get_space("small32")
    trimmed = ss.trim_to_budget(space, 100e6)
    assert ss.count_macs(trimmed.largest()) <= 1.25 * 100e6
    assert trimmed.smallest() == space.smallest()
    for st, full in zip(trimmed.stages, space.stages, strict=True):
        for attr in ("depths", "widths", "expands", "kernels", "se"):
            assert set(getattr(st, attr)) <= set(getattr(full, attr)) and getattr(st, attr)
    for arch in ss.sample(trimmed, n=20, seed=0):
        assert space.contains(arch)
    assert ss.trim_to_budget(space, 1e12) == space  # a loose budget trims nothing
    with pytest.raises(ValueError, match="smallest"):
        ss.trim_to_budget(space, 1e6)


def test_width_scaled_baselines_fit_the_budget_at_the_data_size():
    from search_spaces.presets import width_scaled_baselines

    like = ss.get_space("small32").with_io(1, 10).largest()
    base = width_scaled_baselines(100e6, like)
    assert [k.split(" x")[0] for k in base] == ["mobilenetv2", "mobilenetv3-large"]
    for arch in base.values():
        assert (arch.resolution, arch.in_channels, arch.num_classes, arch.stem_stride) == (like.resolution, 1, 10, 1)
        assert 0.8 * 100e6 < ss.count_macs(arch) <= 100e6  # the widest copy within the budget
    imagenet = width_scaled_baselines(150e6, ss.preset("mobilenetv2"))  # stem stride 2: the ImageNet form
    assert all(a.stem_stride == 2 and a.resolution == 224 for a in imagenet.values())
    assert width_scaled_baselines(1e5, like) == {}  # nothing fits: left out, no error


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_space_round_trips_through_json(name):
    import json
    from dataclasses import asdict

    space = ss.get_space(name, 1.0).with_io(3, 7)
    assert ss.SearchSpace.from_dict(json.loads(json.dumps(asdict(space)))) == space
