"""`nas export | eval | bench`: finalize a trained model into a quantized checkpoint, evaluate it, time it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.checks import arg, finite_float, non_negative_int, output_dir, positive_int, seed
from nas.commands import flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="prune + quantize a trained float model and export a checkpoint")
    p.add_argument("model", help="model_fp32.safetensors (arch.json beside it), a .pt state dict, or a search run "
                                 "directory with best.json and model_fp32.safetensors")
    p.add_argument("--arch", default=None, help="architecture (string, JSON, file or preset) if not beside the model")
    flags.add_data(p)
    p.add_argument("--split-seed", type=arg(seed), default=0, help="seed of the train/val/test split the model used")
    p.add_argument("--out", default=None, type=arg(output_dir), help="output directory (default: <model dir>/final)")
    p.add_argument("--prune-ratio", type=arg(finite_float, 0.0, 1.0, low_open=True), default=None,
                   help="prune to this fraction of the starting cost")
    p.add_argument("--prune-target", type=arg(finite_float, 0.0, low_open=True), default=None,
                   help="prune to this cost (ms, or MACs)")
    p.add_argument("--metric", default="latency", choices=("latency", "macs"), help="pruning cost")
    p.add_argument("--device", default="kernels", help="latency table device for pruning")
    p.add_argument("--table", default=None, help="latency table CSV of --device (default: results/latency/<id>.csv)")
    p.add_argument("--finetune-steps", type=arg(non_negative_int), default=60,
                   help="distillation steps after each pruning step")
    p.add_argument("--calibration", default="percentile", choices=("minmax", "percentile", "mse"))
    p.add_argument("--w4-qat-steps", type=arg(non_negative_int), default=0,
                   help="also export W4A8 after this many QAT steps")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX QDQ export")
    flags.add_seed(p, help="seed of pruning's fine-tuning and calibration sampling")
    p.set_defaults(func=cmd_export)

    q = sub.add_parser("eval", help="top-1 accuracy of an exported checkpoint on the kernels")
    q.add_argument("checkpoint", help="checkpoint directory (e.g. <run>/final/int8)")
    flags.add_data(q, default=None, help="dataset (default: the one recorded in the checkpoint)")
    q.add_argument("--part", default="test", choices=("train", "val", "test"))
    q.add_argument("--split-seed", type=arg(seed), default=None, help="split seed (default: the recorded one)")
    q.add_argument("--onnx", action="store_true", help="also run model.onnx under ONNX Runtime and compare")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measured latency of an exported checkpoint on the kernels")
    b.add_argument("checkpoint")
    b.add_argument("--threads", type=arg(positive_int, 1024), default=1)
    b.add_argument("--batch", type=arg(positive_int, 65536), default=1)
    b.add_argument("--reps", type=arg(positive_int), default=100)
    b.add_argument("--onnx", action="store_true", help="also time model.onnx under ONNX Runtime")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)


def cmd_export(args: argparse.Namespace) -> int:
    import search_spaces as ss
    from nas.compress.netadapt import NetAdaptConfig
    from nas.compress.quantize import QuantConfig
    from nas.data import DataSpec, TensorSplits
    from nas.export.pipeline import FinalizeConfig, finalize, load_fp32

    if args.table and not Path(args.table).exists():  # before any loading: a typo should cost nothing
        raise FileNotFoundError(f"table: {args.table} does not exist")
    arch = ss.parse_arch(args.arch) if args.arch else None
    model, arch = load_fp32(args.model, arch)
    splits, spec = DataSpec.of(args.data, args.split_seed).load()
    data = TensorSplits(splits)
    out = args.out or str((Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent) / "final")
    cfg = FinalizeConfig(prune_target=args.prune_target, prune_ratio=args.prune_ratio, prune_metric=args.metric,
                         device=args.device, table=args.table,
                         netadapt=NetAdaptConfig(finetune_steps=args.finetune_steps),
                         int8=QuantConfig(calibration=args.calibration), w4_qat_steps=args.w4_qat_steps,
                         w4=QuantConfig(weight_bits=4, lsq=True, calibration=args.calibration),
                         onnx=not args.no_onnx, data=spec, seed=args.seed)
    rep = finalize(model, arch, data, cfg, out)
    a = rep.accuracy
    print(f"arch    {rep.start_arch}\n     -> {rep.arch}")
    print(f"MACs    {rep.macs['start']:,} -> {rep.macs['final']:,}; params {rep.params['start']:,} -> "
          f"{rep.params['final']:,}")
    for k in ("fp32", "pruned", "int8", "w4a8"):
        if f"{k}_test" in a:
            print(f"{k:<7} val {a[f'{k}_val']:.4f}  test {a[f'{k}_test']:.4f}")
    for k, v in rep.latency_ms.items():
        print(f"latency {k:<22} {'n/a' if v is None else f'{v:.4f} ms'}")
    print(f"bytes   {rep.bytes}")
    if rep.onnx_agreement is not None:
        print(f"onnx    top-1 agreement with the kernels {rep.onnx_agreement:.4f}")
    print(f"checkpoint {rep.checkpoint}  (report: {Path(out) / 'finalize.json'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nas.data import DataSpec
    from nas.export import load, run_onnx

    model = load(args.checkpoint)
    # the data the checkpoint records (source, split seed, subsets, fingerprints); older checkpoints: "name@splitN"
    recorded = DataSpec.from_metadata(model.metadata.get("data") or model.metadata.get("dataset"))
    spec = recorded
    if args.data is not None or args.split_seed is not None:  # other data asked for: no fingerprint to match
        spec = DataSpec.of(args.data or recorded.source,
                           recorded.split_seed if args.split_seed is None else args.split_seed,
                           recorded.train_images, recorded.val_images)
    data = spec.source
    splits, _ = spec.load()
    spec.check(splits, args.part, args.checkpoint)
    where = f"--data {data}" if args.data else f"the recorded dataset {data}"
    ev = model.evaluate(splits, args.part, where=where)  # checks classes, channels
    y, pred = ev.y, ev.pred
    out = {"checkpoint": args.checkpoint, "data": data, "split_seed": spec.split_seed, "part": args.part, "n": ev.n,
           "top1": ev.top1, "recorded": model.metadata.get("accuracy")}
    onnx_path = Path(args.checkpoint) / "model.onnx"
    if args.onnx:
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: no ONNX model in the checkpoint (export without --no-onnx)")
        o = run_onnx(onnx_path, ev.x).argmax(1)
        out["onnx_top1"] = float((o == y).mean())
        out["onnx_agreement"] = float((o == pred).mean())
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: top-1 {out['top1']:.4f} on {data} {args.part}, split seed {spec.split_seed} "
              f"({len(y)} images)")
        if args.onnx:
            print(f"onnx runtime: top-1 {out['onnx_top1']:.4f}, agreement with the kernels {out['onnx_agreement']:.4f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from nas.export import load

    model = load(args.checkpoint)
    res = model.bench(batch=args.batch, threads=args.threads, reps=args.reps)
    out = {"checkpoint": args.checkpoint, "kernels": res,
           "predicted_ms": (model.metadata.get("latency_ms") or {}).get("predicted")}
    if args.onnx:
        import onnxruntime as ort

        path = Path(args.checkpoint) / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no ONNX model in the checkpoint")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        a = model.arch
        x = np.random.default_rng(0).standard_normal((args.batch, a.in_channels, a.resolution, a.resolution),
                                                     dtype=np.float32)
        for _ in range(5):
            sess.run(None, {"x": x})
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append((time.perf_counter() - t) * 1e3)
        out["onnxruntime"] = {"median_ms": float(np.median(times))}
    if args.json:
        print(json.dumps(out))
    else:
        pred = out["predicted_ms"]
        print(f"{args.checkpoint}: {res['median_ms']:.4f} ms median (p10 {res['p10_ms']:.4f}, p90 {res['p90_ms']:.4f})"
              f", batch {args.batch}, {args.threads} thread(s); predicted "
              f"{'n/a' if pred is None else f'{pred:.4f} ms'}")
        if args.onnx:
            print(f"onnx runtime QDQ: {out['onnxruntime']['median_ms']:.4f} ms median")
    return 0
