"""Regularized evolution as an Optuna sampler."""

import optuna

import search_spaces as ss
from nas.search.evolution import RegularizedEvolutionSampler
from nas.search.params import arch_from_params, distributions, suggest_params


def test_children_are_one_mutation_from_a_tournament_winner():
    space = ss.get_space("small32")
    dists = distributions(space)
    sampler = RegularizedEvolutionSampler(dists, population=6, tournament=3, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    history = []
    for i in range(20):
        trial = study.ask()
        params = suggest_params(trial, space)
        assert space.contains(arch_from_params(space, params))
        if i >= 6:
            # each child differs from some earlier trial in exactly one parameter
            diffs = [sum(params[k] != p[k] for k in dists) for p in history]
            assert min(diffs) == 1
        history.append(params)
        study.tell(trial, float(ss.count_macs(arch_from_params(space, params))))
