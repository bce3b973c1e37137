"""Runtime ISA selection among the ISAs built into the kernel extension (``reference``, the portable scalar
path, then the vector paths, weakest first; the list is defined once, in ``csrc/config.cpp``).

The default is the best ISA the CPU supports, or ``NAS_KERNELS_ISA`` when set. Forcing an ISA the CPU lacks
raises ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from nas.kernels import _C

ISAS: tuple[str, ...] = tuple(_C.isas)  # weakest first, as the C++ kernel tables list them
ENV_VAR = "NAS_KERNELS_ISA"

_forced: str | None = None


def available_isas() -> list[str]:
    """ISAs this CPU can run, weakest first."""
    return [i for i in ISAS if _C.isa_supported(i)]


def check_isa(isa: str) -> str:
    """Return ``isa`` if it is known and supported here, else raise ``ValueError``."""
    if isa not in ISAS:
        raise ValueError(f"isa: expected one of {ISAS}, got {isa!r}")
    if not _C.isa_supported(isa):
        raise ValueError(f"isa {isa!r} is not supported by this CPU (available: {available_isas()})")
    return isa


def active_isa() -> str:
    """The ISA used when an op is built without an explicit ``isa`` argument."""
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            return check_isa(env)
        except ValueError as exc:  # name the variable: the user set it, no flag did
            raise ValueError(f"{ENV_VAR}={env}: {str(exc).removeprefix('isa: ')}") from None
    return available_isas()[-1]


def set_isa(isa: str | None) -> None:
    """Force the default ISA process-wide for ops built afterwards (``None`` restores env var / best available).

    Public API kept for interactive use; library code and tests scope the choice with ``use_isa`` instead.
    """
    global _forced
    _forced = None if isa is None else check_isa(isa)


@contextmanager
def use_isa(isa: str) -> Iterator[str]:
    """Context manager forcing the default ISA inside a ``with`` block."""
    global _forced
    previous = _forced
    set_isa(isa)
    try:
        yield isa
    finally:
        _forced = previous


def resolve_isa(isa: str | None) -> str:
    """Explicit ``isa`` (checked) or the active default."""
    return active_isa() if isa is None else check_isa(isa)
