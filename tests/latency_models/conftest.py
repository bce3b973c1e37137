"""Shared fixtures: a small real latency table measured on PyTorch fp32 (fast to profile)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # an editable install made before latency_models/ existed maps it as a namespace
    sys.path.insert(0, str(ROOT))

import search_spaces as ss  # noqa: E402
from latency_models import DeviceSpec, arch_ops, profile  # noqa: E402


@pytest.fixture(scope="session")
def archs() -> list[ss.Arch]:
    space = ss.get_space("small32")
    rng = random.Random(7)
    return [space.random_arch(rng) for _ in range(6)]


@pytest.fixture(scope="session")
def fp32_table(tmp_path_factory: pytest.TempPathFactory, archs: list[ss.Arch]):
    """The ops of `archs`, really measured on torch-fp32 with few repetitions."""
    ops = sorted({o for a in archs for o in arch_ops(a)})
    path = tmp_path_factory.mktemp("lat") / "torch-fp32.csv"
    return profile(DeviceSpec.make("torch-fp32"), ops, path, reps=5, progress=False, log=lambda s: None)


def _with_fused_rows(table, values: dict, threads: int | None = None, serial: float = 1.0):
    """A copy of `table` plus one measured row per fused-block key of `values` (every statistic that value,
    `serial_ms` `serial` times it), its fingerprint's thread count set to `threads` if given."""
    from latency_models import LatencyTable
    from latency_models.table import STAT_COLUMNS

    fp = {**table.fingerprint, **({"threads": threads} if threads is not None else {})}
    out = LatencyTable(table.frame.copy(), fp, table.overhead)
    stats = {c: 0 for c in STAT_COLUMNS}
    out.add([{**k._asdict(), "bits": 8, "macs": k.macs, **stats, "median_ms": ms, "p10_ms": ms, "min_ms": ms,
              "mad_ms": 0.0, "max_ms": ms, "n": 5, "passes": 1, "serial_ms": ms * serial}
             for k, ms in values.items()])
    return out


@pytest.fixture(scope="session")
def with_fused_rows():
    """`_with_fused_rows`: a table with fused-block rows of known times added."""
    return _with_fused_rows
