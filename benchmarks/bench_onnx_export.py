"""ONNX Runtime on our QDQ export, three graphs of one network: int8 weights (ORT's u8 x s8 kernels), uint8 weights
(its u8 x u8 kernels), and uint8 weights with the float residual add older checkpoints export (ORT keeps those
project convs as fp32 `FusedConv`; since 2026-12-07 the add is int8: QLinearConv + QLinearAdd).

For each network (random weights lowered on noise ranges, the structure `finalize` exports): the op types of ORT's
optimised graph and the 1-thread latency of each graph and of our kernels, timed in alternating rounds (p10 and
median of `--runs` runs per visit, lowest over `--rounds` rounds). With `--data` (an IDX / npz dataset such as
Fashion-MNIST) it also trains one network with residual blocks, quantizes it (PTQ) and reports top-1 of the kernels
and of each graph under ORT, and their agreement with the kernels: the accuracy cost of the add's extra rounding,
and of u8 x s8 saturation on CPUs without VNNI.

    python benchmarks/bench_onnx_export.py [--data ../shared/datasets/fashion-mnist] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

import search_spaces as ss
from latency_models.devices import cpu_model
from latency_models.kernel_runner import lowered_network
from latency_models.ort_runner import session
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import onnx_runner, to_onnx
from nas.io import write_atomic
from nas.timing import time_calls

NETWORKS = {
    "MobileNetV2-1.0@224": lambda: ss.preset("mobilenetv2"),
    "MobileNetV2-0.35@144": lambda: ss.scale(ss.preset("mobilenetv2"), width=0.35, resolution=144),
    "MobileNetV3-Large@224": lambda: ss.preset("mobilenetv3-large"),
    "small32 largest (digits)": lambda: ss.get_space("small32").with_io(1, 10).largest(),
}
FLAVOURS = {"int8 weights": "int8", "uint8 weights": "uint8", "uint8, float add": "uint8"}  # -> weight type


def float_add(model: QuantizedModel) -> QuantizedModel:
    """`model` as an older checkpoint loads: without the residual projects' grids before the add."""
    acts = {k: v for k, v in model.act_qparams.items()
            if not (k.endswith(".project") and k.removesuffix(".project") + ".out" in model.act_qparams)}
    return QuantizedModel(model.network, model.arch, acts, model.weight_scales)


def exports(model: QuantizedModel, tmp: str) -> dict[str, str]:
    """Flavour -> path of the exported graph."""
    return {flavour: to_onnx(float_add(model) if "float add" in flavour else model,
                             os.path.join(tmp, f"{i}.onnx"), weights=weights)
            for i, (flavour, weights) in enumerate(FLAVOURS.items())}


def speed_row(name: str, arch: ss.Arch, runs: int, rounds: int) -> dict:
    lowered = lowered_network(arch, 8)
    model = QuantizedModel(lowered.network, arch, lowered.act_qparams, lowered.weight_scales)
    x = np.random.default_rng(0).standard_normal((1, arch.in_channels, arch.resolution, arch.resolution),
                                                 dtype=np.float32)
    row: dict = {"network": name}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for flavour, path in exports(model, tmp).items():
            opt = path.removesuffix(".onnx") + ".opt.onnx"
            sess = session(path, 1, opt)
            sessions[flavour] = lambda s=sess: s.run(None, {"x": x})
            ops = Counter(n.op_type for n in onnx.load(opt).graph.node)
            row[f"{flavour} ops"] = {k: ops[k] for k in ("QLinearConv", "QLinearAdd", "FusedConv", "Conv",
                                                         "DequantizeLinear", "Transpose") if ops[k]}
        sessions["our kernels"] = lambda: lowered.network.run(x, threads=1)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for flavour, run in sessions.items():
                t = time_calls(run, reps=runs, warmup=5, min_sample_s=0)
                p10, med = float(np.percentile(t, 10)), float(np.median(t))
                old = best.get(flavour, (np.inf, np.inf))
                best[flavour] = (min(old[0], p10), min(old[1], med))
    for flavour, (p10, med) in best.items():
        row[f"{flavour} p10_ms"], row[f"{flavour} median_ms"] = p10, med
    return row


def accuracy_row(data: str, epochs: int) -> dict:
    """Train MobileNetV2-0.5@32 on `data`, PTQ, top-1 on 3,000 test images: kernels and both graphs under ORT."""
    from nas.compress.quantize import QuantConfig, quantize_model
    from nas.data import TensorSplits, load_dataset, split, stratified_subset
    from nas.train import TrainRecipe, train_standalone

    sp = split(load_dataset(data), seed=0)
    sp = replace(sp, train=stratified_subset(sp.train, 8000, 0), test=stratified_subset(sp.test, 3000, 0))
    ds = sp.train
    arch = ss.scale(ss.preset("mobilenetv2"), width=0.5, resolution=32).replace(
        in_channels=ds.x.shape[1], num_classes=int(ds.y.max()) + 1)
    splits = TensorSplits(sp)
    model, _ = train_standalone(arch, splits, TrainRecipe(epochs=epochs, seed=0))
    xtr, _ = splits.tensors("train", arch.resolution)
    xte, yte = splits.tensors("test", arch.resolution)
    qm, rep = quantize_model(model, QuantConfig(), calib=xtr[:512], evaluate=(xte, yte))
    kernels = qm.predict(xte.numpy())
    y = yte.numpy()
    row = {"network": f"{arch} trained {epochs} epochs on 8,000 images of {data}", "test_images": len(y),
           "fp32 top1": rep.fp32_acc, "kernels top1": rep.quant_acc}
    with tempfile.TemporaryDirectory() as tmp:
        for flavour, path in exports(qm, tmp).items():
            run = onnx_runner(path)
            pred = np.concatenate([run(xte[i:i + 256].numpy()).argmax(1) for i in range(0, len(xte), 256)])
            row[f"{flavour} top1"] = float((pred == y).mean())
            row[f"{flavour} agreement"] = float((pred == kernels).mean())
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per visit")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (lowest p10 / median kept)")
    ap.add_argument("--data", default=None, help="dataset path for the accuracy row (e.g. Fashion-MNIST IDX files)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.data is not None and not Path(args.data).exists():
        print(f"--data: {args.data} does not exist", file=sys.stderr)
        return 2
    rows = []
    print(f"CPU: {cpu_model()}; ONNX Runtime 1 thread; ms (p10 / median, lowest of {args.rounds} rounds)")
    timed = [*FLAVOURS, "our kernels"]
    print("| network | " + " | ".join(timed) + " | uint8 / int8 weights (median) |")
    print("|---|" + "---:|" * (len(timed) + 1))
    for name, make in NETWORKS.items():
        r = speed_row(name, make(), args.runs, args.rounds)
        rows.append(r)
        print(f"| {name} | " + " | ".join(f"{r[f'{f} p10_ms']:.2f} / {r[f'{f} median_ms']:.2f}" for f in timed)
              + f" | {r['uint8 weights median_ms'] / r['int8 weights median_ms']:.2f}x |", flush=True)
    print("\nORT's optimised graphs: " + "; ".join(f"{r['network']}: " + ", ".join(f"{f} {r[f'{f} ops']}"
                                                                                  for f in FLAVOURS) for r in rows))
    if args.data is not None:
        r = accuracy_row(args.data, args.epochs)
        rows.append(r)
        print(f"\n{r['network']}: top-1 on {r['test_images']} test images: fp32 {r['fp32 top1']:.4f}, kernels "
              f"{r['kernels top1']:.4f}; ORT " + ", ".join(f"{f} {r[f'{f} top1']:.4f} (agreement with the kernels "
                                                           f"{r[f'{f} agreement']:.4f})" for f in FLAVOURS))
    if args.json:
        blob = json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1)
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
