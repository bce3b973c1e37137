import random

import pytest

import search_spaces as ss
from latency_models import OpKey, arch_ops, enumerate_ops, space_ops


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_enumeration_covers_every_layer_of_sampled_archs(name: str) -> None:
    space = ss.get_space(name)
    ops = space_ops(space)
    rng = random.Random(3)
    archs = [space.random_arch(rng) for _ in range(40)] + [space.smallest(), space.largest()]
    archs += ss.sample(space, ss.budget.Budget("macs", ss.count_macs(space.smallest()) * 1.5), n=10, seed=1)
    for a in archs:
        keys = [OpKey.of(layer) for layer in ss.layers(a)]
        assert arch_ops(a) == keys
        missing = [k for k in keys if k not in ops]
        assert not missing, f"{a}: {missing[:3]}"


def test_enumeration_is_deduplicated_and_sorted() -> None:
    spaces = [ss.get_space("small32"), ss.get_space("small32")]
    ops = enumerate_ops(spaces)
    assert len(ops) == len(set(ops)) == len(space_ops(spaces[0]))
    assert {o.op for o in ops} == {"conv", "pw", "dw", "se", "pool", "linear"}
    # residual fusion is part of the key: only stride-1 equal-width projections carry it
    assert all(o.op == "pw" and o.stride == 1 and o.in_hw == o.out_hw for o in ops if o.residual)


def test_resolution_filter_is_a_subset_and_checked() -> None:
    space = ss.get_space("mobilenetv2")
    one = space_ops(space, [224])
    assert one < space_ops(space)
    assert {o.in_hw for o in one if o.op == "conv"} == {224}
    with pytest.raises(ValueError, match="resolution"):
        space_ops(space, [100])


def test_macs_match_the_cost_table() -> None:
    a = ss.get_space("mobilenetv3").largest()
    assert [o.macs for o in arch_ops(a)] == [layer.macs for layer in ss.layers(a)]
