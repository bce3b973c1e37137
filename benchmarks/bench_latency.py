"""Latency-model benchmarks: predictions per second, predictor set-up time and profiling time.

    python benchmarks/bench_latency.py [--device kernels] [--table PATH] [--n 20000] [--profile]

Without `--table` it uses `results/latency/<device>.csv` (run `nas profile --device <device>` first).
`--profile` also times a fresh full profile of the default space into a temporary file (one pass).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces as ss  # noqa: E402
from latency_models import (  # noqa: E402
    DeviceSpec,
    LatencyTable,
    Predictor,
    default_table_path,
    enumerate_ops,
    profile,
)


def pruned(arch: ss.Arch, rng: random.Random) -> ss.Arch:
    """`arch` with every expansion width cut by a random multiple of 4 (channel counts no table holds)."""
    stages, c = [], arch.stem_channels
    for stage in arch.stages:
        blocks = []
        for b in stage:
            if b.expand != 1:
                b = replace(b, mid_channels=max(4, b.mid(c) - 4 * rng.randint(1, 4)))
            blocks.append(b)
            c = b.out_channels
        stages.append(tuple(blocks))
    return arch.replace(stages=tuple(stages))


def rate(pred: Predictor, archs: list[ss.Arch]) -> float:
    t = time.perf_counter()
    for a in archs:
        pred.predict_ms(a)
    return len(archs) / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="kernels")
    p.add_argument("--table", default=None)
    p.add_argument("--space", default=ss.DEFAULT_SPACE)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    table = LatencyTable.load(args.table or default_table_path(args.device), args.device)
    space = ss.get_space(args.space)
    rng = random.Random(0)
    archs = [space.random_arch(rng) for _ in range(args.n)]
    prune = [pruned(a, rng) for a in archs[: args.n // 4]]

    t = time.perf_counter()
    pred = Predictor(table)
    setup = time.perf_counter() - t
    cold = rate(pred, archs)
    warm = rate(pred, archs)
    inter = rate(pred, prune)
    print(f"table {table.path}: {len(table)} ops; predictor set-up {setup * 1000:.0f} ms")
    print(f"predictions/s, {args.n} distinct random {space.name} archs, empty caches: {cold:,.0f}")
    print(f"predictions/s, same archs again (block cache warm):               {warm:,.0f}")
    print(f"predictions/s, {len(prune)} pruned archs (interpolated ops):            {inter:,.0f}")
    if args.profile:
        spec = DeviceSpec.make(args.device)
        ops = enumerate_ops([space], device=spec)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            profile(spec, ops, Path(d) / "t.csv", progress=False, log=lambda s: None)
            took = time.perf_counter() - t
        print(f"profiling {len(ops)} ops of {space.name} on {spec.table_id} (1 pass, 30 reps): {took:.1f} s "
              f"({took / len(ops) * 1000:.1f} ms/op)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
