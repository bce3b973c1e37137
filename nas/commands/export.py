"""`nas export`: finalize a trained float model into a pruned, quantized checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.checks import arg, finite_float, non_negative_int, onnx_weights, output_dir, seed
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
    p.add_argument("--onnx-weights", default="auto", type=arg(onnx_weights),
                   help="ONNX weight type: int8 (ONNX Runtime's fast u8 x s8 kernels, exact on CPUs with VNNI), "
                        "uint8 (its u8 x u8 kernels, exact on every CPU), auto: int8 where this CPU has VNNI")
    flags.add_seed(p, help="seed of pruning's fine-tuning and calibration sampling")
    p.set_defaults(func=cmd_export)


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
                         onnx=not args.no_onnx, onnx_weights=args.onnx_weights, data=spec, seed=args.seed)
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
        print(f"onnx    top-1 agreement with the kernels {rep.onnx_agreement:.4f} ({rep.onnx_weights} weights)")
    print(f"checkpoint {rep.checkpoint}  (report: {Path(out) / 'finalize.json'})")
    return 0
