"""Finalize benchmark: train a small `small32` network, then quantize (PTQ int8 with three calibrators, W4A8 PTQ
and QAT, mixed precision), prune with NetAdapt toward a latency target, export, reload and run under ONNX Runtime.

    python benchmarks/bench_finalize.py [--data digits|PATH] [--epochs 15] [--out results/bench_finalize]

Every accuracy is top-1 on the held-out test split (val for choices), on the integer kernels for quantized
models. Writes results/bench_finalize/bench.json and prints a Markdown table (pasted into
benchmarks/RESULTS_finalize.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces as ss  # noqa: E402
from nas.compress._train import loss_and_accuracy  # noqa: E402
from nas.compress.mixed import mixed_precision  # noqa: E402
from nas.compress.netadapt import NetAdaptConfig  # noqa: E402
from nas.compress.quantize import QuantConfig, quantize_model  # noqa: E402
from nas.data import TensorSplits, load_dataset, split  # noqa: E402
from nas.export import load, run_onnx  # noqa: E402
from nas.export.pipeline import (  # noqa: E402
    FinalizeConfig,
    FinalizeReport,
    _predicted,
    finalize,
    load_fp32,
    measure_fp32_ms,
)
from nas.io import results_dir  # noqa: E402
from nas.train import TrainRecipe, evaluate, train_standalone  # noqa: E402


def main() -> int:
    from nas.memory import keep_heap

    keep_heap()  # as the nas command does: training buffers stay in the heap
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", help="'digits' (built in) or a dataset path (e.g. Fashion-MNIST IDX)")
    ap.add_argument("--resolution", type=int, default=24)
    ap.add_argument("--width", type=float, default=0.5, help="width multiplier applied to the sampled arch")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--qat-steps", type=int, default=120)
    ap.add_argument("--prune-ratio", type=float, default=0.8, help="NetAdapt latency target / starting latency")
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--step-ratio", type=float, default=0.05, help="NetAdapt cost removed per iteration")
    ap.add_argument("--fp32", default=None, help="skip training: load model_fp32.safetensors from this directory "
                                                 "(e.g. <out>/unpruned/fp32 of an earlier run)")
    ap.add_argument("--prune-only", action="store_true", help="with --fp32: only the NetAdapt section")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(results_dir() / "bench_finalize"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    space = ss.get_space("small32")
    sampled = ss.sample(space, ss.parse_budget("8MFLOPs"), n=1, seed=1)[0]
    arch = ss.scale(sampled, width=args.width, resolution=args.resolution)
    data = TensorSplits(split(load_dataset(args.data), seed=args.seed))
    res: dict = {"data": args.data, "arch": str(arch), "sampled_from": f"small32, 8MFLOPs budget, seed 1, "
                 f"width x{args.width}, {args.resolution}px", "macs": ss.count(arch).macs,
                 "params": ss.count(arch).params, "machine": platform.processor() or platform.machine(),
                 "load_avg_start": os.getloadavg()[0]}
    print(f"arch {arch}\n     {ss.count(arch).macs:,} MACs, {ss.count(arch).params:,} params", flush=True)

    t = time.perf_counter()
    if args.fp32:
        model, arch = load_fp32(args.fp32)
        m = {"val_acc": evaluate(model, data, "val"), "test_acc": evaluate(model, data, "test")}
        res["arch"] = str(arch)
    else:
        model, m = train_standalone(arch, data, TrainRecipe(epochs=args.epochs, lr=0.05, seed=args.seed))
    res["train"] = {"epochs": 0 if args.fp32 else args.epochs, "loaded_from": args.fp32,
                    "seconds": time.perf_counter() - t, "fp32_val": m["val_acc"], "fp32_test": m["test_acc"]}
    print(f"fp32 val {m['val_acc']:.4f} test {m['test_acc']:.4f} ({res['train']['seconds']:.0f}s)", flush=True)
    r = arch.resolution
    x, y = data.tensors("train", r)
    xv, yv = data.tensors("val", r)
    xs, ys = data.tensors("test", r)
    calib = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:512]]

    fcfg = FinalizeConfig(int8=QuantConfig(calibration="percentile"), w4_qat_steps=args.qat_steps,
                          w4=QuantConfig(weight_bits=4, lsq=True, calibration="percentile", qat_lr=0.005),
                          dataset=f"{args.data}@split{args.seed}", seed=args.seed)
    if args.prune_only:
        prune_section(res, model, arch, data, fcfg, args, out)
        (out / "bench.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        return 0

    # 1. PTQ calibrators (int8) and W4A8 PTQ, on the unpruned network
    ptq = {}
    for name, cfg in [("int8 min-max", QuantConfig()), ("int8 percentile", QuantConfig(calibration="percentile")),
                      ("int8 MSE", QuantConfig(calibration="mse", weight_calibration="mse")),
                      ("W4A8 PTQ min-max", QuantConfig(weight_bits=4)),
                      ("W4A8 PTQ MSE", QuantConfig(weight_bits=4, calibration="mse", weight_calibration="mse"))]:
        qm, rep = quantize_model(model, cfg, calib=calib, evaluate=(xv, yv))
        ptq[name] = {"val": rep.quant_acc, "test": qm.accuracy(xs, ys), "weight_bytes": qm.weight_bytes,
                     "sim_agreement": rep.agreement, "seconds": rep.seconds}
        print(f"{name:<18} val {rep.quant_acc:.4f} test {ptq[name]['test']:.4f}", flush=True)
    res["ptq"] = ptq

    # 2. finalize() without pruning: int8 PTQ + W4A8 QAT (LSQ, distillation), export, ONNX
    t = time.perf_counter()
    rep_a = finalize(model, arch, data, fcfg, out / "unpruned")
    res["finalize_unpruned"] = rep_a.to_dict()
    print(f"finalize (no pruning) {time.perf_counter() - t:.0f}s: {rep_a.accuracy}", flush=True)

    # 3. export -> load gives bit-identical outputs; ONNX Runtime agreement
    ident = {}
    for name, path in rep_a.checkpoints.items():
        q1 = load(path)
        q2 = load(path)
        a1, a2 = q1(xs), q2(xs)
        ident[name] = bool(np.array_equal(a1, a2))
    res["reload_bit_identical"] = ident
    q8 = load(rep_a.checkpoints["int8"])
    o = run_onnx(Path(rep_a.checkpoints["int8"]) / "model.onnx", xs.numpy())
    res["onnx"] = {"agreement_top1": float((o.argmax(1) == q8.predict(xs)).mean()),
                   "onnx_test": float((o.argmax(1) == ys.numpy()).mean())}
    # file size vs params x bits / 8
    sizes = {}
    for name, path in rep_a.checkpoints.items():
        meta = json.loads((Path(path) / "metadata.json").read_text())
        bits = 8 if name == "int8" else 4
        sizes[name] = {"file_bytes": meta["file_bytes"], "weights_file_bytes": (Path(path) / "weights.safetensors")
                       .stat().st_size, "weight_bytes": meta["weight_bytes"], "params": meta["params"],
                       "params_x_bits_8": meta["params"] * bits // 8}
    res["sizes"] = sizes

    # 4. mixed precision under a latency budget (half-way between all-int8 and all-int4 pointwise layers)
    t = time.perf_counter()
    bits, mrep = mixed_precision(model, arch, calib, xv, budget_savings=0.5)
    qm, rep = quantize_model(model, QuantConfig(layer_bits=bits, calibration="percentile"), calib=calib,
                             evaluate=(xv, yv))
    res["mixed"] = {**mrep.to_dict(), "val": rep.quant_acc, "test": qm.accuracy(xs, ys),
                    "weight_bytes": qm.weight_bytes, "measured_ms": qm.bench(reps=50)["median_ms"],
                    "seconds": time.perf_counter() - t}
    print(f"mixed precision: {sum(b == 4 for b in bits.values())}/{len(bits)} layers int4, predicted "
          f"{mrep.predicted_ms:.4f} ms (int8 {mrep.int8_ms:.4f}), test {res['mixed']['test']:.4f}", flush=True)

    rep_b = prune_section(res, model, arch, data, fcfg, args, out)
    res["latency"] = {
        "fp32_torch_measured_ms": measure_fp32_ms(model, arch),
        "int8_predicted_ms": _predicted(arch, "kernels"),
        "int8_measured_ms": rep_a.latency_ms["int8_measured"],
        "w4a8_measured_ms": rep_a.latency_ms.get("w4a8_measured"),
        "pruned_fp32_torch_measured_ms": rep_b.latency_ms["pruned_fp32_measured"],
        "pruned_int8_predicted_ms": rep_b.latency_ms["pruned_int8_predicted"],
        "pruned_int8_measured_ms": rep_b.latency_ms["int8_measured"],
    }
    res["fp32_acc_check"] = loss_and_accuracy(model, xs, ys)[1]
    res["seconds"] = time.perf_counter() - t_start
    res["load_avg_end"] = os.getloadavg()[0]
    (out / "bench.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    print_markdown(res)
    return 0


def prune_section(res: dict, model: torch.nn.Module, arch: ss.Arch, data: TensorSplits, fcfg: FinalizeConfig,
                  args: argparse.Namespace, out: Path) -> FinalizeReport:
    """5. NetAdapt pruning toward a latency target (kernels latency table), then int8 PTQ and export."""
    t = time.perf_counter()
    pcfg = replace(fcfg, prune_ratio=args.prune_ratio, w4_qat_steps=0,
                   netadapt=NetAdaptConfig(finetune_steps=args.finetune_steps, step_ratio=args.step_ratio, lr=0.01))
    rep_b = finalize(model, arch, data, pcfg, out / "pruned")
    res["finalize_pruned"] = rep_b.to_dict()
    print(f"finalize (pruned) {time.perf_counter() - t:.0f}s: {rep_b.accuracy}\n  {rep_b.arch}", flush=True)
    print(f"latency {rep_b.latency_ms}", flush=True)
    for step in rep_b.netadapt["steps"]:
        print(f"  step {step['iteration']}: {step['group']} {step['was']}->{step['kept']}, {step['cost']:.4f}, "
              f"holdout {step['holdout_acc']:.3f}", flush=True)
    return rep_b


def print_markdown(res: dict) -> None:
    a = res["finalize_unpruned"]["accuracy"]
    p = res["finalize_pruned"]
    lat = res["latency"]
    print(f"\n| model | test top-1 | vs fp32 |\n|---|---|---|\n| fp32 | {a['fp32_test']:.4f} | |")
    for name, v in res["ptq"].items():
        print(f"| {name} (PTQ) | {v['test']:.4f} | {100 * (v['test'] - a['fp32_test']):+.2f} pt |")
    print(f"| int8 percentile (finalize) | {a['int8_test']:.4f} | {100 * (a['int8_test'] - a['fp32_test']):+.2f} pt |")
    print(f"| W4A8 QAT (LSQ + KD) | {a['w4a8_test']:.4f} | {100 * (a['w4a8_test'] - a['fp32_test']):+.2f} pt |")
    print(f"| mixed precision | {res['mixed']['test']:.4f} | {100 * (res['mixed']['test'] - a['fp32_test']):+.2f} pt |")
    pa = p["accuracy"]
    print(f"| pruned fp32 | {pa['pruned_test']:.4f} | {100 * (pa['pruned_test'] - a['fp32_test']):+.2f} pt |")
    print(f"| pruned int8 | {pa['int8_test']:.4f} | {100 * (pa['int8_test'] - a['fp32_test']):+.2f} pt |")
    print("\n| latency (batch 1, 1 thread) | ms |\n|---|---|")
    for k, v in lat.items():
        print(f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |")
    print("\n| checkpoint | params | params x bits / 8 | weight bytes | weights.safetensors | all files |\n"
          "|---|---|---|---|---|---|")
    for k, v in res["sizes"].items():
        print(f"| {k} | {v['params']:,} | {v['params_x_bits_8']:,} | {v['weight_bytes']:,} | "
              f"{v['weights_file_bytes']:,} | {v['file_bytes']:,} |")
    print(f"\nreload bit-identical: {res['reload_bit_identical']}; ONNX Runtime top-1 agreement with the kernels: "
          f"{res['onnx']['agreement_top1']:.4f}; MACs {p['macs']}; total {res['seconds']:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
