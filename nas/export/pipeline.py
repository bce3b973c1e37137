"""`finalize`: what the search calls on its chosen architecture: prune -> quantize -> evaluate -> export.

>>> report = finalize(model_fp32, arch, splits, FinalizeConfig(prune_ratio=0.7, w4_qat_steps=300), "results/r/final")
>>> from nas.export import load; qmodel = load(report.checkpoint)

Output directory:
    fp32/            model_fp32.safetensors + arch.json (the float model after pruning and fine-tuning)
    int8/            the int8 checkpoint (`nas.export.load`), with model.onnx (QDQ)
    w4a8/            the W4A8 checkpoint after QAT (when `w4_qat_steps` > 0)
    finalize.json    the `FinalizeReport`
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import latency_models
import search_spaces as ss
from nas.backend import TrainBackend
from nas.compress._train import loss_and_accuracy
from nas.compress.netadapt import NetAdaptConfig, cost_function, netadapt
from nas.compress.quantize import QuantConfig, QuantReport, quantize_model
from nas.cores import torch_threads
from nas.data import DataSpec, Splits, TensorSplits
from nas.errors import one_line
from nas.export.checkpoint import save
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import run_onnx, to_onnx, weight_type
from nas.io import write_atomic
from nas.timing import round_robin, time_calls


@dataclass(frozen=True)
class FinalizeConfig:
    """Steps of `finalize`. Pruning runs when `prune_target` (in the cost's unit: ms, or MACs) or `prune_ratio`
    (fraction of the starting cost to keep) is set; W4A8 QAT when `w4_qat_steps` > 0."""

    prune_target: float | None = None
    prune_ratio: float | None = None
    prune_metric: str = "latency"  # latency (kernels table; MACs fallback) | macs
    device: str = "kernels"
    # a latency device (table id) to measure the final int8 network on as well, e.g. the search's `ort-int8`: its
    # `latency_models.get_device(...).prepare_arch`, in the same round-robin rounds as the kernels models
    measure_device: str | None = None
    # where the latency tables are: `table` is the int8 table of `device` (None: its default path under
    # `table_root`, the results folder `nas.io.results_dir` resolves); the W4A8 prediction reads `<device>-int4` there

    table: str | None = None
    table_root: str | None = None
    netadapt: NetAdaptConfig = NetAdaptConfig()
    int8: QuantConfig = QuantConfig()
    w4_qat_steps: int = 0
    # skip W4A8 QAT when W4A8 PTQ already loses at most this much val accuracy (a fraction; None: always QAT)
    w4_qat_skip_within: float | None = None
    w4: QuantConfig = QuantConfig(weight_bits=4, lsq=True)
    calib_size: int = 512
    onnx: bool = True
    onnx_weights: str = "auto"  # int8 | uint8 | auto: `nas.export.onnx_qdq.weight_type`
    bench_reps: int = 50
    threads: int = 1
    data: DataSpec | None = None  # recorded in the checkpoints, so `nas eval` reads the same test split
    training: TrainBackend | None = None  # where the network was trained, recorded in the checkpoints' metadata
    seed: int = 0


@dataclass
class FinalizeReport:
    arch: str
    start_arch: str
    data: dict | None
    macs: dict[str, int]
    params: dict[str, int]
    accuracy: dict[str, float]
    latency_ms: dict[str, float | None]
    latency_unit_note: str
    bytes: dict[str, int]
    checkpoint: str
    checkpoints: dict[str, str]
    onnx_agreement: float | None = None
    onnx_weights: str | None = None  # the ONNX graph's weight type (int8 or uint8), where one was exported
    netadapt: dict | None = None
    quant: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_fp32(model: nn.Module, arch: ss.Arch, directory: str | os.PathLike) -> str:
    """The float-model format: `<dir>/model_fp32.safetensors` (state dict) + `<dir>/arch.json`."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomic(d / "model_fp32.safetensors", lambda tmp: save_file(state, tmp))
    text = arch.to_json(indent=1) + "\n"
    write_atomic(d / "arch.json", lambda tmp: Path(tmp).write_text(text))
    return str(d)


def load_fp32(path: str | os.PathLike, arch: ss.Arch | None = None) -> tuple[nn.Module, ss.Arch]:
    """A float model from `model_fp32.safetensors` (+ `arch.json` beside it), a `.pt` state dict, or a search run
    directory holding `best.json` (with its `arch`) and a trained model file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        if arch is None:
            for name in ("arch.json", "best.json"):
                if (p / name).is_file():
                    arch = _arch_from_file(p / name)
                    break
        for name in ("model_fp32.safetensors", "model.safetensors", "model_fp32.pt", "model.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model_fp32.safetensors (or model.pt) in the directory")
    elif arch is None and (p.parent / "arch.json").is_file():
        arch = _arch_from_file(p.parent / "arch.json")
    if arch is None:
        raise ValueError(f"{path}: no architecture found (arch.json / best.json); pass --arch")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model file")
    if p.suffix == ".safetensors":
        try:
            state = load_file(str(p))
        except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
            raise ValueError(f"{p}: unreadable model file ({one_line(exc)})") from exc
    else:
        state = _load_pt(p)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{p}: expected a state dict (parameter names -> tensors), found {type(state).__name__}")
    model = ss.build(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{p}: weights do not match the architecture {arch} ({str(exc).splitlines()[0]})") from exc
    return model.eval(), arch


def _load_pt(path: Path) -> Any:
    """A `.pt` file through torch's weights-only unpickler, which builds tensors and plain containers and refuses
    any other global (a pickle that would run code); a refusal or a damaged file becomes one line naming it."""
    import pickle
    import re

    try:
        with warnings.catch_warnings():  # "pickle protocol 4" notices about files we refuse or accept anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError) as exc:  # a damaged zip archive, an unreadable file
        raise ValueError(f"{path}: unreadable model file ({one_line(exc)})") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ImportError, IndexError, KeyError,
            ValueError) as exc:
        # torch's message opens with advice to retry with weights_only=False (which would run the file's code)
        # and spans paragraphs with terminal colours: keep only its reason, e.g. "Unsupported global: GLOBAL ..."
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        if "WeightsUnpickler error:" in text:
            text = text.split("WeightsUnpickler error:", 1)[1]
        elif "\n\n" in text:
            text = text.split("\n\n", 1)[1]
        reason = " ".join(text.strip().split("\n\n")[0].split(". ")[0].split())[:200] or type(exc).__name__
        raise ValueError(f"{path}: not a plain state dict of tensors, refused to unpickle it ({reason})") from exc


def _arch_from_file(path: Path) -> ss.Arch:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "arch" in data:
        data = data["arch"]
    if isinstance(data, str):
        return ss.parse_arch(data)
    try:
        return ss.Arch.from_dict(data)
    except ss.ArchError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def measure_round_robin(runners: dict[str, Callable[[], object]], reps: int = 50, rounds: int = 10,
                        round_s: float = 0.15) -> dict[str, float]:
    """Measured latency (ms) of each runner (a zero-argument call running one network once: a quantized model's
    `runner` on the kernels, a latency device's `prepare_arch`): the lowest 10th percentile over `rounds`
    rounds, the runners taking turns, so that a burst of load on a shared machine (seconds of 1.6-1.9x slowness
    seen on a 2-core VM) slows a few rounds of every network rather than all of one. Each round runs a network at
    least `reps / rounds` times and for at least `round_s` seconds: the rounds of a sub-millisecond network
    would otherwise all fall inside one burst (`nas.timing.round_robin`)."""
    best = round_robin(runners, reps=max(5, reps // rounds), rounds=rounds, warmup=2, round_s=round_s,
                       stat="p10_ms")
    return {name: t.p10_ms for name, t in best.items()}


def measure_fp32_ms(model: nn.Module, arch: ss.Arch, reps: int = 30, threads: int = 1) -> float:
    """Median batch-1 latency (ms) of the float PyTorch model (eager, `threads` threads)."""
    x = torch.randn(1, arch.in_channels, arch.resolution, arch.resolution)
    with torch_threads(threads), torch.inference_mode():  # the caller's thread count after, also after an error
        model.eval()
        times = time_calls(lambda: model(x), reps=reps, warmup=3, min_sample_s=0, max_total_s=math.inf)
    return float(np.median(times))


def table_path(config: FinalizeConfig, device: str) -> str:
    """The latency table `finalize` reads for `device` (`config.device`, or its `-int4` variant)."""
    if device == config.device and config.table:
        return config.table
    return str(latency_models.default_table_path(device, root=config.table_root))


def _predicted(arch: ss.Arch, device: str, path: str | None = None) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(latency_models.load_predictor(device, path).predict_ms(arch))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _quantize_variant(model: nn.Module, qcfg: QuantConfig, calib: torch.Tensor,
                      train: tuple[torch.Tensor, torch.Tensor] | None, val: tuple[torch.Tensor, torch.Tensor],
                      fp32_val: float, skip_within: float | None) -> tuple[QuantizedModel, QuantReport]:
    """`quantize_model` of one variant; with QAT and `skip_within`, PTQ first, and QAT only if PTQ loses more than
    `skip_within` of val accuracy (QAT is most of finalize's time)."""
    if train is not None and qcfg.qat_steps > 0 and skip_within is not None:
        qmodel, qrep = quantize_model(model, replace(qcfg, qat_steps=0), calib=calib, evaluate=val)
        if fp32_val - float(qrep.quant_acc) <= skip_within:
            qrep.qat.append({"steps": 0, "skipped": f"PTQ val accuracy {qrep.quant_acc:.4f} is within "
                                                    f"{skip_within:g} of fp32 {fp32_val:.4f}"})
            return qmodel, qrep
    return quantize_model(model, qcfg, calib=calib, train=train, evaluate=val)


def finalize(model: nn.Module, arch: ss.Arch, splits: Splits | TensorSplits, config: FinalizeConfig = FinalizeConfig(),
             out_dir: str | os.PathLike = "final") -> FinalizeReport:
    """Prune (optional) -> int8 PTQ (+ optional W4A8 QAT) -> evaluate on val/test -> export checkpoints to `out_dir`.

    `model` is the trained float `MBConvNet` of `arch`; it is not modified. Accuracies are top-1 on the val and
    test splits; the int8 checkpoint (`report.checkpoint`) is the deliverable, loadable with `nas.export.load`.
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    data = splits if isinstance(splits, TensorSplits) else TensorSplits(splits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = arch.resolution
    x, y = data.tensors("train", r)
    xv, yv = data.tensors("val", r)
    xs, ys = data.tensors("test", r)
    g = torch.Generator().manual_seed(config.seed)
    calib = x[torch.randperm(len(x), generator=g)[: config.calib_size]]
    model = copy.deepcopy(model).eval()
    start_arch = arch
    acc: dict[str, float] = {}
    acc["fp32_val"], acc["fp32_test"] = loss_and_accuracy(model, xv, yv)[1], loss_and_accuracy(model, xs, ys)[1]
    int8_table = table_path(config, config.device)
    lat: dict[str, float | None] = {"fp32_measured": measure_fp32_ms(model, arch, threads=config.threads),
                                    "int8_predicted": _predicted(arch, config.device, int8_table)}
    na_report = None
    if config.prune_target is not None or config.prune_ratio is not None:
        na_cfg = replace(config.netadapt, target=config.prune_target,
                         target_ratio=config.prune_ratio or config.netadapt.target_ratio,
                         metric=config.prune_metric, device=config.device, seed=config.seed)
        cost, unit = cost_function(na_cfg.metric, na_cfg.device, int8_table)
        model, arch, rep = netadapt(model, arch, x, y, na_cfg, cost, unit)
        na_report = rep.to_dict()
        acc["pruned_val"], acc["pruned_test"] = loss_and_accuracy(model, xv, yv)[1], loss_and_accuracy(model, xs,
                                                                                                      ys)[1]
        lat["pruned_fp32_measured"] = measure_fp32_ms(model, arch, threads=config.threads)
        lat["pruned_int8_predicted"] = _predicted(arch, config.device, int8_table)
    save_fp32(model, arch, out / "fp32")
    checkpoints: dict[str, str] = {}
    quant: dict[str, dict] = {}
    sizes: dict[str, int] = {}
    variants = [("int8", config.int8, False)]
    if config.w4_qat_steps > 0:
        variants.append(("w4a8", replace(config.w4, qat_steps=config.w4_qat_steps), True))
    onnx_agree, onnx_weights = None, None
    qmodels = {}
    for name, qcfg, train in variants:
        qmodel, qrep = _quantize_variant(model, qcfg, calib, (x, y) if train else None, (xv, yv),
                                         acc.get("pruned_val", acc["fp32_val"]), config.w4_qat_skip_within)
        qmodel.threads = config.threads
        acc[f"{name}_val"] = float(qrep.quant_acc)
        acc[f"{name}_test"] = qmodel.accuracy(xs, ys)
        qmodels[name] = qmodel
        bench = qmodel.bench(reps=config.bench_reps, threads=config.threads)
        lat[f"{name}_measured_median"] = bench["median_ms"]
        if name == "w4a8":
            int4 = f"{config.device}-int4"
            lat["w4a8_predicted"] = _predicted(arch, int4, table_path(config, int4))
        quant[name] = {k: v for k, v in qrep.to_dict().items() if k != "ranges"}
        meta = {"data": config.data.to_dict() if config.data else None,
                "training": config.training.to_dict() if config.training else None,
                "class_names": [str(c) for c in data.splits.train.class_names],
                "accuracy": {"fp32_val": acc.get("pruned_val", acc["fp32_val"]),
                             "fp32_test": acc.get("pruned_test", acc["fp32_test"]),
                             "quant_val": acc[f"{name}_val"], "quant_test": acc[f"{name}_test"]},
                "latency_ms": {"predicted": lat.get("pruned_int8_predicted", lat["int8_predicted"])
                               if name == "int8" else lat.get("w4a8_predicted"), "measured": bench},
                "quant_config": asdict(qcfg)}
        path = save(qmodel, out / name, **meta)
        checkpoints[name] = path
        sizes[f"{name}_file"] = qmodel.metadata["file_bytes"]
        sizes[f"{name}_weights"] = qmodel.weight_bytes
        if name == "int8" and config.onnx:
            onnx_weights = weight_type(config.onnx_weights)
            onnx_path = to_onnx(qmodel, str(Path(path) / "model.onnx"), weights=onnx_weights)
            o = run_onnx(onnx_path, xs.numpy()).argmax(1)
            onnx_agree = float((o == qmodel.predict(xs)).mean())
    rounds = 10
    runners = {name: m.runner(threads=config.threads) for name, m in qmodels.items()}
    if config.measure_device:  # the final network as that device runs it (the one timer: the device's own)
        spec = latency_models.DeviceSpec.make(config.measure_device)
        runners[spec.table_id] = latency_models.get_device(spec).prepare_arch(arch)
        # and as its table predicts it (the search's own table under table_root; None where there is none)
        lat[f"{spec.table_id}_predicted"] = _predicted(arch, spec.table_id, table_path(config, spec.table_id))
    lat.update({f"{name}_measured": ms for name, ms in
                measure_round_robin(runners, config.bench_reps, rounds).items()})
    cost = ss.count(arch)
    report = FinalizeReport(
        arch=str(arch), start_arch=str(start_arch), data=config.data.to_dict() if config.data else None,
        macs={"start": ss.count(start_arch).macs, "final": cost.macs},
        params={"start": ss.count(start_arch).params, "final": cost.params}, accuracy=acc, latency_ms=lat,
        latency_unit_note="batch 1 on this machine; fp32 measured = median; int8/w4a8 measured (on the kernels; "
                          "<device>_measured: the int8 network on that latency device) = lowest 10th "
                          f"percentile over {rounds} round-robin rounds (the statistic the table predicts), "
                          "*_median = "
                          f"median of one run of {config.bench_reps}; predicted = latency table of "
                          f"{config.device!r} (None without a table)",
        bytes={**sizes, "fp32_params_x4": 4 * cost.params}, checkpoint=checkpoints["int8"], checkpoints=checkpoints,
        onnx_agreement=onnx_agree, onnx_weights=onnx_weights, netadapt=na_report, quant=quant,
        seconds=time.perf_counter() - t0)
    text = json.dumps(report.to_dict(), indent=1, default=_default) + "\n"
    write_atomic(out / "finalize.json", lambda tmp: Path(tmp).write_text(text))
    return report


def _default(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, QuantizedModel):
        return str(o.arch)
    return str(o)
