"""Budgets (`100MFLOPs`, `3ms`, `2.5Mparams`) and sampling of architectures that fit them."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from search_spaces.arch import Arch
from search_spaces.cost import count, count_macs
from search_spaces.spaces import SearchSpace

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*"  # a sign is read so that "-5M" is refused as negative
_TIME = re.compile(_NUMBER + r"(ms|us|s)\s*$", re.IGNORECASE)
_BUDGET = re.compile(_NUMBER + r"([kmg]?)\s*(flops?|macs?|params?)?\s*$", re.IGNORECASE)


_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
# budget kinds in bytes: peak activation memory and int8 weights, as the kernels run and store a network
MEMORY_KINDS = ("peak_bytes", "weight_bytes")


def parse_bytes(text: str) -> int:
    """Bytes from `256KB`, `1.5MB`, `2GiB`, `123456`: decimal units (kB, MB, GB, TB; a bare K/M/G/T too) are
    powers of 1000, binary ones (KiB, MiB, GiB, TiB) powers of 1024. Raises ValueError naming what was expected."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _BYTE_UNITS:
        raise ValueError(f"{_shown(text)}: expected a size in bytes such as 256KB, 1.5MB or 2GiB")
    size = int(float(match.group(1)) * _BYTE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"{_shown(text)}: expected a positive size")
    return size


class BudgetError(ValueError):
    """A budget string is malformed, or no architecture of a space can meet a budget."""


@dataclass(frozen=True)
class Budget:
    """A hard limit: `kind` is "macs" (1 MAC = 1 FLOP), "params", "latency_ms", or one of `MEMORY_KINDS` (bytes)."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "latency_ms":
            return f"{self.value:g}ms"
        if self.kind in MEMORY_KINDS:
            return f"{self.value / 1e3:g}KB"
        unit = "MFLOPs" if self.kind == "macs" else "Mparams"
        return f"{self.value / 1e6:g}{unit}"


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut short so that the message stays one readable line."""
    text = str(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_budget(text: str) -> Budget:
    """Parse `100MFLOPs`, `100M` (MACs), `0.1GFLOPs`, `300MMACs`, `3ms`, `500us`, `2.5Mparams`.

    The amount must be positive and finite: a number written with hundreds of digits overflows to infinity,
    which no budget means (and `str()` of the budget names run folders, so it must stay short).
    """
    t = _TIME.match(str(text))
    if t:
        budget = Budget("latency_ms", float(t.group(1)) * {"ms": 1.0, "s": 1e3, "us": 1e-3}[t.group(2).lower()])
    else:
        m = _BUDGET.match(str(text))
        if not m:
            raise BudgetError(
                f"budget: cannot parse {_shown(text)}; expected a number with a unit, e.g. '100MFLOPs', '100M' "
                "(MACs), '0.1GFLOPs', '3ms' or '2.5Mparams'"
            )
        number, prefix, unit = float(m.group(1)), m.group(2).lower(), (m.group(3) or "").lower()
        if number > 0 and not prefix and not unit:
            raise BudgetError(f"budget: {_shown(text)} has no unit; write e.g. '{number:g}M' or '{number:g}MFLOPs'")
        budget = Budget("params" if unit.startswith("param") else "macs", number * _UNITS[prefix])
    if not math.isfinite(budget.value):
        raise BudgetError(f"budget: expected a finite amount, got {_shown(text)}")
    if budget.value <= 0:
        raise BudgetError(f"budget: expected a positive amount, got {_shown(text)}")
    return budget


def cost_fn(budget: Budget, latency_ms: Callable[[Arch], float] | None = None) -> Callable[[Arch], float]:
    """The function that measures an architecture in the budget's unit."""
    if budget.kind == "macs":
        return count_macs
    if budget.kind == "params":
        return lambda a: count(a).params
    if latency_ms is None:
        raise BudgetError("budget: a latency budget needs a latency model (give --device, or profile one first)")
    return latency_ms


def check_reachable(space: SearchSpace, budget: Budget, cost: Callable[[Arch], float], name: str = "budget",
                    where: str = "", note: str = "") -> None:
    """Raise `BudgetError` saying the smallest reachable cost when no architecture of `space` fits.

    `name` starts the message (the flag the budget came from, e.g. `--latency`); `where` follows the budget (e.g.
    " on device kernels") and `note` the smallest cost (e.g. " even with 1 input channel").
    """
    smallest = cost(space.smallest())
    if smallest > budget.value:
        shown = Budget(budget.kind, smallest)
        raise BudgetError(
            f"{name}: nothing in space {space.name!r} fits {budget}{where}; the smallest architecture costs "
            f"{shown}{note} (raise the budget or use a smaller space / resolution)"
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
