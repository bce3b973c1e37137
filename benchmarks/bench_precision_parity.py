"""Accuracy parity of mixed-precision training: fp32 vs bf16 (vs fp16 on a GPU), several seeds, two datasets.

Trains one architecture stand-alone (`nas.train.train_standalone`, the code `nas train arch` and the search's
fine-tunes run) from scratch with each seed and each precision the machine supports (`nas.backend.resolve`:
others are reported as skipped, with the reason), on digits and on a class-stratified subset of Fashion-MNIST,
and prints the test accuracy per precision as mean +- standard deviation over the seeds, with the difference to
fp32. Parity means that difference is within the seeds' spread (training noise).

    python benchmarks/bench_precision_parity.py [--data /work/shared/datasets/fashion-mnist] [--seeds 3]
        [--epochs 10] [--train-device auto] [--train-images 5000] [--json out.json]

Runs on a GPU box as it is (fp32, bf16 and fp16 with a loss scaler); on a CPU without AMX-BF16 or AVX512-BF16
it reports bf16 and fp16 unsupported (`--emulated` trains them anyway through the same autocast and loss-scaler
code, slowly: the accuracy is a result, the time is not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import search_spaces as ss
from nas.backend import PRECISIONS, TrainBackend, cpu_model, hardware_name, resolve
from nas.data import TensorSplits, load_dataset, split, stratified_subset
from nas.io import write_atomic
from nas.train import TrainRecipe, train_standalone

FASHION = "/work/shared/datasets/fashion-mnist"


def backends(device: str, emulated: bool) -> list[tuple[str, TrainBackend | None, str]]:
    """(precision, back end or None, why skipped) for fp32, bf16 and fp16 on `device`; raises `ValueError` (one
    line) for a device this machine does not have. `emulated`: on a CPU, bf16 and fp16 that `resolve` refuses
    (no bf16 instructions; no fast fp16 at all) are trained anyway, through the same autocast and loss-scaler code
    a GPU runs, many times slower: an accuracy check, never a speed figure."""
    out = [("fp32", resolve(device, "fp32"), "")]
    for precision in PRECISIONS[1:]:
        try:
            out.append((precision, resolve(device, precision), ""))
        except ValueError as exc:
            backend = None
            if emulated and out[0][1].device == "cpu":
                backend = TrainBackend("cpu", precision)
            out.append((precision, backend, "emulated on this CPU" if backend else str(exc)))
    return out


def splits_of(data: str, train_images: int | None, test_images: int | None, seed: int = 0,
              val_images: int | None = None) -> TensorSplits:
    """The train / val / test split of `data` (seed 0), each cut to a class-stratified subset where asked (the
    val split is scored after every epoch: a large one costs more than training on a small train subset)."""
    splits = split(load_dataset(data), seed=seed)
    for part, n, flag in (("train", train_images, "--train-images"), ("val", val_images, "--val-images"),
                          ("test", test_images, "--test-images")):
        if n is not None and n < len(getattr(splits, part)):
            splits = replace(splits, **{part: stratified_subset(getattr(splits, part), n, seed, flag)})
    return TensorSplits(splits)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {std:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=None,
                    help=f"datasets (repeatable; default digits and {FASHION} when it exists)")
    ap.add_argument("--arch", default=None, help="architecture (default: the default space's largest at 24 px)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=5000, help="class-stratified training subset (per dataset)")
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=2000, help="class-stratified val subset (scored every epoch)")
    ap.add_argument("--train-device", default="auto")
    ap.add_argument("--emulated", action="store_true",
                    help="on a CPU, train bf16 / fp16 even where this CPU only emulates them (slow: accuracy only)")
    ap.add_argument("--precision", action="append", default=None, choices=PRECISIONS[1:],
                    help="mixed precisions to compare with fp32 (repeatable; default: bf16 and fp16)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's accuracies as JSON here")
    args = ap.parse_args()
    datasets = args.data or ["digits"] + ([FASHION] if Path(FASHION).is_dir() else [])
    try:
        rows = [r for r in backends(args.train_device, args.emulated)
                if r[0] == "fp32" or args.precision is None or r[0] in args.precision]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    device = rows[0][1].device
    print(f"# Precision parity: {args.seeds} seeds x {args.epochs} epochs, device {device} "
          f"({hardware_name(device)}); CPU {cpu_model()}\n")
    results = []
    for data in datasets:
        splits = splits_of(data, args.train_images, args.test_images, val_images=args.val_images)
        train = splits.splits.train
        arch = (ss.parse_arch(args.arch) if args.arch else
                ss.get_space(ss.DEFAULT_SPACE).largest().replace(resolution=24))
        arch = arch.replace(in_channels=train.in_channels, num_classes=train.num_classes)
        print(f"## {data}: {len(train)} training, {len(splits.splits.test)} test images; {arch}\n")
        print("| precision | test accuracy (mean +- std) | vs fp32 | per seed |")
        print("|---|---:|---:|---|")
        fp32_mean = None
        for precision, backend, note in rows:
            if backend is None:
                print(f"| {precision} | skipped | - | {note} |", flush=True)
                continue
            accs = []
            for seed in range(args.seeds):
                recipe = TrainRecipe(epochs=args.epochs, seed=seed, threads=args.threads)
                _, m = train_standalone(arch, splits, recipe, backend=backend)
                accs.append(m["test_acc"])
                results.append({"data": data, "precision": precision, "seed": seed, "test_acc": m["test_acc"],
                                "val_acc": m["val_acc"], "wall_s": m["wall_s"], "backend": m["backend"]})
            mean = statistics.mean(accs)
            fp32_mean = mean if precision == "fp32" else fp32_mean
            delta = "-" if fp32_mean is None or precision == "fp32" else f"{mean - fp32_mean:+.4f}"
            print(f"| {precision}{f' ({note})' if note else ''} | {mean_std(accs)} | {delta} | "
                  f"{', '.join(f'{a:.4f}' for a in accs)} |", flush=True)
        print()
    if args.json is not None:
        blob = json.dumps({"cpu": cpu_model(), "device": device, "epochs": args.epochs, "runs": results},
                          indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
