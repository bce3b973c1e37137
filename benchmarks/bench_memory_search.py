"""A memory-constrained search beside an unconstrained one (issue #33), in one run.

1. `nas search --budget B` (no memory limit) on the given data;
2. a peak-memory limit that excludes most of that run's Pareto front (its `--quantile` of the front's peak
   activation bytes as `--peak-memory` counts them, rounded down to 1 KB), unless `--limit` is given;
3. `nas search --budget B --peak-memory LIMIT`, same data, supernet (cached by the first run), seed and trials;
4. both fronts side by side: supernet val accuracy, predicted and measured latency (the search's own report
   measures the front), and the peak activation memory measured on the executor: each front network is lowered
   with random weights, run once on the kernels, and the arena it allocated is read back (`memory_plan`).

    python benchmarks/bench_memory_search.py --data ../shared/datasets/fashion-mnist --train-images 2000 \
        --val-images 500 --trials 40 --out results/memsearch --md benchmarks/RESULTS_memory_search.md

Searches resume: a study already complete under `--out` is read back, not run again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import search_spaces as ss
from latency_models.kernel_runner import kernel_network
from nas.cpuinfo import cpu_model
from nas.io import write_atomic


def search(args: argparse.Namespace, study: str, extra: list[str]) -> pd.DataFrame:
    """Runs (or resumes) one search; returns its pareto.csv."""
    run_dir = args.out / study
    pareto = run_dir / "pareto.csv"
    if not pareto.exists():
        cmd = ["nas", "search", "--budget", args.budget, "--data", args.data, "--trials", str(args.trials),
               "--seed", str(args.seed), "--no-finalize", "--out", str(args.out), "--study", study,
               "--data-workers", "0", *extra]
        if args.train_images:
            cmd += ["--train-images", str(args.train_images)]
        if args.val_images:
            cmd += ["--val-images", str(args.val_images)]
        if (run_dir / "study.journal").exists():
            cmd.append("--resume")
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"  {study}: {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.read_csv(pareto)


def measured_arena(arch_text: str, fused: bool) -> int:
    """Bytes of the activation arena the kernels' executor allocates for one image of this network (1 thread), with
    fused blocks where they pay (the default) or layer by layer, read back after a run."""
    arch = ss.decode(arch_text)
    net = kernel_network(arch)
    shape = (1, arch.resolution, arch.resolution, arch.in_channels)
    net.run(np.zeros(shape, dtype=np.uint8), fused=fused)
    return net.memory_plan(shape, fused=fused).arena_bytes


def table(front: pd.DataFrame, limit: int | None) -> list[str]:
    lines = ["| val acc (supernet) | predicted ms | measured ms | MMACs | peak activation, layer by layer | "
             "fused blocks (counted) | int8 weights | under the limit | arch |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in front.itertuples():
        under = "-" if limit is None else ("yes" if r.fused <= limit else "no")
        lines.append(f"| {r.val_acc:.4f} | {r.latency_ms:.3f} | {r.measured_ms:.3f} | {r.macs / 1e6:.1f} | "
                     f"{r.arena / 1e3:,.1f} KB | {r.fused / 1e3:,.1f} KB | {r.weight_bytes / 1e3:,.0f} KB | {under} | "
                     f"`{r.arch}` |")
    return lines


def verified(args: argparse.Namespace, study: str) -> list[str]:
    """The run's verify step: candidates fine-tuned from the supernet, the chosen one marked."""
    path = args.out / study / "verify" / "verify.csv"
    if not path.exists():
        return ["(no verify step in this run)"]
    df = pd.read_csv(path)
    lines = ["| fine-tuned val acc ± se | supernet val acc | predicted ms | MMACs | peak activation, layer by layer | "
             "fused blocks | chosen |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.verified_val_acc:.4f} ± {r.val_se:.4f} | {r.supernet_val_acc:.4f} | {r.latency_ms:.3f} | "
                     f"{r.macs / 1e6:.1f} | {measured_arena(r.arch, fused=False) / 1e3:,.1f} KB | "
                     f"{measured_arena(r.arch, fused=True) / 1e3:,.1f} KB | {'yes' if r.chosen else ''} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset path (as for nas search --data)")
    ap.add_argument("--budget", default="100MFLOPs")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--quantile", type=float, default=0.25,
                    help="the limit: this quantile of the unconstrained front's peak bytes (default 0.25)")
    ap.add_argument("--limit", default=None, help="a fixed peak-memory limit instead, e.g. 150KB")
    ap.add_argument("--out", type=Path, default=Path("results/memsearch"))
    ap.add_argument("--md", type=Path, default=None, help="write the report here (Markdown)")
    args = ap.parse_args()
    if not 0 < args.quantile < 1:
        ap.error(f"--quantile: expected a fraction in (0, 1), got {args.quantile}")
    limit = ss.parse_bytes(args.limit) if args.limit else None  # checked before the minutes of searching

    free = search(args, "unconstrained", [])
    free["arena"] = [measured_arena(a, fused=False) for a in free["arch"]]
    free["fused"] = [measured_arena(a, fused=True) for a in free["arch"]]
    if limit is None:
        limit = int(np.quantile(free["fused"], args.quantile)) // 1000 * 1000
    excluded = int((free["fused"] > limit).sum())
    print(f"limit {limit / 1e3:g} KB excludes {excluded} of the unconstrained front's {len(free)} networks",
          flush=True)
    capped = search(args, f"peak{limit // 1000}KB", ["--peak-memory", f"{limit // 1000}KB"])
    capped["arena"] = [measured_arena(a, fused=False) for a in capped["arch"]]
    capped["fused"] = [measured_arena(a, fused=True) for a in capped["arch"]]
    if not (capped["fused"] == capped["peak_bytes"]).all():  # what the budget counted, exactly
        raise SystemExit("the executor's arena differs from the search's predicted peak_bytes")

    cpu = cpu_model()
    best = {name: df.sort_values("val_acc", ascending=False).iloc[0] for name, df in
            (("unconstrained", free), ("constrained", capped))}
    fitting = free[free["fused"] <= limit]
    lines = [
        f"# Memory-constrained search (`--budget {args.budget} --peak-memory {limit // 1000}KB`)", "",
        f"`python benchmarks/bench_memory_search.py {' '.join(sys.argv[1:])}`; {cpu}, {os.cpu_count()} vCPUs, "
        f"{time.strftime('%Y-%m-%d')}. Data `{args.data}` ({args.train_images} training images, "
        f"{args.val_images} validation images), {args.trials} trials, seed {args.seed}; accuracy is the "
        "supernet's (the search's trial score), latency predicted by the kernels' table and measured by the "
        "search's report (1 thread, int8); peak activation memory is the arena the executor allocates for one "
        "image (input and logits included), read back after a run: with fused inverted-residual blocks (the "
        "default execution, and what `--peak-memory` counts) and layer by layer.", "",
        f"The limit, {limit / 1e3:g} KB (the {args.quantile:g} quantile of the unconstrained front's peak "
        f"memory), excludes {excluded} of its {len(free)} networks.", "",
        f"- best unconstrained: val acc {best['unconstrained'].val_acc:.4f} at "
        f"{best['unconstrained'].fused / 1e3:,.1f} KB; the unconstrained front's best under the limit: "
        + (f"{fitting.val_acc.max():.4f}" if len(fitting) else "none"),
        f"- best constrained: val acc {best['constrained'].val_acc:.4f} at {best['constrained'].fused / 1e3:,.1f} "
        f"KB; every network on the constrained front fits: "
        f"{'yes' if (capped['fused'] <= limit).all() else 'NO'}", "",
        f"## Unconstrained front ({len(free)} networks)", "", *table(free, limit), "",
        f"## Front under --peak-memory {limit // 1000}KB ({len(capped)} networks)", "", *table(capped, limit), "",
        "## Verify step: candidates fine-tuned from the supernet (the search's choice)", "",
        "Unconstrained:", "", *verified(args, "unconstrained"), "",
        f"Under {limit // 1000} KB:", "", *verified(args, f"peak{limit // 1000}KB"), "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.md:
        write_atomic(args.md, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
