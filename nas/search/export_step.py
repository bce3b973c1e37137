"""The search's last step: hand the fine-tuned chosen network to `nas.export.finalize` (prune, quantize, export)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.data import DataSpec

# W4A8 QAT steps when PTQ loses more than a point. Measured on the 2026-12-02 default run's pruned 35.7M-MAC network:
# 100 steps and 200 steps both reach 0.994 val / 0.989 test (fp32 0.994 / 0.983); 200 steps took ~180 s of that
# run's 456 s finalize on the 2-core Intel machine, 100 steps ~80 s
QAT_STEPS = 100


def compress_and_export(model: Any, arch: Any, data: Any, spec: DataSpec, request: Any, run_dir: Path,
                        log: Callable[[str], None]) -> dict[str, Any]:
    """Prune toward 85% of the chosen network's latency, int8 PTQ, W4A8 (QAT unless PTQ already loses at most one
    point of val accuracy, half the 2-point W4A8 target; one point is under two images of digits' 179 val images),
    export (--quick: int8 PTQ only). `spec`, the data `data` was built from, is recorded in the checkpoints."""
    from nas.export.pipeline import FinalizeConfig, finalize

    device = request.device if request.device.startswith("kernels") else "kernels"
    # the search's own table (--table, or the one it profiled under --out) prices the pruning steps
    table = request.table if device == request.device else None
    config = FinalizeConfig(prune_ratio=None if request.quick else 0.85, device=device, table=table,
                            table_root=request.out,
                            w4_qat_steps=0 if request.quick else QAT_STEPS, w4_qat_skip_within=0.01,
                            data=spec, seed=request.seed, onnx=True)
    steps = "int8 PTQ" if request.quick else (f"pruning to 85% of the latency on {device}, int8 PTQ, W4A8 PTQ "
                                              "(+ QAT if PTQ loses more than 1 point)")
    log(f"finalize: {steps}, export to {run_dir / 'final'}")
    report = finalize(model, arch, data, config, run_dir / "final")
    d = report.to_dict()
    return {"checkpoint": d["checkpoint"], "arch": d["arch"], "accuracy": d["accuracy"],
            "latency_ms": d["latency_ms"], "bytes": d["bytes"], "onnx_agreement": d["onnx_agreement"],
            "seconds": round(d["seconds"], 1)}
