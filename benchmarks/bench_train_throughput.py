"""Training throughput of one supernet step, in images/s, for each training configuration on this machine.

The step is the real one (`nas.supernet.training._train_epoch`): the sandwich rule of the default search space's
last progressive-shrinking phase (largest + smallest + `random_subnets` random sub-networks, elastic resolution,
in-place distillation), on digits resized to the space's resolutions, `--batch-size` images a step. Each
configuration trains a fresh copy of the same supernet for `--warmup` steps, then is timed over `--steps` steps,
`--repeats` times (the median is reported). Rows, all in one run on one machine:

    eager fp32 NCHW          plain PyTorch: contiguous tensors, PyTorch's own ops (the baseline)
    channels-last            the same, NHWC (oneDNN's channels-last kernels)
    channels-last + kernels  NHWC plus the kernel library's depthwise weight gradient: `nas`'s CPU default
    bf16 channels-last       CPU autocast bf16, where the CPU has AMX-BF16 or AVX512-BF16 (else skipped with the
                             reason; `--emulated-bf16` times it anyway, to show what emulation costs)
    cuda fp32 / bf16 / fp16  when PyTorch sees a GPU

More rows (e.g. 1 vs 2 Ray workers) are added by appending a `Row` to the list `extra_rows()` returns; each row
is a name and a function from the shared `Setup` to images/s.

The target of issue #30: the best configuration at least 2x the baseline on the machine it runs on (the table
names the CPU). Numbers from a machine other processes share are not results: run it on a quiet one.

    python benchmarks/bench_train_throughput.py [--threads 2] [--batch-size 64] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# a fixed thread count: the fair-share sizing (nas.cores) would re-size threads mid-measurement on a shared machine
os.environ.setdefault("NAS_FAIR_THREADS", "0")

import torch  # noqa: E402

import search_spaces as ss  # noqa: E402
from nas.backend import CPU, TrainBackend, cpu_model, hardware_name, resolve  # noqa: E402
from nas.data import MemoryBatches, TensorSplits, load_dataset, split  # noqa: E402
from nas.io import write_atomic  # noqa: E402
from nas.kernels.training import training_kernels  # noqa: E402
from nas.supernet.model import Supernet  # noqa: E402
from nas.supernet.training import SupernetRecipe, _train_epoch, phase_space  # noqa: E402
from nas.train import make_optimizer  # noqa: E402


@dataclass
class Setup:
    """What every row trains: the same initial supernet, data, phase space, recipe and step counts."""

    supernet: Supernet
    data: TensorSplits
    pspace: ss.SearchSpace
    recipe: SupernetRecipe
    warmup: int
    steps: int
    repeats: int


@dataclass(frozen=True)
class Row:
    """A table row: its name and how it measures images/s (None: skipped, with `note` saying why)."""

    name: str
    measure: Callable[[Setup], float | None]
    note: str = ""


def _batches(setup: Setup, steps: int, seed: int) -> MemoryBatches:
    """`steps` batches of the first `steps` x batch-size training images, at the phase's resolutions."""
    n = steps * setup.recipe.batch_size
    xs = {(r, r): setup.data.tensors("train", r)[0][:n] for r in setup.pspace.resolutions}
    y = setup.data.tensors("train")[1][:n]
    return MemoryBatches(xs, y, setup.recipe.batch_size, seed=seed, drop_last=True)


def step_throughput(setup: Setup, backend: TrainBackend, channels_last: bool, kernels: bool) -> float:
    """Median images/s of `setup.steps` supernet steps on `backend` (after `setup.warmup` untimed ones)."""
    net = backend.module(copy.deepcopy(setup.supernet))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, setup.recipe.lr_shrink, setup.recipe.momentum, setup.recipe.weight_decay)
    scaler = backend.grad_scaler()
    rates = []
    with training_kernels(kernels):
        for rep in range(setup.repeats + 1):  # repetition 0 is the warm-up
            steps = setup.warmup if rep == 0 else setup.steps
            if steps == 0:
                continue
            batches = _batches(setup, steps, seed=rep)
            if backend.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            _train_epoch(net, opt, setup.data, setup.pspace, setup.recipe, 0, rep, 0, 1, setup.recipe.lr_shrink,
                         False, setup.recipe.random_in("width"), backend, scaler, batches=batches)
            if backend.is_cuda:
                torch.cuda.synchronize()
            if rep > 0:
                rates.append(steps * setup.recipe.batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def cpu_rows(emulated_bf16: bool) -> list[Row]:
    """The CPU configurations: baseline, channels-last, channels-last + kernels, bf16 where supported."""
    rows = [
        Row("eager fp32 NCHW (baseline)", lambda s: step_throughput(s, CPU, channels_last=False, kernels=False)),
        Row("channels-last fp32", lambda s: step_throughput(s, CPU, channels_last=True, kernels=False)),
        Row("channels-last fp32 + kernels (default)", lambda s: step_throughput(s, CPU, channels_last=True,
                                                                                  kernels=True)),
    ]
    try:
        bf16, note = resolve("cpu", "bf16"), ""
    except ValueError as exc:
        bf16, note = None, str(exc)
        if emulated_bf16:
            bf16 = resolve("cpu", "bf16", cpu_bf16=True)
            note = "emulated: this CPU has no bf16 instructions"
    if bf16 is None:
        rows.append(Row("bf16 channels-last", lambda s: None, note))
    else:
        rows.append(Row("bf16 channels-last", lambda s: step_throughput(s, bf16, channels_last=True, kernels=False),
                        note))
    return rows


def cuda_rows() -> list[Row]:
    """fp32, bf16 (where the GPU has it) and fp16 on the first GPU PyTorch sees; none without one."""
    if not torch.cuda.is_available():
        return []
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        try:
            backend, note = resolve("cuda:0", precision), ""
        except ValueError as exc:
            backend, note = None, str(exc)
        measure = (lambda s: None) if backend is None else (
            lambda s, b=backend: step_throughput(s, b, channels_last=True, kernels=False))
        rows.append(Row(f"cuda {precision} channels-last", measure, note))
    return rows


def extra_rows() -> list[Row]:
    """Further configurations measured on the same `Setup`: data-parallel training on 1 and 2 Ray Train workers
    (an embedded local Ray with --threads CPUs), the default CPU configuration in each worker, the threads
    shared out so that every row uses the same cores."""
    return [Row(f"Ray Train, {n} worker{'s' if n > 1 else ''} (channels-last + kernels)",
                lambda s, n=n: ray_throughput(s, n),
                "global batch split across the workers; --threads shared out among them (same cores in total)")
            for n in (1, 2)]


def ray_throughput(setup: Setup, workers: int) -> float:
    """Median images/s (global batches) of `setup.steps` steps on `workers` Ray Train workers, timed in rank 0
    around the same epoch function `nas.supernet.distributed` runs, after `setup.warmup` untimed steps."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from nas.search.runner import connect_ray

    threads = max(1, setup.recipe.threads // workers)
    connect_ray(None, max(setup.recipe.threads, workers))
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(_ray_loop, train_loop_config={"setup": setup, "threads": threads},
                               scaling_config=ScalingConfig(num_workers=workers,
                                                            resources_per_worker={"CPU": threads}),
                               run_config=RunConfig(storage_path=storage))
        result = trainer.fit()
    ray.shutdown()
    return result.metrics["images_per_s"]


def _ray_loop(config: dict) -> None:
    import ray.train

    from nas.supernet.training import Shard

    setup: Setup = config["setup"]
    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    torch.set_num_threads(config["threads"])
    net = copy.deepcopy(setup.supernet).to(memory_format=torch.channels_last)
    opt = make_optimizer(net, setup.recipe.lr_shrink, setup.recipe.momentum, setup.recipe.weight_decay)
    rates = []
    with CPU.training(net):
        for rep in range(setup.repeats + 1):  # repetition 0 is the warm-up
            steps = setup.warmup if rep == 0 else setup.steps
            if steps == 0:
                continue
            start = time.perf_counter()
            _train_epoch(net, opt, setup.data, setup.pspace, setup.recipe, 0, rep, 0, 1, setup.recipe.lr_shrink,
                         False, setup.recipe.random_in("width"), CPU, shard=shard,
                         batches=_batches(setup, steps, seed=rep))
            if rep > 0:
                rates.append(steps * setup.recipe.batch_size / (time.perf_counter() - start))
    # Train V2 keeps only metrics reported with a checkpoint: rank 0 attaches an empty one
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if shard.first else None
        ray.train.report({"images_per_s": statistics.median(rates)}, checkpoint=checkpoint)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=SupernetRecipe().batch_size)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per repetition")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--emulated-bf16", action="store_true",
                    help="time CPU bf16 even without bf16 instructions (emulated: slow, for comparison only)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)

    dataset = load_dataset("digits")
    data = TensorSplits(split(dataset, seed=0))
    if len(data.splits.train) < max(args.steps, args.warmup) * args.batch_size:
        print(f"--steps x --batch-size: at most {len(data.splits.train)} training images of digits", file=sys.stderr)
        return 2
    space = ss.get_space(args.space).with_io(dataset.in_channels, dataset.num_classes)
    recipe = replace(SupernetRecipe(), batch_size=args.batch_size, threads=args.threads)
    setup = Setup(Supernet(space), data, phase_space(space, "width"), recipe, args.warmup, args.steps, args.repeats)

    print(f"# Supernet training throughput: {args.space}, phase 'width' (largest + smallest + "
          f"{recipe.random_in('width')} random sub-networks, resolutions {space.resolutions}), batch {args.batch_size}")
    print(f"CPU: {cpu_model()}, {args.threads} threads, torch {torch.__version__}"
          + (f"; GPU: {hardware_name('cuda:0')}" if torch.cuda.is_available() else ""))
    print(f"{args.warmup} warm-up + {args.steps} timed steps, median of {args.repeats}\n")
    print("| configuration | images/s | vs baseline | note |")
    print("|---|---:|---:|---|")
    results, baseline = [], None
    for row in [*cpu_rows(args.emulated_bf16), *cuda_rows(), *extra_rows()]:
        rate = row.measure(setup)
        if baseline is None and rate is not None:
            baseline = rate
        ratio = f"{rate / baseline:.2f}x" if rate is not None and baseline else "-"
        print(f"| {row.name} | {'skipped' if rate is None else f'{rate:.1f}'} | {ratio} | {row.note} |", flush=True)
        results.append({"configuration": row.name, "images_per_s": rate, "note": row.note})
    if args.json is not None:
        blob = json.dumps({"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                           "space": args.space, "batch_size": args.batch_size, "steps": args.steps,
                           "repeats": args.repeats, "rows": results}, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
