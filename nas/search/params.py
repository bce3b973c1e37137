"""Map Optuna trial parameters to architectures of a search space, and repair them into a budget.

The parameter set is static (every block slot of the deepest stage is always suggested), so that every sampler —
TPE, NSGA-II, random, evolution — sees the same space. Budgets are hard: a suggestion over budget is repaired
deterministically (the smallest cost-reducing change first, until it fits), so no trial is spent on an infeasible
network and the evaluated architecture is a pure function of the parameters.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from search_spaces import Arch, Block, SearchSpace


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The Optuna distributions of every parameter of `space`."""
    d: dict[str, BaseDistribution] = {"resolution": CategoricalDistribution(space.resolutions)}
    for i, st in enumerate(space.stages):
        d[f"s{i}_depth"] = CategoricalDistribution(st.depths)
        d[f"s{i}_width"] = CategoricalDistribution(st.widths)
        for j in range(max(st.depths)):
            d[f"s{i}_b{j}_kernel"] = CategoricalDistribution(st.kernels)
            d[f"s{i}_b{j}_expand"] = CategoricalDistribution(st.expands)
            d[f"s{i}_b{j}_se"] = CategoricalDistribution(st.se)
    return d


def suggest_params(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask `trial` for every parameter of `space` (define-by-run, also used by Ray Tune's OptunaSearch)."""
    return {name: trial.suggest_categorical(name, dist.choices) for name, dist in distributions(space).items()}


def arch_from_params(space: SearchSpace, params: dict[str, Any]) -> Arch:
    """The architecture a full parameter set describes (before any budget repair)."""
    missing = [k for k in distributions(space) if k not in params]
    if missing:
        raise ValueError(f"params: missing {missing[:5]} for space {space.name!r}")
    stages = []
    for i, st in enumerate(space.stages):
        blocks = tuple(
            Block(params[f"s{i}_b{j}_kernel"], params[f"s{i}_b{j}_expand"], params[f"s{i}_width"],
                  st.stride if j == 0 else 1, params[f"s{i}_b{j}_se"], st.act)
            for j in range(params[f"s{i}_depth"])
        )
        stages.append(blocks)
    return space.arch(params["resolution"], tuple(stages))


def params_from_arch(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """Parameters that describe `arch` (unused block slots take the stage's smallest choices)."""
    if not space.contains(arch):
        raise ValueError(f"arch {arch.hash()} is not in space {space.name!r}")
    p: dict[str, Any] = {"resolution": arch.resolution}
    for i, (st, blocks) in enumerate(zip(space.stages, arch.stages, strict=True)):
        p[f"s{i}_depth"] = len(blocks)
        p[f"s{i}_width"] = blocks[0].out_channels
        for j in range(max(st.depths)):
            b = blocks[j] if j < len(blocks) else None
            p[f"s{i}_b{j}_kernel"] = b.kernel if b else min(st.kernels)
            p[f"s{i}_b{j}_expand"] = b.expand if b else min(st.expands)
            p[f"s{i}_b{j}_se"] = b.se if b else min(st.se)
    return p


def repair(space: SearchSpace, arch: Arch, cost: Callable[[Arch], float], limit: float) -> Arch:
    """A cheaper neighbour of `arch` that fits `limit`: lower one random choice at a time until it fits.

    The random stream is seeded by the architecture's hash, so the repair is a pure function of the parameters
    (the sampler sees a deterministic objective), while different over-budget suggestions shrink along different
    dimensions instead of always sacrificing the same one. It ends because every move lowers a choice and the
    space's smallest architecture fits (callers check that first with `search_spaces.check_reachable`).
    """
    rng = random.Random(arch.hash())
    while cost(arch) > limit:
        moves = space.shrink_moves(arch)
        if not moves:
            raise ValueError(f"repair: {arch} cannot shrink further and still costs {cost(arch):g} > {limit:g}")
        arch = rng.choice(moves)
    return arch
