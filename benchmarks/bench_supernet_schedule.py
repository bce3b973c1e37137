"""Which progressive-shrinking schedule gives the best shared weights per second of training?

Trains one supernet per schedule on the data, space and budget `nas search` uses (same split, same trimming to
the MAC budget), then scores the same fixed random sub-networks under the budget with every supernet (extract +
batch-norm recalibration on 256 training images + validation accuracy, as a search trial does). Prints the
training time and the mean / min accuracy of those sub-networks, plus the largest and smallest ones; run one
at a time on an otherwise idle machine, since the times are compared.

    python benchmarks/bench_supernet_schedule.py                                   # default vs the old default
    python benchmarks/bench_supernet_schedule.py --schedules "1,1,1,2/0.5/2" "1,1,1,2/0.5/0,2,2"

A schedule is `EPOCHS/WARMUP/RANDOM`: epochs of the phases largest,kernel,depth,width; the warm-up fraction of
each shrinking phase; random sub-networks per step, one count or one per shrinking phase (kernel,depth,width).
Supernets are cached under `--out`/supernets, so a rerun only scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import search_spaces as ss
from nas.data import TensorSplits, load_dataset, split
from nas.io import results_dir, write_atomic
from nas.supernet import SubnetEvaluator, SupernetRecipe, train_supernet


def parse_schedule(text: str) -> SupernetRecipe:
    """`EPOCHS/WARMUP/RANDOM` -> the recipe `nas search` would use with those settings."""
    parts = text.split("/")
    if len(parts) != 3:
        raise ValueError(f"schedule: expected EPOCHS/WARMUP/RANDOM like 1,1,1,2/0.5/2, got {text!r}")
    epochs = tuple(int(e) for e in parts[0].split(","))
    counts = tuple(int(c) for c in parts[2].split(","))
    return SupernetRecipe(epochs=epochs, batch_size=64, warmup=float(parts[1]), threads=2,
                          random_subnets=counts[0] if len(counts) == 1 else counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", nargs="+", default=["1,1,1,2/0.5/2", "2,1,1,4/0/2"])
    p.add_argument("--data", default="digits")
    p.add_argument("--space", default="small32")
    p.add_argument("--budget", default="100MFLOPs")
    p.add_argument("--archs", type=int, default=24, help="fixed random sub-networks under the budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(results_dir() / "bench_supernet_schedule"))
    args = p.parse_args()
    from nas.memory import keep_heap

    keep_heap()  # as the nas command does: without it every step page-faults its activations in (25% system time)
    recipes = [parse_schedule(s) for s in args.schedules]
    budget = ss.parse_budget(args.budget)
    data = TensorSplits(split(load_dataset(args.data), seed=args.seed))
    train = data.splits.train
    space = ss.get_space(args.space).with_io(train.in_channels, train.num_classes)
    space = ss.trim_to_budget(space, budget.value)
    archs = ss.sample(space, budget, n=args.archs, seed=args.seed)
    out = Path(args.out)
    rows = []
    for text, recipe in zip(args.schedules, recipes, strict=True):
        start = time.perf_counter()
        run = train_supernet(space, data, recipe, seed=args.seed, root=out / "supernets", progress=False,
                             pretrained=None)  # timed: never the packaged one
        wall = time.perf_counter() - start
        epochs_s = sum(r["wall_s"] for r in run.history)
        ev = SubnetEvaluator(run.supernet, data, "val", calib_images=256, seed=args.seed)
        accs = [ev(a) for a in archs]
        row = {"schedule": text, "train_s": round(wall, 1), "epochs_s": round(epochs_s, 1),
               "mean": statistics.fmean(accs), "min": min(accs),
               "largest": ev(space.largest()), "smallest": ev(space.smallest()), "accs": accs}
        rows.append(row)
        print(f"{text:>22}: trained in {wall:6.1f} s (epochs {epochs_s:6.1f} s), {len(archs)} sub-networks mean "
              f"{row['mean']:.3f} min {row['min']:.3f}, largest {row['largest']:.3f} smallest {row['smallest']:.3f}",
              flush=True)
    result = {"data": args.data, "space": space.name, "budget": args.budget, "seed": args.seed,
              "archs": [str(a) for a in archs], "rows": rows}
    path = out / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    print(f"\n| schedule (epochs / warm-up / random per step) | training | mean of {len(archs)} (min) | "
          "largest / smallest |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['schedule']} | {r['train_s']:.0f} s | {r['mean']:.3f} ({r['min']:.3f}) | "
              f"{r['largest']:.3f} / {r['smallest']:.3f} |")
    print(f"results in {path}")


if __name__ == "__main__":
    main()
