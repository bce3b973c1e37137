import pytest
import torch
from torch import nn

import search_spaces as ss
from nas.compress.prune import channel_groups, importance, magnitude_prune, prune, prune_channels, pruned_arch

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_re6,ir_k5_e6_c24_hs:"
                 "ir_k3_s2_e4_c32_se0.25_sw:head_c64_re6:fc_c32_hs")


def _model(arch: ss.Arch = ARCH, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = ss.build(arch).eval()
    for mod in m.modules():  # non-trivial batch-norm statistics and classifier weights
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
        elif isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.3)
    return m


def _kill(model: nn.Module, arch: ss.Arch, group: str, channels: list[int]) -> None:
    """Zero every slice of `channels` in `group` (a dead channel: contributes nothing anywhere)."""
    g = next(g for g in channel_groups(arch) if g.name == group)
    state = model.state_dict()
    with torch.no_grad():
        for key, dim in g.slices:
            if key.endswith(("running_mean", "running_var")):
                continue
            state[key].index_fill_(dim, torch.tensor(channels), 0.0)


def test_groups_follow_residual_chains():
    names = {g.name: g for g in channel_groups(ARCH)}
    assert set(names) == {"width.stem", "mid.1", "width.1", "mid.2", "mid.3", "width.3", "head", "hidden"}
    # the ds block (expand 1) is residual on the stem width; blocks 1 and 2 share one output chain
    assert names["width.stem"].sets == [("stem", -1), ("out", 0)]
    assert names["width.1"].sets == [("out", 1), ("out", 2)]
    assert ("blocks.0.dw.conv.weight", 0) in names["width.stem"].slices
    assert ("blocks.1.expand.conv.weight", 1) in names["width.stem"].slices


@pytest.mark.parametrize("method", ["l1", "bn", "taylor"])
def test_pruning_dead_channels_keeps_outputs(method):
    model = _model()
    dead = {"width.stem": [2, 9], "mid.1": [0, 5, 40], "width.1": [3], "mid.3": [7, 8], "width.3": [1],
            "head": [10, 11, 12], "hidden": [4]}
    for g, ch in dead.items():
        _kill(model, ARCH, g, ch)
    x = torch.randn(6, 1, 16, 16)
    batches = [(x, torch.arange(6))]
    scores = importance(model, ARCH, method, batches)
    for g, ch in dead.items():
        assert torch.all(scores[g][ch] == 0), g
        assert torch.all(scores[g].sort().values[len(ch):] > 0), g  # only the dead ones score zero
    sizes = {g.name: g.size for g in channel_groups(ARCH)}
    ratios = {g: len(ch) / sizes[g] for g, ch in dead.items()}
    pruned, arch = prune(model, ARCH, ratios, method, batches, groups=list(dead))
    assert arch.stem_channels == 14 and arch.head_channels == 61 and arch.head_hidden == 31
    assert [b.out_channels for b in arch.blocks()] == [14, 23, 23, 31]
    assert sum(p.numel() for p in pruned.parameters()) == ss.count(arch).params
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


def test_prune_channels_real_removal_matches_count_and_changes_macs():
    model = _model()
    pruned, arch = prune(model, ARCH, 0.5)
    c0, c1 = ss.count(ARCH), ss.count(arch)
    assert c1.macs < 0.45 * c0.macs
    assert sum(p.numel() for p in pruned.parameters()) == c1.params
    assert all(b.mid_channels for b in arch.blocks() if b.expand != 1)
    assert pruned(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    # the input model is untouched
    assert sum(p.numel() for p in model.parameters()) == c0.params


def test_se_squeeze_width_follows_expansion_width():
    model = _model()
    keep = {"mid.1": list(range(16))}  # 48 -> 16: squeeze 16 -> make_divisible(4) = 8
    pruned, arch = prune_channels(model, ARCH, keep)
    assert pruned.blocks[1].se.reduce.out_channels == 8
    assert sum(p.numel() for p in pruned.parameters()) == ss.count(arch).params


def test_no_new_residual_connection():
    arch = ss.decode("r16_i1_n10:stem_c16_s1_re6:ir_k3_e3_c24_re6:head_c32_re6")
    with pytest.raises(ValueError, match="residual"):
        pruned_arch(arch, {"width.0": 16})
    # ratio-based pruning nudges the width instead of silently adding a shortcut
    _, new = prune(_model(arch), arch, {"width.0": 1 / 3}, groups=["width.0"])
    assert new.stem_channels == 16 and new.blocks()[0].out_channels == 17


def test_bad_inputs_are_reported():
    model = _model()
    with pytest.raises(ValueError, match="unknown channel group"):
        prune_channels(model, ARCH, {"nope": [0]})
    with pytest.raises(ValueError, match="outside"):
        prune_channels(model, ARCH, {"head": [64]})
    with pytest.raises(ValueError, match="ratio"):
        prune(model, ARCH, 1.0)


def test_magnitude_prune_reports_sparsity_not_speed():
    model = _model()
    sparse, rep = magnitude_prune(model, 0.5)
    assert 0.49 < rep.sparsity < 0.52
    zeros = sum(int((m.weight == 0).sum()) for m in sparse.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert zeros == rep.total - rep.nonzero
    assert rep.csr_bytes == 3 * rep.nonzero + 4 * sum(m.weight.shape[0] + 1 for m in sparse.modules()
                                                      if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(m.weight.shape == s.weight.shape for m, s in zip(model.modules(), sparse.modules(), strict=True)
               if isinstance(m, nn.Conv2d))
