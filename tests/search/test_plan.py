"""The plan builder: `--quick` is a preset of typed values, and each flag reaches exactly the value it should."""

from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest

from nas.backend import CPU
from nas.data import DataSpec
from nas.search.plan import DEFAULT, QAT_STEPS, QUICK, SearchPlan, plan, preset
from nas.search.request import SearchRequest
from nas.search.runner import Limits
from nas.search.verify import VERIFY_CANDIDATES


def test_default_and_quick_presets_give_the_expected_typed_values():
    full, quick = plan(SearchRequest()), plan(SearchRequest(quick=True))
    assert preset(False) is DEFAULT and preset(True) is QUICK
    assert (full.study.trials, full.verify, quick.study.trials, quick.verify) == (60, VERIFY_CANDIDATES, 12, 1)
    assert full.data == DataSpec("digits", 0, None, None) and quick.data == DataSpec("digits", 0, 512, None)
    assert (full.space.trim_fraction, quick.space.trim_fraction) == (1.0, 0.5)
    assert full.space.max_macs == quick.space.max_macs == 100e6
    r = full.supernet.recipe
    assert (r.epochs, r.batch_size, r.random_subnets, r.warmup, r.calib_images, r.threads) == (
        (1, 1, 1, 2), 64, 2, 0.5, 256, 2)
    r = quick.supernet.recipe
    assert (r.epochs, r.batch_size, r.random_subnets, r.warmup, r.calib_images, r.threads) == (
        (2, 0, 0, 0), 32, 1, 0.0, 128, 2)
    assert (full.finetune.epochs, quick.finetune.epochs) == (6, 2)
    assert full.finetune.kd_weight == 0.0 and full.finetune.recalibrate_bn == 1024
    assert (full.latency.profile_reps, full.latency.profile_passes) == (30, 3)
    assert (quick.latency.profile_reps, quick.latency.profile_passes) == (10, 1)
    assert (full.latency.overhead_networks, quick.latency.overhead_networks) == (30, 16)
    assert (full.finalize.prune_ratio, full.finalize.w4_qat_steps) == (0.85, QAT_STEPS)
    assert (quick.finalize.prune_ratio, quick.finalize.w4_qat_steps) == (None, 0)
    assert full.fine_tunes and full.backend == CPU  # no GPU in the test environment: auto is the CPU


def _differences(a: SearchPlan, b: SearchPlan) -> set[str]:
    """The plan's leaves (`piece.field`) that differ between `a` and `b`."""
    out = set()
    for f in fields(SearchPlan):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if hasattr(x, "__dataclass_fields__") and hasattr(y, "__dataclass_fields__") and f.name != "backend":
            out |= {f"{f.name}.{k}" for k, v in asdict(x).items() if asdict(y)[k] != v}
        elif x != y:
            out.add(f.name)
    return out


@pytest.mark.parametrize("flags, changed", [
    ({"trials": 7}, {"study.trials"}),
    ({"verify": 2}, {"verify"}),
    ({"supernet_epochs": (2, 1, 1, 1)}, {"supernet.recipe", "study.identity", "study.name", "study.run_dir",
                                          "study.storage"}),
    ({"threads": 1}, {"supernet.recipe", "supernet.threads", "latency.threads", "finetune.threads"}),
    ({"train_images": 300}, {"data.train_images", "finalize.data", "study.identity", "study.name", "study.run_dir",
                             "study.storage"}),
    ({"pretrained": False}, {"supernet.pretrained", "study.identity", "study.name", "study.run_dir",
                             "study.storage"}),
    ({"finalize": False}, {"finalize"}),
    ({"workers": 3}, {"study.workers"}),
    ({"resume": True}, {"study.resume"}),
    ({"storage": "x.journal"}, {"study.storage"}),
])
def test_a_flag_reaches_exactly_the_values_it_should(flags, changed):
    base = plan(SearchRequest())
    other = plan(SearchRequest(**flags))
    assert _differences(base, other) - {"request"} == changed


def test_device_and_table_reach_the_latency_model_and_finalize(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("")
    p = plan(SearchRequest(device="kernels", table=str(table)))
    assert (p.latency.device, p.latency.table) == ("kernels", str(table))
    assert (p.finalize.device, p.finalize.table) == ("kernels", str(table))  # pruning priced by the same table
    p = plan(SearchRequest(device="torch-fp32", table=str(table)))
    assert (p.finalize.device, p.finalize.table) == ("kernels", None)  # another device's table cannot price it
    assert p.latency.where() == f" on device torch-fp32 (table {table})"


def test_budgets_become_limits_and_the_mnasnet_target():
    p = plan(SearchRequest(budget="100MFLOPs", latency="3ms"))
    assert p.study.limits == Limits(macs=100e6, latency_ms=3.0) and p.study.target_ms == 3.0
    p = plan(SearchRequest(budget="100MFLOPs", latency="3ms", objective="mnasnet"))
    assert p.study.limits == Limits(macs=100e6) and p.study.target_ms == 3.0  # the soft reward replaces the limit
    p = plan(SearchRequest(budget="2.5Mparams"))
    assert p.space.max_macs is None and p.study.limits == Limits(params=2.5e6)


def test_the_supernet_recipe_and_run_folder(tmp_path):
    p = plan(SearchRequest(out=str(tmp_path), study="mine"))
    assert p.study.run_dir == Path(tmp_path) / "mine"
    assert p.study.storage == str((Path(tmp_path) / "mine" / "study.journal").resolve())
    assert p.supernet.root == str(tmp_path) and p.latency.root == str(tmp_path)
    assert DEFAULT.supernet_recipe(1, (3, 0, 0, 0)) == replace(DEFAULT.supernet, threads=1, epochs=(3, 0, 0, 0))
    assert not (Path(tmp_path) / "mine").exists()  # building a plan creates nothing
