"""`nas train supernet | arch | eval`: train the once-for-all supernet, train one architecture, score sub-networks."""

from __future__ import annotations

import argparse
import json
import time

import search_spaces as ss
from nas.checks import arg, finite_float, output_file, positive_int
from nas.commands import flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a supernet or one architecture; evaluate sub-networks")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    q = tsub.add_parser("supernet", help="train the supernet `nas search` would use for the same flags (cached, "
                        "resumable under --out/supernets)")
    flags.add_budget(q, required=False, help="a MAC budget trims the space as `nas search --budget` does "
                     "(parameter and latency budgets do not change the supernet)")
    flags.add_space(q)
    flags.add_data(q, stream=True)
    flags.add_supernet(q, epochs_aliases=("--epochs",))
    q.add_argument("--batch-size", type=arg(positive_int), default=None, help="override the search's recipe")
    q.add_argument("--lr", type=arg(finite_float, 0.0, low_open=True), default=None,
                   help="override the search's recipe (peak learning rate of the first phase)")
    q.add_argument("--warmup", type=arg(finite_float, 0.0, 1.0), default=None,
                   help="override the search's recipe: linear learning-rate warm-up over this fraction of each "
                        "shrinking phase")
    flags.add_seed(q)
    flags.add_threads(q, 2)
    flags.add_out(q)
    flags.add_train_backend(q, workers=True)
    q.set_defaults(func=cmd_supernet)

    q = tsub.add_parser("arch", help="train one architecture from scratch or from inherited supernet weights")
    q.add_argument("arch", help="compact string, JSON, path to a .json file, or a preset name")
    flags.add_data(q, stream=True)
    q.add_argument("--epochs", type=arg(positive_int), default=10)
    q.add_argument("--lr", type=arg(finite_float, 0.0, low_open=True), default=0.05)
    q.add_argument("--batch-size", type=arg(positive_int), default=64)
    flags.add_seed(q)
    q.add_argument("--supernet", default=None, help="supernet directory: fine-tune from its weights")
    q.add_argument("--distill", action="store_true", help="distil from the supernet's largest sub-network")
    q.add_argument("--out", default=None, type=arg(output_file),
                   help="save the trained weights (.safetensors, arch and metrics with the back end in the metadata)")
    flags.add_train_backend(q)
    q.set_defaults(func=cmd_arch)

    q = tsub.add_parser("eval", help="validation accuracy of sub-networks of a trained supernet")
    q.add_argument("supernet", help="supernet directory (results/supernets/<key>)")
    q.add_argument("archs", nargs="+", help="architectures (compact strings, JSON, files, presets)")
    flags.add_data(q, stream=True)
    flags.add_seed(q, help="split seed (must match the supernet's)")
    flags.add_train_backend(q)
    q.set_defaults(func=cmd_eval)


def _source(args: argparse.Namespace):
    """The data of --data split by --seed: in memory, or streamed from disk past --data-memory-limit (decompressed
    sources cached under the results folder's data-cache)."""
    from nas.data import DataLoading, StreamDataset, data_source, load_dataset, split
    from nas.io import results_dir

    loading = DataLoading.of(args.data_memory_limit, args.data_workers, results_dir())
    data = data_source(split(load_dataset(args.data, loading.memory_limit, loading.cache_dir), seed=args.seed),
                       loading.workers)
    if isinstance(data.splits.train, StreamDataset):
        print(f"data {args.data}: larger than --data-memory-limit, streamed from disk by {loading.workers} "
              "decoding processes")
    return data


def cmd_supernet(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nas.backend import resolve
    from nas.data import DataLoading
    from nas.search.plan import preset, supernet_inputs
    from nas.search.prepare import load_splits, sized_space
    from nas.search.scoring import train_search_supernet

    # before any work: one line if this machine cannot
    backend = resolve(args.train_device, args.precision, workers=args.train_workers)
    if args.address is not None and backend.workers == 1:
        raise ValueError("--address: a Ray cluster trains the supernet only with --train-workers above 1")
    budget = ss.parse_budget(args.budget) if args.budget else None
    max_macs = budget.value if budget and budget.kind == "macs" else None
    # the flags are the search's (--data, --seed, subsets, --quick ...): the same values give the same supernet
    spec, space_plan, supernet = supernet_inputs(
        data=args.data, seed=args.seed, space=args.space, phi=args.phi, max_macs=max_macs, preset=preset(args.quick),
        threads=args.threads, supernet_epochs=args.supernet_epochs, train_images=args.train_images,
        val_images=args.val_images, out=str(args.out), pretrained=args.pretrained)
    data = load_splits(spec, DataLoading.of(args.data_memory_limit, args.data_workers, args.out))
    space = sized_space(data, space_plan, print)
    overrides = {k: getattr(args, k) for k in ("batch_size", "lr", "warmup") if getattr(args, k) is not None}
    supernet = replace(supernet, recipe=replace(supernet.recipe, **overrides))
    run = train_search_supernet(space, data, supernet, backend, print, args.address)
    last = run.history[-1] if run.history else {}
    print(f"supernet {run.path} ({run.epochs_done}/{run.total_epochs} epochs): val accuracy largest "
          f"{last.get('val_acc_largest', float('nan')):.4f}, smallest {last.get('val_acc_smallest', float('nan')):.4f}")
    return 0


def cmd_arch(args: argparse.Namespace) -> int:
    from nas.backend import resolve
    from nas.supernet import load_supernet
    from nas.train import TrainRecipe, train_standalone

    backend = resolve(args.train_device, args.precision)  # before any work: one line if this machine cannot
    data = _source(args)
    arch = ss.parse_arch(args.arch).replace(in_channels=data.splits.train.in_channels,
                                            num_classes=data.splits.train.num_classes)
    init = teacher = None
    if args.supernet:
        net = load_supernet(args.supernet)
        init = net.extract(arch)
        if args.distill:
            net.set_active(net.space.largest())
            teacher = net
    elif args.distill:
        raise ValueError("--distill needs --supernet")
    recipe = TrainRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    model, m = train_standalone(arch, data, recipe, init=init, teacher=teacher, progress=True, backend=backend)
    print(f"{arch}: val {m['val_acc']:.4f} test {m['test_acc']:.4f} ({m['macs'] / 1e6:.2f}M MACs, "
          f"{m['params'] / 1e6:.3f}M params, {m['wall_s']:.1f}s)")
    if args.out:
        from safetensors.torch import save_file

        from nas.io import write_atomic

        meta = {"arch": arch.to_json(), "metrics": json.dumps({k: v for k, v in m.items() if k != "history"}),
                "training": json.dumps(backend.to_dict())}  # where it was trained: device, precision, workers
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        write_atomic(args.out, lambda tmp: save_file(state, tmp, metadata=meta))
        print(f"saved {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nas.backend import resolve
    from nas.supernet import SubnetEvaluator, load_supernet

    backend = resolve(args.train_device, args.precision)  # before any work: one line if this machine cannot
    net = load_supernet(args.supernet)
    evaluator = SubnetEvaluator(net, _source(args), backend=backend)
    for text in args.archs:
        arch = ss.parse_arch(text).replace(in_channels=net.space.in_channels, num_classes=net.space.num_classes)
        start = time.perf_counter()
        acc = evaluator(arch)
        print(f"{acc:.4f}  {ss.count_macs(arch) / 1e6:7.2f}M MACs  {time.perf_counter() - start:.2f}s  {arch}")
    return 0
