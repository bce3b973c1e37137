"""`nas search`: hardware-aware architecture search under a budget."""

from __future__ import annotations

import argparse

import search_spaces as ss
from nas.checks import arg, budget, finite_float, latency, plain_name, positive_int, seed, supernet_epochs


def register(sub: argparse._SubParsersAction) -> None:
    from nas.search.runner import SAMPLERS

    p = sub.add_parser("search", help="search the most accurate architecture that fits a budget",
                       description="Search the most accurate architecture of a space that fits a budget, scored by "
                                   "supernet accuracy and predicted latency on a device; then finalize it.")
    p.add_argument("--budget", required=True, type=arg(budget),
                   help="hard budget: e.g. 100MFLOPs (1 FLOP = 1 MAC), 2.5Mparams, 3ms")
    p.add_argument("--latency", default=None, type=arg(latency),
                   help="latency target on --device, e.g. 3ms (hard limit)")
    p.add_argument("--device", default="kernels",
                   help="latency device: 'kernels' (our int8 library, profiled first if no table), 'torch-fp32', "
                        "'torch-int8', or a name profiled with `nas profile --device NAME`")
    p.add_argument("--table", default=None, help="latency table path (default: results/latency/<device>.csv)")
    p.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    p.add_argument("--phi", type=arg(finite_float, 0.0), default=0.0, help="compound-scaling coefficient of the space")
    p.add_argument("--data", default="digits", help="'digits' (built in) or a dataset path (IDX, CIFAR, npz, folder)")
    p.add_argument("--trials", type=arg(positive_int), default=None,
                   help="number of evaluated architectures (default 60; 12 quick)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--objective", default="pareto", choices=("pareto", "mnasnet"),
                   help="pareto: maximize accuracy, minimize latency; mnasnet: acc*(lat/target)^-0.07")
    p.add_argument("--backend", default="optuna", choices=("optuna", "ray"))
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: embedded local Ray)")
    p.add_argument("--workers", type=arg(positive_int), default=2, help="concurrent Ray trials")
    p.add_argument("--storage", default=None, help="Optuna storage: a database URL (sqlite:///study.db, ...) or "
                   "a .journal file (default: results/<run>/study.journal)")
    p.add_argument("--study", default=None, type=arg(plain_name),
                   help="study / run name (default: derived from the settings)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    p.add_argument("--finalize", action=argparse.BooleanOptionalAction, default=True,
                   help="train, quantize and export the chosen architecture (default on)")
    p.add_argument("--supernet-epochs", default=None, metavar="L,K,D,W", type=arg(supernet_epochs),
                   help="supernet epochs per progressive-shrinking phase: largest, kernel+SE, depth, expand+width "
                        "(default 1,1,1,2; 2,0,0,0 with --quick; 2,1,1,4 trains the sub-networks further)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="load the supernet shipped with nas when one matches this run's space, data, recipe and "
                        "seed (the default search's does); --no-pretrained trains it here (default on)")
    p.add_argument("--verify", type=arg(positive_int), default=None, metavar="K",
                   help="fine-tune K candidates (the most accurate trial of each of K equal bands of predicted "
                        "latency) from their supernet weights and choose the best fine-tuned val accuracy; 1 keeps "
                        "the most accurate trial, fine-tuned only to finalize it (default 3, with --no-finalize too; "
                        "1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a short demo: the space trimmed to half the MAC budget, a tiny supernet recipe on 512 "
                        "images, 12 trials (31-64 s on a fresh folder, 2 cores)")
    p.add_argument("--train-images", type=arg(positive_int), default=None, metavar="N",
                   help="train on a seeded, class-stratified subset of N training images (default all; 512 with "
                        "--quick): a large dataset on a few cores")
    p.add_argument("--val-images", type=arg(positive_int), default=None, metavar="N",
                   help="score trials on a stratified subset of N validation images (default all)")
    p.add_argument("--seed", type=arg(seed), default=0)
    p.add_argument("--threads", type=arg(positive_int, 1024), default=2,
                   help="torch threads for training (use 1 when other jobs share the cores); the thread count changes "
                        "floating-point summation order, so a fresh run's weights, and possibly its chosen network, "
                        "can differ")
    p.add_argument("--out", default="results", help="folder for run outputs")
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from nas.search.main import SearchRequest, search

    request = SearchRequest(
        budget=args.budget, latency=args.latency, device=args.device, table=args.table, space=args.space,
        phi=args.phi, data=args.data, trials=args.trials, sampler=args.sampler, objective=args.objective,
        backend=args.backend, address=args.address, workers=args.workers, storage=args.storage, study=args.study,
        resume=args.resume, finalize=args.finalize, quick=args.quick, seed=args.seed, out=args.out,
        threads=args.threads, supernet_epochs=args.supernet_epochs, train_images=args.train_images,
        val_images=args.val_images, pretrained=args.pretrained, verify=args.verify,
    )
    search(request)
    return 0
