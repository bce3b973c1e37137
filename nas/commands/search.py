"""`nas search`: hardware-aware architecture search under a budget."""

from __future__ import annotations

import argparse

from nas.checks import arg, byte_size, latency, plain_name, positive_int
from nas.commands import flags


def register(sub: argparse._SubParsersAction) -> None:
    from nas.search.request import BACKENDS, OBJECTIVES, SAMPLERS

    p = sub.add_parser("search", help="search the most accurate architecture that fits a budget",
                       description="Search the most accurate architecture of a space that fits a budget, scored by "
                                   "supernet accuracy and predicted latency on a device; then finalize it.")
    flags.add_budget(p, required=True, help="hard budget: e.g. 100MFLOPs (1 FLOP = 1 MAC), 2.5Mparams, 3ms")
    p.add_argument("--latency", default=None, type=arg(latency),
                   help="latency target on --device, e.g. 3ms (hard limit)")
    p.add_argument("--peak-memory", default=None, type=arg(byte_size),
                   help="peak activation memory on the kernels (input and logits included), e.g. 256KB (hard limit)")
    p.add_argument("--model-size", default=None, type=arg(byte_size),
                   help="bytes of int8 weights as the kernels store them, e.g. 1MB (hard limit)")
    p.add_argument("--device", default="kernels",
                   help="latency device: 'kernels' (our int8 library, profiled first if no table), 'torch-fp32', "
                        "'torch-int8', or a name profiled with `nas profile --device NAME`")
    p.add_argument("--table", default=None, help="latency table path (default: <out>/latency/<device>.csv)")
    flags.add_space(p)
    flags.add_data(p, stream=True)
    flags.add_supernet(p)
    p.add_argument("--trials", type=arg(positive_int), default=None,
                   help="number of distinct architectures evaluated (default 60; 12 with --quick)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--objective", default="pareto", choices=OBJECTIVES,
                   help="pareto: maximize accuracy, minimize latency; mnasnet: acc*(lat/target)^-0.07")
    p.add_argument("--backend", default="optuna", choices=BACKENDS)
    p.add_argument("--workers", type=arg(positive_int), default=2, help="concurrent Ray trials")
    p.add_argument("--storage", default=None, help="Optuna storage: a database URL (sqlite:///study.db, ...) or "
                   "a .journal file (default: <out>/<run>/study.journal)")
    p.add_argument("--study", default=None, type=arg(plain_name),
                   help="study / run name (default: derived from the settings)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study of the same name (its stored settings must match)")
    p.add_argument("--finalize", action=argparse.BooleanOptionalAction, default=True,
                   help="train, quantize and export the chosen architecture (default on)")
    p.add_argument("--verify", type=arg(positive_int), default=None, metavar="K",
                   help="fine-tune K candidates (the most accurate trial of each of K equal bands of predicted "
                        "latency) from their supernet weights and choose the best fine-tuned val accuracy; 1 keeps "
                        "the most accurate trial, fine-tuned only to finalize it (default 3, with --no-finalize too; "
                        "1 with --quick)")
    flags.add_train_backend(p, workers=True)
    flags.add_seed(p)
    flags.add_threads(p, 2, help="torch threads for training (fewer while other processes keep the cores busy); "
                      "the thread count changes floating-point summation order, so a fresh run's weights, and "
                      "possibly its chosen network, can differ")
    flags.add_out(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from nas.search.main import search
    from nas.search.plan import plan
    from nas.search.request import SearchRequest

    request = SearchRequest(
        budget=args.budget, latency=args.latency, peak_memory=args.peak_memory, model_size=args.model_size,
        device=args.device, table=args.table, space=args.space,
        phi=args.phi, data=args.data, trials=args.trials, sampler=args.sampler, objective=args.objective,
        backend=args.backend, address=args.address, workers=args.workers, storage=args.storage, study=args.study,
        resume=args.resume, finalize=args.finalize, quick=args.quick, seed=args.seed, out=str(args.out),
        threads=args.threads, supernet_epochs=args.supernet_epochs, train_images=args.train_images,
        val_images=args.val_images, pretrained=args.pretrained, verify=args.verify,
        train_device=args.train_device, precision=args.precision, train_workers=args.train_workers,
        data_memory_limit=args.data_memory_limit, data_workers=args.data_workers,
    )
    search(plan(request))
    return 0
