"""Regularized evolution (Real et al. 2019, the AmoebaNet search) as an Optuna sampler, used as a baseline."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState


class RegularizedEvolutionSampler(BaseSampler):
    """Tournament selection over the last `population` finished trials, one-parameter mutation, oldest dies.

    The first `population` trials are random. The parent is the tournament's best by the first objective
    (validation accuracy); budgets stay hard because the objective repairs every suggestion into the budget.
    """

    def __init__(self, space: dict[str, BaseDistribution], population: int = 16, tournament: int = 4,
                 seed: int | None = None):
        if tournament > population:
            raise ValueError(f"tournament: expected <= population ({population}), got {tournament}")
        self._space = space
        self._population = population
        self._tournament = tournament
        self._rng = random.Random(seed)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < self._population:
            return {}
        population = done[-self._population:]
        contenders = self._rng.sample(population, self._tournament)
        sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
        parent = max(contenders, key=lambda t: sign * t.values[0])
        child = {k: v for k, v in parent.params.items() if k in search_space}
        mutable = [k for k, d in search_space.items()
                   if isinstance(d, CategoricalDistribution) and len(d.choices) > 1]
        name = self._rng.choice(mutable)
        choices: Sequence[Any] = [c for c in search_space[name].choices if c != child.get(name)]
        child[name] = self._rng.choice(list(choices))
        return child

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)
