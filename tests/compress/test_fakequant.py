import random

import numpy as np
import pytest
import torch

import search_spaces as ss
from nas.compress.fakequant import _SAMPLES, QuantSim

ARCH = ss.decode("r32_i1_n10:stem_c16_s1_hs:ir_k3_e3_c16_hs:head_c32_re6:fc_c16_hs")


def _sim() -> QuantSim:
    torch.manual_seed(0)
    return QuantSim(ss.build(ARCH).eval())


# Larger than `_SAMPLES` per observed tensor, so percentile / MSE calibration draws a random value sample.
BATCH = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
assert 8 * 16 * 32 * 32 > _SAMPLES


def _consume_global_rngs() -> None:
    torch.rand(1000)
    np.random.rand(1000)
    random.random()


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_calibration_does_not_depend_on_what_ran_before(method: str) -> None:
    sim = _sim()
    sim.calibrate([BATCH], method, 99.0)
    first = sim.ranges()
    _consume_global_rngs()
    sim.calibrate([BATCH], method, 99.0)  # a second calibration in the same process (the old generator moved on)
    assert sim.ranges() == first
    other = _sim()
    _consume_global_rngs()
    other.calibrate([BATCH], method, 99.0)
    assert other.ranges() == first


def test_calibration_seed_selects_the_sample() -> None:
    a, b = _sim(), _sim()
    a.calibrate([BATCH], "percentile", 99.0, seed=0)
    b.calibrate([BATCH], "percentile", 99.0, seed=1)
    ra, rb = a.ranges(), b.ranges()
    assert ra.keys() == rb.keys()
    # the sample is drawn only from tensors above `_SAMPLES` values, so some (not all) ranges move with the seed
    assert ra != rb
    assert ra["input"] == rb["input"]  # 1024 values: kept whole, no sampling


def test_observer_outside_calibrate_never_uses_the_global_rng() -> None:
    sim = _sim()
    obs = next(iter(sim.observers.values()))
    obs.keep_samples = True
    state = torch.get_rng_state()
    obs(torch.randn(_SAMPLES + 10, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(torch.get_rng_state(), state)
    assert obs.samples[0].size == _SAMPLES


def test_residual_projects_term_is_observed_for_export_but_never_rounded() -> None:
    """A residual block's project output before the add gets a range (ONNX export's grid for it) but stays
    unrounded in the simulation, since the kernels add before they round: squeezing that range to almost nothing
    must not change the simulator's logits, while squeezing the sum's range must."""
    sim = _sim()
    sim.calibrate([BATCH])
    ranges = sim.calibration().ranges
    assert "blocks.0.project" in ranges and "blocks.0.out" in ranges
    lo, hi = ranges["blocks.0.project"]
    assert lo < 0 < hi
    with torch.no_grad():
        before = sim(BATCH)
        sim.observers["blocks_0_project"].set_range(0.0, 1e-6)
        assert torch.equal(sim(BATCH), before)
        sim.observers["blocks_0_out"].set_range(0.0, 1e-6)
        assert not torch.equal(sim(BATCH), before)
