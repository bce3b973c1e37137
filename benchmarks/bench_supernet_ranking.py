"""Does the supernet rank architectures like stand-alone training does? Kendall tau / Spearman rho on real data.

Samples architectures of the default space spread evenly over a MAC range (at the space's own resolutions),
trains one supernet with progressive shrinking, scores every architecture with the supernet (extract + BN
recalibration + val accuracy) and by training it from scratch with one shared recipe, and reports rank
correlations and wall times. `--res-scale 0.5` runs every network at half the space's resolutions (digits are
8x8 images, so 12-16 px loses nothing) to fit a 2-core budget; MACs are reported at both resolutions.

    python benchmarks/bench_supernet_ranking.py                       # digits (built in)
    python benchmarks/bench_supernet_ranking.py --data ../shared/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from scipy import stats

import search_spaces as ss
from nas.data import TensorSplits, load_dataset, split
from nas.io import results_dir
from nas.supernet import SubnetEvaluator, SupernetRecipe, train_supernet
from nas.train import TrainRecipe, train_standalone


def spread_archs(space: ss.SearchSpace, n: int, lo: float, hi: float, seed: int,
                 draw: Callable[[random.Random], ss.Arch] | None = None) -> list[ss.Arch]:
    """`n` architectures of `space`, one per equal-width MAC bin of [lo, hi] (first seeded draw in each bin);
    `draw` makes one architecture from the generator (default: uniform per choice, `space.random_arch`)."""
    rng = random.Random(seed)
    width = (hi - lo) / n
    draw = draw or space.random_arch
    chosen: dict[int, ss.Arch] = {}
    for _ in range(200_000):
        arch = draw(rng)
        b = int((ss.count_macs(arch) - lo) // width)
        if 0 <= b < n and b not in chosen:
            chosen[b] = arch
            if len(chosen) == n:
                break
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} of {n} MAC bins in [{lo:g}, {hi:g}] reachable in {space.name}")
    return [chosen[b] for b in range(n)]


def scaled(arch: ss.Arch, factor: float) -> ss.Arch:
    return arch.replace(resolution=int(round(arch.resolution * factor)))


def main() -> None:
    from nas.memory import keep_heap

    keep_heap()  # as the nas command does: training buffers stay in the heap
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="dataset name or path (e.g. a Fashion-MNIST IDX folder)")
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--macs", default="16,80", help="MAC range in millions at the space's resolutions")
    p.add_argument("--budget", type=float, default=100,
                   help="trim the space to this many million MACs first, as `nas search --budget` does")
    p.add_argument("--res-scale", type=float, default=0.5)
    p.add_argument("--supernet-epochs", default="2,1,1,2", help="epochs of phases largest,kernel,depth,width")
    p.add_argument("--standalone-epochs", type=int, default=3)
    p.add_argument("--standalone-lr", type=float, default=0.05)
    p.add_argument("--standalone-seeds", type=int, default=2,
                   help="train every architecture with this many seeds; the ranking target is their mean, and "
                        "the rank agreement between two seeds is the noise ceiling of any proxy")
    p.add_argument("--random-subnets", type=int, default=1, help="sandwich rule: random sub-networks per step")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="learning-rate warm-up, fraction of each shrinking phase (nas search uses 0.5)")
    p.add_argument("--supernet-batch-size", type=int, default=64, help="(defaults: the recipe `nas search` uses)")
    p.add_argument("--batch-size", type=int, default=32, help="stand-alone training batch size")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None,
                   help="result JSON (default <results>/bench_supernet/<data>.json, see nas.io.results_dir)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    lo, hi = (float(v) * 1e6 for v in args.macs.split(","))
    # the space `nas search --budget` trains its supernet on
    base = ss.trim_to_budget(ss.get_space(ss.DEFAULT_SPACE), args.budget * 1e6)
    archs_native = spread_archs(base, args.archs, lo, hi, args.seed)
    space = replace(base, resolutions=tuple(int(round(r * args.res_scale)) for r in base.resolutions))
    archs = [scaled(a, args.res_scale) for a in archs_native]
    dataset = load_dataset(args.data)
    splits = split(dataset, seed=args.seed, val_fraction=args.val_fraction)
    space = space.with_io(dataset.in_channels, dataset.num_classes)
    archs = [a.replace(in_channels=dataset.in_channels, num_classes=dataset.num_classes) for a in archs]
    data = TensorSplits(splits)
    name = Path(args.data).name if args.data != "digits" else "digits"
    # stand-alone results are cached per (data, epochs) and reused across supernet recipes
    out = Path(args.out or results_dir() / "bench_supernet" / f"{name}_standalone{args.standalone_epochs}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text()) if out.exists() else {}
    print(f"{dataset!r}; train {len(splits.train)} val {len(splits.val)}; space {space.name} at {space.resolutions}")

    recipe = SupernetRecipe(epochs=tuple(int(e) for e in args.supernet_epochs.split(",")),
                            batch_size=args.supernet_batch_size, random_subnets=args.random_subnets,
                            warmup=args.warmup, threads=args.threads,
                            probe_each_epoch=True)  # the per-epoch curve is part of the report
    t0 = time.perf_counter()
    run = train_supernet(space, data, recipe, seed=args.seed, pretrained=None)  # trained (and timed) here
    supernet_s = time.perf_counter() - t0
    supernet_train_s = sum(h["wall_s"] for h in run.history)
    print(f"supernet: {run.path} ({supernet_train_s:.0f}s of training epochs, {supernet_s:.0f}s this call)")

    evaluator = SubnetEvaluator(run.supernet, data, "val", calib_images=256, seed=args.seed)
    for a in archs[:2]:
        evaluator(a)  # warm the per-resolution tensor caches
    eval_times, super_acc = [], []
    for a in archs:
        t = time.perf_counter()
        super_acc.append(evaluator(a))
        eval_times.append(time.perf_counter() - t)

    seeds = [args.seed + k for k in range(args.standalone_seeds)]
    recipes = [TrainRecipe(epochs=args.standalone_epochs, lr=args.standalone_lr, batch_size=args.batch_size,
                           seed=s, threads=args.threads) for s in seeds]
    train_recipe = recipes[0]
    rows = done.get("rows", {})
    for i, (a, native) in enumerate(zip(archs, archs_native, strict=True)):
        r = rows.setdefault(a.hash(), {"arch": str(a), "macs": ss.count_macs(a), "macs_native": ss.count_macs(native),
                                       "params": ss.count(a).params, "runs": {}})
        for sa_recipe in recipes:  # one entry per seed, saved as soon as it is trained (the benchmark resumes)
            if str(sa_recipe.seed) not in r["runs"]:
                _, m = train_standalone(a, data, sa_recipe)
                r["runs"][str(sa_recipe.seed)] = {"val": m["val_acc"], "test": m["test_acc"], "s": m["wall_s"]}
                out.write_text(json.dumps({"rows": rows}, indent=1))
        runs = [r["runs"][str(s)] for s in seeds]
        r.update(standalone_val=sum(u["val"] for u in runs) / len(runs),
                 standalone_test=sum(u["test"] for u in runs) / len(runs), standalone_s=sum(u["s"] for u in runs),
                 supernet_val=super_acc[i], eval_s=eval_times[i])
        print(f"[{i + 1:2d}/{len(archs)}] {r['macs_native'] / 1e6:6.1f}M MACs ({r['macs'] / 1e6:5.1f}M run) "
              f"supernet {r['supernet_val']:.3f} standalone {r['standalone_val']:.3f} "
              f"(seeds {' '.join(format(u['val'], '.3f') for u in runs)}; {r['standalone_s']:.0f}s)", flush=True)
        out.write_text(json.dumps({"rows": rows}, indent=1))

    sa = [rows[a.hash()]["standalone_val"] for a in archs]
    tau = stats.kendalltau(super_acc, sa)
    rho = stats.spearmanr(super_acc, sa)
    per_seed = [[rows[a.hash()]["runs"][str(s)]["val"] for a in archs] for s in seeds]
    noise: dict[str, float | None] = {"kendall_tau_seed0": None, "kendall_tau_seed0_vs_seed1": None,
                                      "kendall_tau_half_vs_half": None, "kendall_tau_supernet_vs_half": None}
    if len(seeds) > 1:  # how well one stand-alone run ranks like another: the ceiling for any proxy
        noise["kendall_tau_seed0"] = stats.kendalltau(super_acc, per_seed[0]).statistic
        noise["kendall_tau_seed0_vs_seed1"] = stats.kendalltau(per_seed[0], per_seed[1]).statistic
    if len(seeds) >= 4:  # the mean of half the seeds against the mean of the other half, and the supernet's tau
        # against each half: a proxy as good as re-training (with half the seeds) matches the half-vs-half tau
        half = len(seeds) // 2
        means = [[sum(col) / len(col) for col in zip(*part, strict=True)]
                 for part in (per_seed[:half], per_seed[half:2 * half])]
        noise["kendall_tau_half_vs_half"] = stats.kendalltau(*means).statistic
        noise["kendall_tau_supernet_vs_half"] = sum(stats.kendalltau(super_acc, m).statistic for m in means) / 2
    macs = [rows[a.hash()]["macs"] for a in archs]
    summary = {
        "data": args.data, "dataset": repr(dataset), "space": space.name, "resolutions": space.resolutions,
        "n_archs": len(archs), "kendall_tau": tau.statistic, "kendall_p": tau.pvalue,
        "spearman_rho": rho.statistic, "spearman_p": rho.pvalue,
        **noise, "standalone_seeds": seeds,
        "tau_macs_vs_standalone": stats.kendalltau(macs, sa).statistic,
        "tau_macs_vs_supernet": stats.kendalltau(macs, super_acc).statistic,
        "supernet_train_s": supernet_train_s, "supernet_dir": str(run.path), "supernet_history": run.history,
        "eval_s_mean": sum(eval_times) / len(eval_times), "evals_per_s": len(eval_times) / sum(eval_times),
        "standalone_s_total": sum(rows[a.hash()]["standalone_s"] for a in archs),
        "supernet_recipe": asdict(recipe), "standalone_recipe": asdict(train_recipe),
        "threads": args.threads, "wall_s": time.perf_counter() - t_all,
    }
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    out.with_name(f"{out.stem}_supernet{run.key}.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "supernet_history"}, indent=1, default=str))


if __name__ == "__main__":
    main()
