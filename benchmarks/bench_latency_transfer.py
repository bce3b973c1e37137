"""Accuracy of a transferred latency table (`nas profile --sample F --from TABLE`) against a full one.

    python benchmarks/bench_latency_transfer.py --source results/latency/kernels.csv \\
        --target results/latency/kernels-reference.csv [--space small32] [--seeds 5] [--archs 100]

Both tables must cover the ops of `--space`; a missing one is profiled first (its device read from the file
name, e.g. kernels-reference, kernels-t2), existing ones are never re-measured. For each fraction and seed the
benchmark takes the sample `nas profile --sample` would measure, keeps the full target table's rows for it, and
transfers the rest from the source table. Reported per fraction (mean over seeds, the statistic the predictor
sums, p10_ms): op-level MAPE and share within +-10% / +-5% on the transferred ops, the same MAPE for one global
target/source ratio (the naive transfer), and network-level MAPE of `Predictor` sums over `--archs` random
architectures of the space, transferred table vs full table.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces as ss  # noqa: E402
from latency_models import DeviceSpec, LatencyTable, Overhead, Predictor, enumerate_ops, profile  # noqa: E402
from latency_models.predictor import DEFAULT_STAT  # noqa: E402
from latency_models.transfer import choose_sample, source_times, transfer_table  # noqa: E402


def full_table(path: Path, ops: list) -> LatencyTable:
    """The table at `path`, profiled first (on the device its name says) when it is missing or incomplete."""
    have = LatencyTable.load(path).keys() if path.exists() else set()
    if not set(ops) <= have:
        profile(DeviceSpec.make(path.stem), ops, path)
    return LatencyTable.load(path)


def errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.abs(pred / true - 1.0)


def run_one(source: LatencyTable, target: LatencyTable, ops: list, archs: list, fraction: float, seed: int
            ) -> dict[str, float]:
    sample = set(choose_sample(source, ops, fraction, seed))
    measured = LatencyTable(target.frame[[k in sample for k in _keys(target)]].reset_index(drop=True),
                            target.fingerprint)
    table, report = transfer_table(source, measured, ops)
    full, got = target.lookup(DEFAULT_STAT), table.lookup(DEFAULT_STAT)
    src = source_times(source, ops)[0][DEFAULT_STAT]  # a fused block the source lacks: its layers' sum
    moved = [o for o in ops if o not in sample]
    true = np.array([full[o] for o in moved])
    op_err = errors(np.array([got[o] for o in moved]), true)
    ratio = float(np.median([full[o] / src[o] for o in sample]))
    naive_err = errors(np.array([src[o] * ratio for o in moved]), true)
    overhead = Overhead.from_dict(target.overhead)
    p_full, p_moved = Predictor(target, overhead, DEFAULT_STAT), Predictor(table, overhead, DEFAULT_STAT)
    net_err = errors(np.array([p_moved(a) for a in archs]), np.array([p_full(a) for a in archs]))
    return {"measured": report.fraction, "op_mape": 100 * op_err.mean(), "within10": 100 * (op_err <= 0.10).mean(),
            "within5": 100 * (op_err <= 0.05).mean(), "naive_mape": 100 * naive_err.mean(),
            "net_mape": 100 * net_err.mean(), "net_max": 100 * net_err.max(), "outside": report.outside}


def _keys(table: LatencyTable) -> list:
    return list(table.lookup())  # rows in frame order


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="full table of the device already profiled")
    p.add_argument("--target", type=Path, required=True, help="full table of the new device (the truth)")
    p.add_argument("--space", default="small32", choices=sorted(ss.SPACES))
    p.add_argument("--fractions", default="0.02,0.05,0.1,0.2")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--archs", type=int, default=100)
    args = p.parse_args()
    space = ss.get_space(args.space)
    ops = enumerate_ops([space], device=DeviceSpec.make(args.target.stem))  # what the new device runs
    source = full_table(args.source, enumerate_ops([space], device=DeviceSpec.make(args.source.stem)))
    target = full_table(args.target, ops)
    rng = random.Random(0)
    archs = [space.random_arch(rng) for _ in range(args.archs)]
    print(f"source {args.source} ({source.fingerprint.get('table_id')}, isa {source.fingerprint.get('isa')}) -> "
          f"target {args.target} ({target.fingerprint.get('table_id')}, isa {target.fingerprint.get('isa')}); "
          f"{len(ops)} ops of {args.space}; {args.seeds} seeds; network error over {len(archs)} archs; "
          f"stat {DEFAULT_STAT}\n")
    print("| fraction | measured | op MAPE | op within ±10% | op within ±5% | op MAPE, one ratio | network MAPE | "
          "network max err | ops outside sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for fraction in (float(f) for f in args.fractions.split(",")):
        runs = [run_one(source, target, ops, archs, fraction, seed) for seed in range(args.seeds)]
        m = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        print(f"| {fraction:g} | {100 * m['measured']:.1f}% | {m['op_mape']:.1f}% | {m['within10']:.0f}% | "
              f"{m['within5']:.0f}% | {m['naive_mape']:.1f}% | {m['net_mape']:.2f}% | {m['net_max']:.1f}% | "
              f"{m['outside']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
