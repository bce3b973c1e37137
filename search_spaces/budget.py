"""Budgets (`100MFLOPs`, `3ms`, `2.5Mparams`) and sampling of architectures that fit them."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from search_spaces.arch import Arch
from search_spaces.cost import count, count_macs
from search_spaces.spaces import SearchSpace

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*"
_TIME = re.compile(_NUMBER + r"(ms|us|s)\s*$", re.IGNORECASE)
_BUDGET = re.compile(_NUMBER + r"([kmg]?)\s*(flops?|macs?|params?)?\s*$", re.IGNORECASE)


class BudgetError(ValueError):
    """A budget string is malformed, or no architecture of a space can meet a budget."""


@dataclass(frozen=True)
class Budget:
    """A hard limit: `kind` is "macs" (1 MAC = 1 FLOP), "params" or "latency_ms"."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "latency_ms":
            return f"{self.value:g}ms"
        unit = "MFLOPs" if self.kind == "macs" else "Mparams"
        return f"{self.value / 1e6:g}{unit}"


def parse_budget(text: str) -> Budget:
    """Parse `100MFLOPs`, `100M` (MACs), `0.1GFLOPs`, `300MMACs`, `3ms`, `500us`, `2.5Mparams`."""
    t = _TIME.match(str(text))
    if t:
        number, unit = float(t.group(1)), t.group(2).lower()
        if number <= 0:
            raise BudgetError(f"budget: expected a positive amount, got {text!r}")
        return Budget("latency_ms", number * {"ms": 1.0, "s": 1e3, "us": 1e-3}[unit])
    m = _BUDGET.match(str(text))
    if not m:
        raise BudgetError(
            f"budget: cannot parse {text!r}; expected a number with a unit, e.g. '100MFLOPs', '100M' (MACs), "
            "'0.1GFLOPs', '3ms' or '2.5Mparams'"
        )
    number, prefix, unit = float(m.group(1)), m.group(2).lower(), (m.group(3) or "").lower()
    if number <= 0:
        raise BudgetError(f"budget: expected a positive amount, got {text!r}")
    if not prefix and not unit:
        raise BudgetError(f"budget: {text!r} has no unit; write e.g. '{text}M' or '{text}MFLOPs'")
    kind = "params" if unit.startswith("param") else "macs"
    return Budget(kind, number * _UNITS[prefix])


def cost_fn(budget: Budget, latency_ms: Callable[[Arch], float] | None = None) -> Callable[[Arch], float]:
    """The function that measures an architecture in the budget's unit."""
    if budget.kind == "macs":
        return count_macs
    if budget.kind == "params":
        return lambda a: count(a).params
    if latency_ms is None:
        raise BudgetError("budget: a latency budget needs a latency model (give --device, or profile one first)")
    return latency_ms


def check_reachable(space: SearchSpace, budget: Budget, cost: Callable[[Arch], float]) -> None:
    """Raise `BudgetError` saying the smallest reachable cost when no architecture of `space` fits."""
    smallest = cost(space.smallest())
    if smallest > budget.value:
        shown = Budget(budget.kind, smallest)
        raise BudgetError(
            f"budget: nothing in space {space.name!r} fits {budget}; the smallest architecture costs {shown} "
            f"(raise the budget or use a smaller space / resolution)"
        )


def sample(space: SearchSpace, budget: Budget | None = None, n: int = 1, seed: int = 0,
           latency_ms: Callable[[Arch], float] | None = None, tries: int = 8) -> list[Arch]:
    """`n` architectures of `space` that fit `budget`.

    Each is drawn uniformly per choice; after `tries` rejections the last draw is shrunk one random choice at a
    time until it fits, which always ends because the space's smallest architecture is checked to fit first.
    """
    rng = random.Random(seed)
    if budget is None:
        return [space.random_arch(rng) for _ in range(n)]
    cost = cost_fn(budget, latency_ms)
    check_reachable(space, budget, cost)
    out = []
    for _ in range(n):
        for _ in range(tries):
            arch = space.random_arch(rng)
            if cost(arch) <= budget.value:
                break
        else:
            while cost(arch) > budget.value:
                arch = rng.choice(space.shrink_moves(arch))
        out.append(arch)
    return out
