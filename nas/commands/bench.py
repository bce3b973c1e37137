"""`nas bench`: measured latency of an exported checkpoint on the kernels (and ONNX Runtime)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from nas.checks import arg, positive_int
from nas.timing import time_calls


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="measured latency of an exported checkpoint on the kernels")
    b.add_argument("checkpoint")
    b.add_argument("--threads", type=arg(positive_int, 1024), default=1)
    b.add_argument("--batch", type=arg(positive_int, 65536), default=1)
    b.add_argument("--reps", type=arg(positive_int), default=100)
    b.add_argument("--onnx", action="store_true", help="also time model.onnx under ONNX Runtime")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
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
        times = time_calls(lambda: sess.run(None, {"x": x}), reps=args.reps, warmup=5, min_sample_s=0,
                           max_total_s=math.inf)
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
