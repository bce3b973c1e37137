"""The search's finalize stage: the fine-tuned chosen network handed to `nas.export.finalize` (prune, quantize,
export)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.cores import fair_threads
from nas.data import DataSource, Splits, StreamDataset, TensorSplits, stratified_subset
from nas.data.stream import in_memory_bytes
from nas.export.pipeline import FinalizeConfig, finalize

if TYPE_CHECKING:
    from nas.search.verify import Choice

# finalize (pruning, quantization, QAT, their accuracies) works on tensors: data streamed from disk is held as a
# seeded, stratified subset of each split, at most this many images each and this many bytes in all
HELD_IMAGES = 10_000
HELD_BYTES = 1 << 30


def finalize_chosen(choice: Choice, data: DataSource, config: FinalizeConfig, threads: int, run_dir: Path,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Finalize the chosen network, already fine-tuned (by the verify step), with `config` (`plan.finalize_config`)
    into `run_dir`/final; what summary.json records of it. The data spec of `config`, the data `data` was built from,
    is recorded in the checkpoints with `data`'s fingerprints. Data streamed from disk is finalized on subsets held
    in memory (`held_subsets`), which the log and summary.json say."""
    if choice.model is None or choice.metrics is None:
        raise ValueError("finalize: the chosen network was not fine-tuned (the verify step fine-tunes it)")
    out: dict[str, Any] = {"fp32_val_acc": choice.metrics["val_acc"], "fp32_test_acc": choice.metrics.get("test_acc"),
                           "finetune_seconds": choice.metrics.get("wall_s")}
    if config.data is not None:
        config = replace(config, data=config.data.fingerprinted(data.splits))
    if not isinstance(data, TensorSplits):
        data = held_subsets(data, config.seed)
        out["held_images"] = {p: len(getattr(data.splits, p)) for p in ("train", "val", "test")}
        log(f"finalize: the data streams from disk; pruning, quantization and their accuracies use stratified "
            f"subsets of {out['held_images']} images held in memory")
    with fair_threads(threads):  # its fine-tuning steps; latency is measured at fixed thread counts
        log(f"finalize: {describe(config)}, export to {run_dir / 'final'}")
        d = finalize(choice.model, choice.arch, data, config, run_dir / "final").to_dict()
    out.update({"checkpoint": d["checkpoint"], "arch": d["arch"], "accuracy": d["accuracy"],
                "latency_ms": d["latency_ms"], "bytes": d["bytes"], "onnx_agreement": d["onnx_agreement"],
                "seconds": round(d["seconds"], 1)})
    return out


def held_subsets(data: DataSource, seed: int) -> TensorSplits:
    """`data` (streamed from disk) as tensors of a seeded, stratified subset of each split, at most `HELD_IMAGES`
    images each and `HELD_BYTES` in memory in all, normalised with the whole train split's statistics (as the
    network was trained)."""
    chw = (data.splits.train.in_channels, *data.splits.train.resolution)
    per_part = max(1, min(HELD_IMAGES, HELD_BYTES // (3 * in_memory_bytes(1, chw))))
    parts = {}
    for name in ("train", "val", "test"):
        part = getattr(data.splits, name)
        if len(part) > per_part:
            part = stratified_subset(part, per_part, seed, flag=f"finalize's {name} subset")
        parts[name] = part.load() if isinstance(part, StreamDataset) else part
    return TensorSplits(Splits(parts["train"], parts["val"], parts["test"], data.splits.seed,
                               data.splits.official_test), stats=(data.mean, data.std))


def describe(config: FinalizeConfig) -> str:
    """The steps of `config` in words, for the log."""
    steps = [f"pruning to {config.prune_ratio:.0%} of the latency on {config.device}"] if config.prune_ratio else []
    steps.append("int8 PTQ")
    if config.w4_qat_steps:
        within = f" (+ QAT if PTQ loses more than {config.w4_qat_skip_within * 100:g} point)" \
            if config.w4_qat_skip_within is not None else " + QAT"
        steps.append("W4A8 PTQ" + within)
    if config.measure_device:
        steps.append(f"int8 latency measured on the kernels and on {config.measure_device}")
    return ", ".join(steps)
