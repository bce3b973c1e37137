"""Exact MAC/parameter counts against the reference implementations and the published figures."""

import pytest
import torch

import search_spaces as ss

# (MACs published in the papers, params of the reference implementation = torchvision's model card)
PUBLISHED = {
    "mobilenetv2": (300e6, 3_504_872),
    "mobilenetv3-large": (219e6, 5_483_032),
    "mobilenetv3-small": (56e6, 2_542_856),
    "efficientnet-b0": (390e6, 5_288_548),
}
# Rounded parameter counts quoted in the papers.
PAPER_PARAMS = {"mobilenetv2": 3.4e6, "mobilenetv3-large": 5.4e6, "mobilenetv3-small": 2.5e6,
                "efficientnet-b0": 5.3e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_counts(name):
    macs, params = PUBLISHED[name]
    cost = ss.count(ss.preset(name))
    assert abs(cost.macs - macs) / macs < 0.02
    assert cost.params == params  # exact, incl. BN gamma/beta


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paper_parameter_figures(name):
    # The MobileNetV2 paper truncates 3.47M weights (3.50M with BN) to "3.4M"; the others round to within 2%.
    tolerance = 0.031 if name == "mobilenetv2" else 0.02
    cost = ss.count(ss.preset(name))
    assert abs(cost.params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < tolerance


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counted_params_equal_torch_params(name):
    arch = ss.preset(name)
    model = ss.build(arch)
    assert sum(p.numel() for p in model.parameters()) == ss.count(arch).params


def _conv_macs(model, x):
    """MACs measured by hooks on the real PyTorch modules, independent of the analytic counter."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["mobilenetv3-small", "efficientnet-b0"])
def test_macs_match_hooked_model(name):
    arch = ss.preset(name)
    x = torch.zeros(1, 3, arch.resolution, arch.resolution)
    assert _conv_macs(ss.build(arch), x) == ss.count(arch).macs


def test_macs_match_hooked_model_on_sampled_archs():
    for space_name in ss.SPACES:
        space = ss.get_space(space_name)
        for arch in ss.sample(space, None, n=2, seed=3):
            arch = arch.replace(resolution=min(space.resolutions))
            x = torch.zeros(1, arch.in_channels, arch.resolution, arch.resolution)
            model = ss.build(arch)
            assert _conv_macs(model, x) == ss.count(arch).macs, str(arch)
            assert sum(p.numel() for p in model.parameters()) == ss.count(arch).params


def test_layer_table_is_consistent():
    arch = ss.preset("mobilenetv2")
    table = ss.layers(arch)
    assert table[0].name == "stem" and table[-1].name == "classifier"
    assert sum(layer.macs for layer in table) == ss.count_macs(arch)
    for prev, cur in zip(table, table[1:], strict=False):
        if cur.op != "linear":
            assert cur.in_hw == prev.out_hw
    # MobileNetV2 has 10 residual blocks
    assert sum(layer.residual for layer in table) == 10
