"""Flags that several commands take, each declared once: the same name, check, default and help everywhere."""

from __future__ import annotations

import argparse

import search_spaces as ss
from nas.checks import (
    arg,
    budget,
    check_precision,
    check_train_device,
    check_train_workers,
    finite_float,
    non_negative_int,
    output_dir,
    positive_int,
    seed,
    supernet_epochs,
)
from nas.data.spec import memory_limit
from nas.io import results_dir


def add_space(p: argparse.ArgumentParser) -> None:
    """--space and --phi: which search space, compound-scaled by how much."""
    p.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    p.add_argument("--phi", type=arg(finite_float, 0.0), default=0.0, help="compound-scaling coefficient of the space")


def add_data(p: argparse.ArgumentParser, default: str | None = "digits", help: str | None = None,
             stream: bool = False, workers: bool = True) -> None:
    """--data: the built-in digits or a dataset path; with `stream` (commands that train or score through batches),
    --data-memory-limit too: data larger than the limit streams from disk (`nas.data.DataLoading`, built with
    `DataLoading.of(args.data_memory_limit, args.data_workers, args.out)`), and with `workers` --data-workers
    (decoding processes; without it, `nas eval`, the data is read in the command's own process: no torch needed).
    """
    p.add_argument("--data", default=default,
                   help=help or "'digits' (built in) or a dataset path (IDX, CIFAR, npz, image folder)")
    if stream:
        p.add_argument("--data-memory-limit", type=arg(memory_limit), default=None, metavar="SIZE",
                       help="hold the data in memory up to this size (e.g. 2GiB, 500MB, 25%% of physical memory; "
                            "default 25%%); larger IDX / npz files and image folders stream from disk, with the same "
                            "splits, batches and results")
    if stream and workers:
        p.add_argument("--data-workers", type=arg(non_negative_int), default=2, metavar="N",
                       help="processes decoding streamed data (default 2; 0: in the training process)")


def add_seed(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--seed: the data split, subsets, supernet and search seed."""
    p.add_argument("--seed", type=arg(seed), default=0,
                   help=help or "seed of the train/val/test split, the subsets, the supernet and the search")


def add_out(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--out: the folder of run outputs (tables, supernet caches, runs); default `nas.io.results_dir()`."""
    p.add_argument("--out", default=str(results_dir()), type=arg(output_dir),
                   help=help or "folder for run outputs (default: $NAS_RESULTS, else results)")



def add_budget(p: argparse.ArgumentParser, required: bool, help: str) -> None:
    """--budget: MACs ("100MFLOPs", 1 FLOP = 1 MAC), parameters ("2.5Mparams") or latency ("3ms")."""
    p.add_argument("--budget", required=required, default=None, type=arg(budget), help=help)


def add_threads(p: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    """--threads: torch / kernel threads."""
    p.add_argument("--threads", type=arg(positive_int, 1024), default=default, help=help)


def add_supernet(p: argparse.ArgumentParser, epochs_aliases: tuple[str, ...] = ()) -> None:
    """What the supernet is trained on and how: the flags `nas search` and `nas train supernet` share, so the same
    values give the same supernet (one cache under --out/supernets). `epochs_aliases`: other names of
    --supernet-epochs (`nas train supernet` keeps its older --epochs)."""
    p.add_argument("--supernet-epochs", *epochs_aliases, dest="supernet_epochs", default=None, metavar="L,K,D,W",
                   type=arg(supernet_epochs),
                   help="supernet epochs per progressive-shrinking phase: largest, kernel+SE, depth, expand+width "
                        "(default 1,1,1,2; 2,0,0,0 with --quick; 2,1,1,4 trains the sub-networks further)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="load the supernet shipped with nas when one matches this space, data, recipe and seed (the "
                        "default search's does); --no-pretrained trains it here (default on)")
    p.add_argument("--quick", action="store_true",
                   help="a short demo: the space trimmed to half the MAC budget, a tiny supernet recipe on 512 "
                        "images")
    p.add_argument("--train-images", type=arg(positive_int), default=None, metavar="N",
                   help="train on a seeded, class-stratified subset of N training images (default all; 512 with "
                        "--quick): a large dataset on a few cores")
    p.add_argument("--val-images", type=arg(positive_int), default=None, metavar="N",
                   help="score on a stratified subset of N validation images (default all)")


def add_train_backend(p: argparse.ArgumentParser, workers: bool = False) -> None:
    """--train-device and --precision: where and in what precision every training step runs (`nas.backend`);
    with `workers`, also --train-workers (data-parallel supernet training on Ray Train) and --address (the Ray
    cluster it joins, for `nas search`'s Ray trials too). The command calls
    `nas.backend.resolve(args.train_device, args.precision, workers=args.train_workers)` first thing, which checks
    this machine can run them (one line naming the flag otherwise)."""
    p.add_argument("--train-device", default="auto", type=arg(check_train_device), metavar="auto|cpu|cuda|cuda:N",
                   help="compute device of training and scoring (default auto: a GPU when PyTorch sees one, else "
                        "the CPU); the latency target is --device. Not part of any cache key: a supernet trained on "
                        "a GPU is reused on a CPU and vice versa")
    p.add_argument("--precision", default="fp32", type=arg(check_precision), metavar="fp32|bf16|fp16",
                   help="training precision: fp32 (default), bf16 autocast (GPUs, CPUs with AMX-BF16 or "
                        "AVX512-BF16) or fp16 autocast with a loss scaler (GPUs)")
    if workers:
        p.add_argument("--train-workers", default=1, type=arg(check_train_workers), metavar="N",
                       help="train the supernet data-parallel on N Ray Train workers (default 1: in this process); "
                            "with N > 1 the verify step also fine-tunes its candidates in parallel, up to N at "
                            "once, as Ray tasks. Joins the cluster of --address, else starts a local Ray. Each "
                            "global batch is split across the workers (batch norm per worker), and checkpoints go "
                            "through Ray Train: a failed worker restarts from the last epoch, and rerunning the "
                            "command after the driver died resumes there. The same supernet cache as 1 worker")
        p.add_argument("--address", default=None,
                       help="Ray cluster address to join (HOST:PORT, ray://HOST:PORT or auto) for the Ray trials "
                            "(--backend ray) and the --train-workers (default: an embedded local Ray). On a "
                            "cluster of several machines --out must be storage they all share")
