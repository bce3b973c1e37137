"""The verify step's wall time: its K fine-tunes one after another in this process vs in parallel as Ray tasks.

`nas search --train-workers N` (N > 1) runs the verify step's fine-tunes as Ray tasks, up to N at once
(`nas.search.verify.finetune_parallel`); with one training worker they run one after another. This times both on
the same K candidates (random sub-networks of the space, fine-tuned from an untrained supernet's weights: the
time does not depend on the weights), the same data and recipe, each fine-tune with --threads torch threads, and
checks the two give the same validation accuracies. The parallel run uses an embedded local Ray with N CPUs; its
start-up is timed separately.

Figures from a machine other processes share are not results: run it on a quiet one with at least N x --threads
cores.

    python benchmarks/bench_verify_parallel.py [--space small32] [--candidates 3] [--workers 3] [--epochs 2]
        [--train-images 2000] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# a fixed thread count: the fair-share sizing (nas.cores) would re-size threads mid-measurement on a shared machine
os.environ.setdefault("NAS_FAIR_THREADS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # an embedded, loopback-only Ray

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import search_spaces as ss  # noqa: E402
from nas.backend import CPU, TrainBackend, cpu_model  # noqa: E402
from nas.data import DataSpec  # noqa: E402
from nas.io import write_atomic  # noqa: E402
from nas.search.prepare import load_splits  # noqa: E402
from nas.search.runner import connect_ray  # noqa: E402
from nas.search.scoring import TrialScorer  # noqa: E402
from nas.search.verify import verify  # noqa: E402
from nas.supernet import SubnetEvaluator  # noqa: E402
from nas.supernet.model import Supernet  # noqa: E402
from nas.train import TrainRecipe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="small32", choices=sorted(ss.SPACES))
    ap.add_argument("--candidates", type=int, default=3, help="K fine-tunes (the default search verifies 3)")
    ap.add_argument("--workers", type=int, default=3, help="--train-workers: fine-tunes at once")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=None, help="a subset of digits' training split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each fine-tune")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.candidates < 2 or args.workers < 2:
        print("--candidates and --workers: at least 2 (one of either runs sequentially)", file=sys.stderr)
        return 2

    data = load_splits(DataSpec.of("digits", 0, args.train_images))
    train = data.splits.train
    space = ss.get_space(args.space).with_io(train.in_channels, train.num_classes)
    torch.manual_seed(0)
    scorer = TrialScorer(SubnetEvaluator(Supernet(space), data, "val", calib_images=128), supernet_key="bench")
    rng, archs = random.Random(0), {}
    while len(archs) < args.candidates:
        arch = space.random_arch(rng)
        archs[arch.hash()] = arch
    candidates = pd.DataFrame([{"trial": i, "arch": ss.encode(a), "macs": ss.count_macs(a), "params": 0,
                                "latency_ms": float(i), "val_acc": 0.0} for i, a in enumerate(archs.values())])
    recipe = TrainRecipe(epochs=args.epochs, threads=args.threads)
    quiet = lambda _: None  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        seq, _, _ = verify(candidates, scorer, recipe, CPU, Path(tmp) / "seq", quiet)
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        connect_ray(None, args.workers)
        ray_start_s = time.perf_counter() - start
        start = time.perf_counter()
        par, _, _ = verify(candidates, scorer, recipe, TrainBackend(workers=args.workers), Path(tmp) / "par", quiet)
        parallel_s = time.perf_counter() - start
    same = seq["verified_val_acc"].tolist() == par["verified_val_acc"].tolist()

    print(f"# Verify step: {args.candidates} fine-tunes of {args.space} sub-networks, {args.epochs} epochs on "
          f"{len(train)} digits images, {args.threads} thread(s) each")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}\n")
    print("| verify step | wall s | vs sequential |")
    print("|---|---:|---:|")
    print(f"| sequential (1 training worker) | {sequential_s:.1f} | 1.00x |")
    print(f"| parallel, {args.workers} Ray tasks at once | {parallel_s:.1f} | {sequential_s / parallel_s:.2f}x |")
    print(f"\nembedded Ray start-up (once per run, not in the rows): {ray_start_s:.1f} s; same val accuracies: "
          f"{same}")
    if args.json is not None:
        blob = json.dumps({"cpu": cpu_model(), "space": args.space, "candidates": args.candidates,
                           "workers": args.workers, "epochs": args.epochs, "threads": args.threads,
                           "train_images": len(train), "sequential_s": sequential_s, "parallel_s": parallel_s,
                           "ray_start_s": ray_start_s, "same_results": same}, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
