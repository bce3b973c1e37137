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
