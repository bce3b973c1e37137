"""Trial parameters <-> architectures, and the deterministic budget repair."""

import random

import optuna
import pytest

import search_spaces as ss
from nas.search.params import arch_from_params, distributions, params_from_arch, repair, suggest_params


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_params_round_trip(name):
    space = ss.get_space(name)
    for arch in ss.sample(space, n=20, seed=5):
        assert arch_from_params(space, params_from_arch(space, arch)) == arch


def test_every_suggestion_is_in_the_space():
    space = ss.get_space("small32")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        arch = arch_from_params(space, suggest_params(trial, space))
        assert space.contains(arch)
        assert set(trial.params) == set(distributions(space))
        study.tell(trial, 0.0)


def test_repair_fits_and_is_deterministic():
    space = ss.get_space("small32")
    rng = random.Random(0)
    for _ in range(50):
        arch = space.random_arch(rng)
        fixed = repair(space, arch, ss.count_macs, 40e6)
        assert ss.count_macs(fixed) <= 40e6 and space.contains(fixed)
        assert repair(space, arch, ss.count_macs, 40e6) == fixed
        if ss.count_macs(arch) <= 40e6:
            assert fixed == arch


def test_missing_params_are_named():
    with pytest.raises(ValueError, match="missing"):
        arch_from_params(ss.get_space("small32"), {"resolution": 32})
    with pytest.raises(ValueError, match="not in space"):
        params_from_arch(ss.get_space("small32"), ss.preset("mobilenetv2"))
