"""`nas train supernet | arch | eval`: train the once-for-all supernet, train one architecture, score sub-networks."""

from __future__ import annotations

import argparse
import json
import time

import search_spaces as ss
from nas.checks import arg, finite_float, output_dir, output_file, positive_int, seed, supernet_epochs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a supernet or one architecture; evaluate sub-networks")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    q = tsub.add_parser("supernet", help="progressive-shrinking supernet training (cached, resumable)")
    q.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    q.add_argument("--data", default="digits", help="dataset name or path (IDX, CIFAR, npz, image folder)")
    q.add_argument("--epochs", default=(6, 3, 3, 6), type=arg(supernet_epochs), metavar="L,K,D,W",
                   help="epochs of phases largest,kernel,depth,width")
    q.add_argument("--batch-size", type=arg(positive_int), default=64)
    q.add_argument("--lr", type=arg(finite_float, 0.0, low_open=True), default=0.05)
    q.add_argument("--warmup", type=arg(finite_float, 0.0, 1.0), default=0.0,
                   help="linear learning-rate warm-up over this fraction of each shrinking phase (nas search: 0.5)")
    q.add_argument("--seed", type=arg(seed), default=0)
    q.add_argument("--root", default="results/supernets", type=arg(output_dir))
    q.set_defaults(func=cmd_supernet)

    q = tsub.add_parser("arch", help="train one architecture from scratch or from inherited supernet weights")
    q.add_argument("arch", help="compact string, JSON, path to a .json file, or a preset name")
    q.add_argument("--data", default="digits")
    q.add_argument("--epochs", type=arg(positive_int), default=10)
    q.add_argument("--lr", type=arg(finite_float, 0.0, low_open=True), default=0.05)
    q.add_argument("--batch-size", type=arg(positive_int), default=64)
    q.add_argument("--seed", type=arg(seed), default=0)
    q.add_argument("--supernet", default=None, help="supernet directory: fine-tune from its weights")
    q.add_argument("--distill", action="store_true", help="distil from the supernet's largest sub-network")
    q.add_argument("--out", default=None, type=arg(output_file),
                   help="save the trained weights (.safetensors, arch in the metadata)")
    q.set_defaults(func=cmd_arch)

    q = tsub.add_parser("eval", help="validation accuracy of sub-networks of a trained supernet")
    q.add_argument("supernet", help="supernet directory (results/supernets/<key>)")
    q.add_argument("archs", nargs="+", help="architectures (compact strings, JSON, files, presets)")
    q.add_argument("--data", default="digits")
    q.add_argument("--seed", type=arg(seed), default=0, help="split seed (must match the supernet's)")
    q.set_defaults(func=cmd_eval)


def _splits(data: str, seed: int):
    from nas.data import TensorSplits, load_dataset, split

    return TensorSplits(split(load_dataset(data), seed=seed))


def cmd_supernet(args: argparse.Namespace) -> int:
    from nas.supernet import SupernetRecipe, train_supernet

    recipe = SupernetRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup)
    run = train_supernet(ss.get_space(args.space), _splits(args.data, args.seed), recipe, seed=args.seed,
                         root=args.root)
    last = run.history[-1] if run.history else {}
    print(f"supernet {run.path} ({run.epochs_done}/{run.total_epochs} epochs): val accuracy largest "
          f"{last.get('val_acc_largest', float('nan')):.4f}, smallest {last.get('val_acc_smallest', float('nan')):.4f}")
    return 0


def cmd_arch(args: argparse.Namespace) -> int:
    from nas.supernet import load_supernet
    from nas.train import TrainRecipe, train_standalone

    data = _splits(args.data, args.seed)
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
    model, m = train_standalone(arch, data, recipe, init=init, teacher=teacher, progress=True)
    print(f"{arch}: val {m['val_acc']:.4f} test {m['test_acc']:.4f} ({m['macs'] / 1e6:.2f}M MACs, "
          f"{m['params'] / 1e6:.3f}M params, {m['wall_s']:.1f}s)")
    if args.out:
        from safetensors.torch import save_file

        from nas.io import write_atomic

        meta = {"arch": arch.to_json(), "metrics": json.dumps({k: v for k, v in m.items() if k != "history"})}
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        write_atomic(args.out, lambda tmp: save_file(state, tmp, metadata=meta))
        print(f"saved {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nas.supernet import SubnetEvaluator, load_supernet

    net = load_supernet(args.supernet)
    evaluator = SubnetEvaluator(net, _splits(args.data, args.seed))
    for text in args.archs:
        arch = ss.parse_arch(text).replace(in_channels=net.space.in_channels, num_classes=net.space.num_classes)
        start = time.perf_counter()
        acc = evaluator(arch)
        print(f"{acc:.4f}  {ss.count_macs(arch) / 1e6:7.2f}M MACs  {time.perf_counter() - start:.2f}s  {arch}")
    return 0
