"""`nas eval`: top-1 accuracy of an exported checkpoint on the kernels (and ONNX Runtime)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.checks import arg, seed
from nas.commands import flags


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("eval", help="top-1 accuracy of an exported checkpoint on the kernels")
    q.add_argument("checkpoint", help="checkpoint directory (e.g. <run>/final/int8)")
    flags.add_data(q, default=None, help="dataset (default: the one recorded in the checkpoint)", stream=True,
                   workers=False)
    q.add_argument("--part", default="test", choices=("train", "val", "test"))
    q.add_argument("--split-seed", type=arg(seed), default=None, help="split seed (default: the recorded one)")
    q.add_argument("--onnx", action="store_true", help="also run model.onnx under ONNX Runtime and compare")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from nas.data import DataLoading, DataSpec
    from nas.export import load, onnx_runner
    from nas.io import results_dir

    model = load(args.checkpoint)
    # the data the checkpoint records (source, split seed, subsets, fingerprints); older checkpoints: "name@splitN"
    recorded = DataSpec.from_metadata(model.metadata.get("data") or model.metadata.get("dataset"))
    spec = recorded
    if args.data is not None or args.split_seed is not None:  # other data asked for: no fingerprint to match
        spec = DataSpec.of(args.data or recorded.source,
                           recorded.split_seed if args.split_seed is None else args.split_seed,
                           recorded.train_images, recorded.val_images)
    data = spec.source
    onnx_path = Path(args.checkpoint) / "model.onnx"
    if args.onnx and not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no ONNX model in the checkpoint (export without --no-onnx)")
    # data larger than --data-memory-limit streams from disk and is scored batch by batch, read in this process
    loading = DataLoading.of(args.data_memory_limit, 0, results_dir(None))
    splits, _ = spec.load(loading.memory_limit, loading.cache_dir)
    spec.check(splits, args.part, args.checkpoint)
    where = f"--data {data}" if args.data else f"the recorded dataset {data}"
    ev = model.evaluate(splits, args.part, where=where,  # checks classes and channels; NumPy batches, no torch
                        also=onnx_runner(onnx_path) if args.onnx else None)
    y, pred = ev.y, ev.pred
    out = {"checkpoint": args.checkpoint, "data": data, "split_seed": spec.split_seed, "part": args.part, "n": ev.n,
           "top1": ev.top1, "recorded": model.metadata.get("accuracy")}
    if ev.also_pred is not None:
        out["onnx_top1"] = float((ev.also_pred == y).mean())
        out["onnx_agreement"] = float((ev.also_pred == pred).mean())
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: top-1 {out['top1']:.4f} on {data} {args.part}, split seed {spec.split_seed} "
              f"({len(y)} images)")
        if args.onnx:
            print(f"onnx runtime: top-1 {out['onnx_top1']:.4f}, agreement with the kernels {out['onnx_agreement']:.4f}")
    return 0
