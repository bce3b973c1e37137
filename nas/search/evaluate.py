"""What a search trial costs and scores: supernet accuracy, predicted latency, and the final training."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import search_spaces as ss


@dataclass
class Evaluator:
    """Scores an architecture: validation accuracy of its supernet sub-network and its predicted latency.

    A plain picklable object, so Ray Tune ships it (supernet weights and cached tensors included) to workers.
    """

    subnet: Any  # nas.supernet.SubnetEvaluator
    latency_ms: Callable[[ss.Arch], float] | None = None

    def __call__(self, arch: ss.Arch) -> dict[str, float]:
        acc = self.subnet(arch)
        lat = self.latency_ms(arch) if self.latency_ms is not None else float("nan")
        return {"val_acc": float(acc), "latency_ms": float(lat)}


def supernet_recipe(quick: bool) -> Any:
    from nas.supernet import SupernetRecipe

    # quick: a sub-minute demo; default: a few minutes on 2 cores for the built-in data
    return SupernetRecipe(epochs=(1, 1, 0, 1), batch_size=128) if quick else SupernetRecipe()


def load_splits(request: Any) -> Any:
    from nas.data import TensorSplits, load_dataset, split

    return TensorSplits(split(load_dataset(request.data), seed=request.seed))


def build_evaluator(request: Any, max_macs: float | None,
                    log: Callable[[str], None]) -> tuple[Evaluator, ss.SearchSpace]:
    """Load the data, train (or load from cache, or resume) the supernet, and wrap it as the trial scorer.

    With a MAC budget the space is first trimmed to it (`search_spaces.trim_to_budget`), so the supernet
    trains only networks near or under the budget.
    """
    from nas.supernet import SubnetEvaluator, train_supernet

    data = load_splits(request)
    train = data.splits.train
    space = ss.get_space(request.space, request.phi).with_io(train.in_channels, train.num_classes)
    if max_macs:
        ss.check_reachable(space, ss.Budget("macs", max_macs), ss.count_macs)
        space = ss.trim_to_budget(space, max_macs)
    log(f"data {request.data}: {len(train)} train / {len(data.splits.val)} val / {len(data.splits.test)} test, "
        f"{train.num_classes} classes; space {space.name} ({ss.count_macs(space.smallest()) / 1e6:.1f}.."
        f"{ss.count_macs(space.largest()) / 1e6:.1f}M MACs)")
    run = train_supernet(space, data, supernet_recipe(request.quick), seed=request.seed,
                         root=Path(request.out) / "supernets")
    log(f"supernet {run.key}: {run.epochs_done} epochs, cached in {run.path}")
    return Evaluator(SubnetEvaluator(run.supernet, data, "val", seed=request.seed)), space


def load_latency(request: Any, space: ss.SearchSpace, log: Callable[[str], None]) -> Any:
    """The latency predictor of the request's device; profiles this space's ops first when there is no table."""
    import latency_models as lm

    path = Path(request.table) if request.table else lm.default_table_path(request.device, root=request.out)
    if not path.exists():
        if request.table:
            raise FileNotFoundError(f"table: {path} does not exist")
        log(f"no latency table for {request.device} at {path}: profiling the ops of space {space.name} first")
        spec = lm.DeviceSpec.make(request.device)
        lm.profile(spec, lm.enumerate_ops([space]), path, reps=10 if request.quick else 30)
    return lm.load_predictor(request.device, str(path))


def measure_ms(arch: ss.Arch, request: Any, reps: int = 20) -> float:
    """Median measured end-to-end latency of `arch` on the request's device (random weights; speed only)."""
    import latency_models as lm

    device = lm.get_device(lm.DeviceSpec.make(request.device))
    return float(statistics.median(device.time_arch(arch, reps)))


def finalize_best(arch: ss.Arch, evaluator: Evaluator, request: Any, run_dir: Path,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Fine-tune the chosen sub-network from its supernet weights with distillation, then compress and export."""
    from nas.train import TrainRecipe, train_standalone

    supernet = evaluator.subnet.supernet
    data = evaluator.subnet.data
    init = evaluator.subnet.model(arch)
    teacher = supernet.extract(supernet.space.largest())
    recipe = TrainRecipe(epochs=2 if request.quick else 10, lr=0.01, seed=request.seed)
    log(f"finalize: fine-tuning {arch.hash()} for {recipe.epochs} epochs with distillation from the largest "
        "sub-network")
    model, metrics = train_standalone(arch, data, recipe, init=init, teacher=teacher)
    out: dict[str, Any] = {"fp32_val_acc": metrics["val_acc"], "fp32_test_acc": metrics.get("test_acc"),
                           "finetune_seconds": metrics.get("wall_s")}
    from nas.search.export_step import compress_and_export

    out.update(compress_and_export(model, arch, data, request, run_dir, log))
    return out
