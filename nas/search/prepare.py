"""The search's first stage: its data and its search space, sized to the data; and the budget checks against it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import search_spaces as ss
from nas.data import DataLoading, DataSource, DataSpec, StreamDataset, data_source
from nas.data.spec import IN_MEMORY

if TYPE_CHECKING:
    from nas.search.plan import SpacePlan

# the built-in data set's input channels and classes, known without loading it: its budgets are checked exactly
# before anything is loaded (tests/search/test_search_checks.py keeps this equal to what nas.data loads)
BUILTIN_IO = {"digits": (1, 10)}
# the cheapest input a data set can have: a budget no architecture meets even then is refused before loading data
CHEAPEST_IO = (1, 1)

Budgets = tuple[tuple[str, ss.Budget], ...]  # (flag, budget) of every budget asked for
# the budgets an architecture's costs decide alone (no device): checked before any data is loaded
COUNTED = ("macs", "params", *ss.MEMORY_KINDS)


@dataclass(frozen=True)
class Prepared:
    """The data (cached tensors, or streamed from disk) and the search space sized to it: what the supernet is
    trained on."""

    data: DataSource
    space: ss.SearchSpace


def load_splits(spec: DataSpec, loading: DataLoading = IN_MEMORY) -> DataSource:
    """The splits `spec` describes as a batch source: cached tensors, or streamed from disk when larger than
    `loading.memory_limit`."""
    splits, _ = spec.load(loading.memory_limit, loading.cache_dir)
    return data_source(splits, loading.workers)


def prepare(spec: DataSpec, space: SpacePlan, budgets: Budgets, log: Callable[[str], None],
            loading: DataLoading = IN_MEMORY) -> Prepared:
    """Load the data (`loading`: in memory or streamed), then size the space to its channels and classes; every MAC
    and parameter budget is checked against the space exactly as soon as they are known, before it is trimmed
    (`sized_space`)."""
    data = load_splits(spec, loading)
    return Prepared(data, sized_space(data, space, log,
                                      check=lambda sp: check_budgets(budgets, sp, COUNTED)))


def sized_space(data: DataSource, plan: SpacePlan, log: Callable[[str], None],
                check: Callable[[ss.SearchSpace], None] | None = None) -> ss.SearchSpace:
    """The space of `plan` (compound-scaled by its phi) sized to the data's channels and classes and, with a MAC
    budget, trimmed to its `trim_fraction` of it (`search_spaces.trim_to_budget`, never below the space's smallest
    network), so the supernet trains only networks near or under the budget.

    `check` (the MAC budget's reachability is checked in any case) sees the space as soon as the data's channels
    and classes are known, before it is trimmed: trimming drops only top choices, so the smallest network, and with
    it whether a budget is reachable, stays the same.
    """
    train = data.splits.train
    sp = ss.get_space(plan.name, plan.phi).with_io(train.in_channels, train.num_classes)
    if check is not None:
        check(sp)
    if plan.max_macs:
        ss.check_reachable(sp, ss.Budget("macs", plan.max_macs), ss.count_macs, name="--budget")
        sp = ss.trim_to_budget(sp, max(plan.max_macs * plan.trim_fraction, ss.count_macs(sp.smallest())))
    streamed = " (streamed from disk)" if isinstance(train, StreamDataset) else ""
    log(f"data {train.name.rpartition('/')[0] or train.name}{streamed}: {len(train)} train / {len(data.splits.val)} "
        f"val / {len(data.splits.test)} test, {train.num_classes} classes; space {sp.name} "
        f"({ss.count_macs(sp.smallest()) / 1e6:.1f}..{ss.count_macs(sp.largest()) / 1e6:.1f}M MACs)")
    return sp


def check_budgets(budgets: Budgets, space: ss.SearchSpace, kinds: tuple[str, ...],
                  latency_ms: Callable[[ss.Arch], float] | None = None, where: str = "", note: str = "") -> None:
    """Refuse every budget of `kinds` that no architecture of `space` meets, naming its flag and the smallest
    reachable cost (`where` and `note` as in `search_spaces.check_reachable`, `where` for latency only). A latency
    budget is checked (with `latency_ms`) also as the MnasNet reward's target: a target nothing reaches means no
    more than such a limit."""
    from nas.kernels import memory

    costs: dict[str, Callable[[ss.Arch], float] | None] = {
        "macs": ss.count_macs, "params": lambda a: ss.count(a).params, "latency_ms": latency_ms,
        **{kind: functools.partial(memory.cost, kind) for kind in ss.MEMORY_KINDS}}
    for flag, budget in budgets:
        cost = costs[budget.kind]
        if budget.kind in kinds and cost is not None:
            ss.check_reachable(space, budget, cost, name=flag, where=where if budget.kind == "latency_ms" else "",
                               note=note)


def check_before_data(spec: DataSpec, space: SpacePlan, budgets: Budgets) -> None:
    """The MAC and parameter budgets against the space before any data is loaded: exactly for the built-in data
    set (its channels and classes are known), else against the cheapest input (1 channel, 1 class), a lower
    bound of every data set's costs; `prepare` checks exactly once the data is in."""
    builtin = spec.source.lower() in BUILTIN_IO and not Path(spec.source).expanduser().exists()
    io = BUILTIN_IO[spec.source.lower()] if builtin else CHEAPEST_IO
    note = "" if builtin else " even with 1 input channel and 1 class"
    check_budgets(budgets, ss.get_space(space.name, space.phi).with_io(*io), COUNTED, note=note)
