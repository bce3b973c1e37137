"""Flags that several commands take, each declared once: the same name, check, default and help everywhere."""

from __future__ import annotations

import argparse

import search_spaces as ss
from nas.checks import arg, budget, finite_float, output_dir, positive_int, seed, supernet_epochs


def add_space(p: argparse.ArgumentParser) -> None:
    """--space and --phi: which search space, compound-scaled by how much."""
    p.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    p.add_argument("--phi", type=arg(finite_float, 0.0), default=0.0, help="compound-scaling coefficient of the space")


def add_data(p: argparse.ArgumentParser, default: str | None = "digits", help: str | None = None) -> None:
    """--data: the built-in digits or a dataset path."""
    p.add_argument("--data", default=default,
                   help=help or "'digits' (built in) or a dataset path (IDX, CIFAR, npz, image folder)")


def add_seed(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--seed: the data split, subsets, supernet and search seed."""
    p.add_argument("--seed", type=arg(seed), default=0,
                   help=help or "seed of the train/val/test split, the subsets, the supernet and the search")


def add_out(p: argparse.ArgumentParser, default: str | None = "results", help: str | None = None) -> None:
    """--out: the folder of run outputs (tables, supernet caches, runs)."""
    p.add_argument("--out", default=default, type=arg(output_dir), help=help or "folder for run outputs")


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
