from dataclasses import replace

import pytest
import torch
from torch import nn

import search_spaces as ss
from nas.compress.netadapt import NetAdaptConfig, netadapt, smallest_cost

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_re6,ir_k3_e3_c24_re6:"
                 "ir_k3_s2_e4_c32_se0.25_re6:head_c64_re6")


def _cost(arch: ss.Arch) -> float:
    return float(ss.count_macs(arch))


def test_netadapt_reaches_a_macs_target_with_a_consistent_network():
    torch.manual_seed(0)
    model = ss.build(ARCH).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.3)
    x = torch.randn(160, 1, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = NetAdaptConfig(target_ratio=0.6, step_ratio=0.15, finetune_steps=2, holdout=64, batch_size=32)
    pruned, arch, rep = netadapt(model, ARCH, x, y, cfg, _cost, "MACs")
    assert rep.final_cost <= 0.6 * rep.start_cost and rep.final_cost == ss.count_macs(arch)
    assert 1 <= len(rep.steps) <= 6
    assert sum(p.numel() for p in pruned.parameters()) == ss.count(arch).params
    assert pruned(x[:2]).shape == (2, 10)
    # every step met its reduction: costs fall monotonically
    costs = [s["cost"] for s in rep.steps]
    assert costs == sorted(costs, reverse=True)


def test_unreachable_target_is_reported_up_front():
    model = ss.build(ARCH).eval()
    floor = smallest_cost(ARCH, _cost)
    with pytest.raises(ValueError, match="smallest reachable"):
        netadapt(model, ARCH, torch.randn(10, 1, 16, 16), torch.zeros(10, dtype=torch.long),
                 NetAdaptConfig(target=floor / 2), _cost, "MACs")


def test_step_is_halved_when_no_single_group_can_remove_it():
    """No group alone removes 60% of the MACs (the widest single cut is 48%); halving the step to 30% lets
    NetAdapt go on to the target instead of stopping at the start."""
    torch.manual_seed(0)
    model = ss.build(ARCH).eval()
    x = torch.randn(160, 1, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = NetAdaptConfig(target_ratio=0.45, step_ratio=0.6, finetune_steps=1, holdout=64, batch_size=32)
    _, arch, rep = netadapt(model, ARCH, x, y, cfg, _cost, "MACs")
    assert rep.steps[0]["goal"] == pytest.approx(0.7 * rep.start_cost)  # 1 - 0.6 / 2
    assert rep.final_cost <= 0.45 * rep.start_cost and rep.final_cost == ss.count_macs(arch)
    # without room to halve, it stops where it started (the old behaviour), above the target
    _, _, stuck = netadapt(model, ARCH, x, y, replace(cfg, min_step_ratio=0.6), _cost, "MACs")
    assert stuck.steps == [] and stuck.final_cost == stuck.start_cost
