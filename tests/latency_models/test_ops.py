import random

import pytest

import search_spaces as ss
from latency_models import DeviceSpec, OpKey, arch_ops, enumerate_ops, space_ops
from latency_models.ops import FUSED_OPS, block_ops, executor_block_ops, fused_block_op, fused_layers, fuses
from nas.kernels import memory


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


# ---------------------------------------------------------------- fused blocks (issue #33)


def _blocks(a: ss.Arch):
    """(input width, input size, block) of every block of `a`, in order."""
    c, hw = a.stem_channels, (a.resolution - 1) // a.stem_stride + 1
    for b in a.blocks():
        yield c, hw, b
        c, hw = b.out_channels, (hw - 1) // b.stride + 1


def test_fused_key_covers_its_layers() -> None:
    """A fused key's layers are the block's layer keys, its MACs their sum; an expand-ratio-1 block is `mbconv1`
    (hidden == in_channels), a pruned block expanding to its input width stays `mbconv`; SE blocks have none."""
    seen = set()
    for name in ("small32", "mobilenetv2", "mobilenetv3"):
        space = ss.get_space(name)
        rng = random.Random(5)
        for a in [space.random_arch(rng) for _ in range(10)]:
            for c, hw, b in _blocks(a):
                key = fused_block_op(c, hw, b)
                if b.se:
                    assert key is None
                    continue
                layers = block_ops(a, c, hw, b)
                assert fused_layers(key) == layers
                assert key.macs == sum(x.macs for x in layers)
                assert key.op == ("mbconv1" if b.expand == 1 else "mbconv") and key.hidden == b.mid(c)
                assert key.residual == layers[-1].residual and key.out_hw == layers[-1].out_hw
                seen.add(key.op)
    assert seen == set(FUSED_OPS)
    pruned = ss.Block(3, 6.0, 24, 1, 0.0, "relu6", mid_channels=16)
    key = fused_block_op(16, 8, pruned)
    assert key.op == "mbconv" and key.hidden == key.in_channels == 16 and len(fused_layers(key)) == 3
    with pytest.raises(ValueError, match="op: expected a fused block"):
        fused_layers(key._replace(op="pw"))
    with pytest.raises(ValueError, match="op: expected a fused block"):
        fuses(key._replace(op="dw"), 1)


@pytest.mark.parametrize("name", ["small32", "mobilenetv2"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_ops_have_a_fused_key_exactly_for_the_blocks_the_executor_fuses(name: str, threads: int) -> None:
    """The kernels device's ops are the layer ops plus one fused key per block configuration the executor fuses at
    its thread count: every block of random architectures has its key in the enumeration exactly when
    `activation_plan(arch, threads=t)` runs it as one step (its steps are `arch_steps`, each fused one holding
    band-buffer scratch), and `arch_ops(arch, t)` lists what the executor runs."""
    space = ss.get_space(name)
    layer_ops = enumerate_ops([space])
    ops = enumerate_ops([space], device=DeviceSpec("kernels", threads=threads))
    fused = {o for o in ops if o.op in FUSED_OPS}
    print(f"{name}, {threads} thread(s): {len(layer_ops)} layer ops + {len(fused)} fused blocks")
    assert fused and set(ops) - fused == set(layer_ops)  # the layer keys of fused blocks stay
    assert ops == sorted(ops, key=lambda k: (k.op, k.macs, k))
    assert set(enumerate_ops([space], device=DeviceSpec("kernels", bits=4, threads=threads))) == set(ops)
    for other in ("torch-fp32", "torch-int8", "ort-int8", "ort-fp32"):
        assert enumerate_ops([space], device=DeviceSpec.make(other, threads=threads)) == layer_ops
    assert all(fuses(k, threads) and set(fused_layers(k)) <= set(layer_ops) for k in fused)
    rng = random.Random(11)
    archs = [space.random_arch(rng) for _ in range(25)] + [space.smallest(), space.largest()]
    outcomes, stems = set(), set()
    for a in archs:
        steps = memory.arch_steps(a, threads=threads)
        plan = memory.activation_plan(a, threads=threads)
        scratch = [j for j, f in enumerate(plan.first) if f < j]  # a fused step's band buffers: written by an
        assert len(scratch) == sum(len(g) > 1 for g in steps)  # earlier step than their index
        names = [x.name for x in ss.layers(a)]
        in_plan = {names[g[0]].split(".")[1] for g in steps if len(g) > 1 and g[0] != 0}
        with_stem = len(steps[0]) > 1  # the stem fused into the first block's step, priced as its layers
        stems.add(with_stem)
        for i, (c, hw, b) in enumerate(_blocks(a)):
            key = fused_block_op(c, hw, b)
            listed = key is not None and key in fused
            if i == 0 and with_stem:  # inside the stem's fused step; priced as it would run without the stem
                continue
            assert listed == (str(i) in in_plan), (a, i, key)
            if key is not None:
                outcomes.add(listed)
        want = []
        for g in steps:
            if g[0] == 0 and len(g) > 1:  # the stem-fused step: priced as the steps it replaces
                c, hw, b = next(iter(_blocks(a)))
                want += [OpKey.of(ss.layers(a)[0]), *executor_block_ops(a, c, hw, b, threads)]
            elif len(g) == 1:
                want.append(OpKey.of(ss.layers(a)[g[0]]))
            else:
                i = int(names[g[0]].split(".")[1])
                c, hw, b = list(_blocks(a))[i]
                want.append(fused_block_op(c, hw, b))
        assert arch_ops(a, threads) == want
        assert set(want) <= set(ops)
    assert outcomes == {True, False}  # the rule decides: some fusable blocks fuse, others do not
    assert True in stems or name == "small32"  # the stem joins the first block (small32: rarely at 24-32 px)


def test_fused_threads_is_checked() -> None:
    space = ss.get_space("small32")
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="fused_threads: expected a positive int or None"):
            space_ops(space, [24], fused_threads=bad)
    assert DeviceSpec("kernels", threads=3).fused_threads == 3 and DeviceSpec.make("torch-fp32").fused_threads is None
