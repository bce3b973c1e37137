"""What can be built: MBConv architectures, their search spaces, costs and PyTorch modules.

Public API: `Arch`, `Block`, `decode`/`encode` (the compact string), `build` (PyTorch module), `layers`/`count`
(exact per-layer MACs and parameters), `get_space`/`SPACES`, `parse_budget`/`sample`, `preset`/`scale`.
"""

from search_spaces.arch import Arch, ArchError, Block, encode, make_divisible
from search_spaces.budget import (
    MEMORY_KINDS,
    Budget,
    BudgetError,
    check_reachable,
    cost_fn,
    parse_budget,
    parse_bytes,
    sample,
)
from search_spaces.cost import Cost, Layer, count, count_macs, layers
from search_spaces.encoding import decode
from search_spaces.presets import PRESETS, preset, scale
from search_spaces.spaces import (
    DEFAULT_SPACE,
    SPACES,
    CompoundScaling,
    SearchSpace,
    StageSpace,
    get_space,
    trim_to_budget,
)

_TORCH_NAMES = ("MBConvNet", "build", "init_weights")


def __getattr__(name: str) -> object:
    """The PyTorch builder (`build`, `MBConvNet`, `init_weights`), imported on first use: code that only reads
    architectures and costs (the exported-checkpoint runtime) never imports torch."""
    if name in _TORCH_NAMES:
        from search_spaces import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_arch(text: str) -> Arch:
    """An architecture from its compact string, its JSON, a path to a JSON file, or a preset name."""
    import os

    text = text.strip()
    if text in PRESETS:
        return preset(text)
    if text.startswith("{"):
        return Arch.from_json(text)
    if text.endswith(".json") or os.path.isfile(text):
        if not os.path.isfile(text):
            raise ArchError(f"arch: file {text!r} does not exist")
        with open(text) as f:
            return Arch.from_json(f.read())
    return decode(text)


__all__ = [
    "MEMORY_KINDS",
    "Arch", "ArchError", "Block", "Budget", "BudgetError", "CompoundScaling", "Cost", "DEFAULT_SPACE", "Layer",
    "MBConvNet", "PRESETS", "SPACES", "SearchSpace", "StageSpace", "build", "check_reachable", "cost_fn", "count",
    "count_macs", "decode", "encode", "get_space", "init_weights", "layers", "make_divisible", "parse_arch",
    "parse_budget", "parse_bytes", "preset", "sample", "scale", "trim_to_budget",
]
