"""What a search trial costs and scores: supernet accuracy, predicted latency, and the final training."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import search_spaces as ss
from nas.cores import fair_threads

if TYPE_CHECKING:  # nas.data imports torch: keep this module light to import
    from nas.data import DataSpec, TensorSplits


@dataclass
class Evaluator:
    """Scores an architecture: validation accuracy of its supernet sub-network and its predicted latency.

    A plain picklable object, so Ray Tune ships it (supernet weights and cached tensors included) to workers.
    """

    subnet: Any  # nas.supernet.SubnetEvaluator
    latency_ms: Callable[[ss.Arch], float] | None = None
    supernet_key: str = ""  # the cache key of the supernet behind `subnet`: what a trial's accuracy depends on
    supernet_pretrained: bool = False  # loaded from the package's pretrained supernets, not trained in this run
    threads: int | None = None  # torch threads of a trial at most (None: the caller's count), see `nas.cores`

    def __call__(self, arch: ss.Arch) -> dict[str, float]:
        with fair_threads(self.threads):  # fewer while other processes keep the cores busy; restored afterwards
            acc = self.subnet(arch)
        lat = self.latency_ms(arch) if self.latency_ms is not None else float("nan")
        return {"val_acc": float(acc), "latency_ms": float(lat)}


QUICK_TRAIN_IMAGES = 512
# --quick trims the space to half the MAC budget (no lower than its smallest network): its supernet trains a largest
# network about half as costly, and the networks found still fit the budget. Measured on digits, 2026-12-03, fresh
# folder: 83 -> 65 s wall, and the finalized network 0.676 / 0.771 -> 0.838 / 0.860 val / test (one run each)
QUICK_SPACE_FRACTION = 0.5
DEFAULT_SUPERNET_EPOCHS = (1, 1, 1, 2)  # largest, kernel, depth, width
SUPERNET_WARMUP = 0.5  # learning-rate warm-up over the first half of each shrinking phase
FINETUNE_EPOCHS = 6  # the chosen network (and the verify step's candidates), from their supernet weights (--quick: 2)
# No distillation from the supernet's largest sub-network when fine-tuning: that teacher is only as good as a short
# supernet's probe, and the student learns to copy it. Measured 2026-12-05 (6 epochs, lr 0.05, seed 0): Fashion-MNIST
# at 5000 images, teacher 0.820 val, a 28.2M-MAC network 0.822 val / 0.819 test with it, 0.888 / 0.878 without
# (0.873 / 0.875 from scratch), a 42.7M one 0.704 / 0.711 vs 0.878 / 0.873 (scratch 0.868 / 0.863); digits, teacher
# 0.966, two sampled networks (44-46M MACs) x two seeds: val 0.983 0.994 0.966 0.978 / test 0.972 0.966 0.978 0.978
# with it, val 0.994 all four / test 0.989 0.983 0.983 0.989 without
QUICK_CALIB_IMAGES = 128  # batch-norm recalibration images per sub-network with --quick (the recipe's 256 else)


def supernet_recipe(quick: bool, threads: int = 2, epochs: tuple[int, int, int, int] | None = None) -> Any:
    """Progressive shrinking (largest, kernel, depth, width): a demo for --quick, the default otherwise; `epochs`
    replaces the epochs per phase."""
    from nas.supernet import SupernetRecipe

    if quick:
        # only the largest network, 2 epochs: trials score near chance either way at this size, and one width epoch
        # on 512 images wrecked the shared weights (largest 0.80 -> 0.44 val); the fine-tuned result reaches ~0.8.
        # Re-measured 2026-12-03 with the default's warm-up: 1,0,0,1 59 s wall (vs 49 s), trials still 0.18-0.23
        # val, random sub-networks 0.24, fine-tuned 0.832 / 0.844 (vs 0.838 / 0.860)
        return SupernetRecipe(epochs=epochs or (2, 0, 0, 0), batch_size=32, random_subnets=1, threads=threads,
                              calib_images=QUICK_CALIB_IMAGES)
    # measured on digits, 24 random sub-networks under 100M MACs, mean val accuracy (README, "Supernet"):
    # 1,1,1,2 with warm-up over half of each phase 0.932 in 267 s, over a quarter 0.929, without 0.868; the old
    # default 2,1,1,4 without warm-up 0.930 in 398 s; one random sub-network per step instead of two 0.864
    return SupernetRecipe(epochs=epochs or DEFAULT_SUPERNET_EPOCHS, batch_size=64, random_subnets=2, threads=threads,
                          warmup=SUPERNET_WARMUP)


def data_spec(request: Any) -> DataSpec:
    """The request's data: source, split seed (--seed) and the seeded, class-stratified subsets of the train /
    validation splits (`--train-images`, 512 with --quick; `--val-images`); the test split stays whole."""
    from nas.data import DataSpec

    train_n = request.train_images or (QUICK_TRAIN_IMAGES if request.quick else None)
    return DataSpec.of(request.data, request.seed, train_n, request.val_images)


def load_splits(request: Any) -> Any:
    """The request's splits (`data_spec`) as cached tensors."""
    from nas.data import TensorSplits

    splits, _ = data_spec(request).load()
    return TensorSplits(splits)


def load_data_and_space(request: Any, max_macs: float | None, log: Callable[[str], None],
                        check: Callable[[ss.SearchSpace], None] | None = None) -> tuple[TensorSplits, ss.SearchSpace]:
    """The request's data and its search space, sized to the data's channels and classes.

    `check` (the MAC budget's reachability is checked in any case) sees the space as soon as the data's channels
    and classes are known, before it is trimmed: trimming drops only top choices, so the smallest network, and with it
    whether a budget is reachable, stays the same. With a MAC budget the space is trimmed to it
    (`search_spaces.trim_to_budget`), so the supernet trains only networks near or under the budget; --quick
    trims it to `QUICK_SPACE_FRACTION` of the budget.
    """
    data = load_splits(request)
    return data, data_space(data, request.space, request.phi, max_macs, request.quick, log, check)


def data_space(data: TensorSplits, space: str, phi: float, max_macs: float | None, quick: bool,
               log: Callable[[str], None], check: Callable[[ss.SearchSpace], None] | None = None) -> ss.SearchSpace:
    """The space `space` (compound-scaled by `phi`) sized to the data's channels and classes and trimmed to the
    MAC budget (to `QUICK_SPACE_FRACTION` of it with `quick`): what the search's supernet is trained on."""
    train = data.splits.train
    sp = ss.get_space(space, phi).with_io(train.in_channels, train.num_classes)
    if check is not None:
        check(sp)
    if max_macs:
        ss.check_reachable(sp, ss.Budget("macs", max_macs), ss.count_macs, name="--budget")
        trim = max(max_macs * QUICK_SPACE_FRACTION, ss.count_macs(sp.smallest())) if quick else max_macs
        sp = ss.trim_to_budget(sp, trim)
    log(f"data {train.name.rpartition('/')[0] or train.name}: {len(train)} train / {len(data.splits.val)} val / "
        f"{len(data.splits.test)} test, {train.num_classes} classes; space {sp.name} "
        f"({ss.count_macs(sp.smallest()) / 1e6:.1f}..{ss.count_macs(sp.largest()) / 1e6:.1f}M MACs)")
    return sp


def build_evaluator(request: Any, data: TensorSplits, space: ss.SearchSpace,
                    log: Callable[[str], None]) -> Evaluator:
    """Train (or load from cache, or resume) the supernet of `space` on `data` and wrap it as the trial scorer."""
    from nas.supernet import SubnetEvaluator

    recipe = supernet_recipe(request.quick, request.threads, request.supernet_epochs)
    run = search_supernet(space, data, recipe, request.seed, request.out, request.pretrained, log)
    return Evaluator(SubnetEvaluator(run.supernet, data, "val", calib_images=recipe.calib_images,
                                     seed=request.seed), supernet_key=run.key,
                     supernet_pretrained=run.pretrained is not None, threads=request.threads)


def search_supernet(space: ss.SearchSpace, data: TensorSplits, recipe: Any, seed: int, out: str | Path,
                    pretrained: bool, log: Callable[[str], None]) -> Any:
    """Train (or load from `out`/supernets, or resume, or load the packaged one) the supernet the search uses;
    `nas train supernet` calls this too, so the same settings give the same supernet."""
    from nas.supernet import train_supernet
    from nas.supernet.pretrained import PACKAGED

    run = train_supernet(space, data, recipe, seed=seed, root=Path(out) / "supernets",
                         pretrained=PACKAGED if pretrained else None)
    log(f"supernet {run.key}: {run.epochs_done} epochs, cached in {run.path}")
    if run.pretrained is not None:
        log(f"  (pretrained: trained once with this space, data, recipe and seed and shipped with nas, "
            f"{run.pretrained.name}; --no-pretrained trains it here)")
    if not any(recipe.epochs[1:]):
        # --quick's recipe: shrinking phases cost ~3x a largest-network epoch each and did not help at 512 images
        log("note: this supernet trained only its largest network, so the trials' sub-network accuracies are near "
            "chance and rank little; the fine-tuned chosen network's accuracy is the real figure (drop --quick for "
            "a supernet trained with progressive shrinking)")
    return run


def load_latency(request: Any, space: ss.SearchSpace, log: Callable[[str], None]) -> Any:
    """The latency predictor of the request's device.

    Without a table at the default path, this space's ops are profiled first and the per-network overhead is
    fitted on a few measured networks, so a fresh machine needs no set-up.
    """
    import latency_models as lm
    from latency_models.validation import fit_overhead

    path = Path(request.table) if request.table else lm.default_table_path(request.device, root=request.out)
    if request.table and not path.exists():
        raise FileNotFoundError(f"table: {path} does not exist")
    spec = lm.DeviceSpec.make(request.device)
    if path.exists() and not request.table:
        # the default table must describe this machine and this kernel build; a stale one is kept aside
        diffs = lm.LatencyTable.load(path, request.device).fingerprint_diffs(lm.get_device(spec).fingerprint())
        if diffs:
            stale = f"{path.stem}-stale-{time.strftime('%Y%m%d-%H%M%S')}"
            for f in (path, path.with_suffix(".json")):
                if f.exists():
                    f.rename(f.with_name(stale + f.suffix))
            log(f"latency table {path} was measured on another machine or kernel build ({'; '.join(diffs)}): "
                f"kept as {path.with_name(stale)}.*, profiling again")
    if not path.exists():
        log(f"no latency table for {request.device} at {path}: profiling the ops of space {space.name} first")
        # 3 passes: shared machines slow down 1.6-1.9x for seconds at a time (2-core VM, 2026-12-03); one pass
        # left such bursts in the table
        with fair_threads(request.threads):  # see `measure_all`
            lm.profile(spec, lm.enumerate_ops([space]), path, reps=10 if request.quick else 30,
                       passes=1 if request.quick else 3)
    table = lm.LatencyTable.load(path, request.device)
    if request.table:  # a table of another device, bit width or thread count would predict the wrong latency
        diffs = table.fingerprint_diffs({"device": spec.name, "bits": spec.bits, "threads": spec.threads})
        if diffs:
            raise ValueError(f"--table: {path} was not measured on --device {request.device} ({'; '.join(diffs)}); "
                             f"pass the --device it was profiled for")
    if table.overhead is None and not request.table:
        n = 16 if request.quick else 30
        log(f"fitting the per-network latency overhead on {n} measured networks")
        with fair_threads(request.threads):  # see `measure_all`
            overhead, data = fit_overhead(lm.Predictor(table), lm.get_device(spec), space, n=n, reps=5,
                                          passes=2 if request.quick else 6, progress=False)
        table.overhead = {**overhead.to_dict(), **data}
        table.save(table.path)
    return lm.load_predictor(request.device, str(path))


def measure_all(archs: list[ss.Arch], request: Any, reps: int = 9, passes: int = 5) -> list[float]:
    """Measured end-to-end latency (ms) of each of `archs` on the request's device (random weights; speed only),
    as the latency table predicts it: the lowest 10th percentile over `passes` round-robin passes of `reps` runs
    (see `latency_models.validation.measure_archs`)."""
    import latency_models as lm
    from latency_models.validation import measure_archs

    device = lm.get_device(lm.DeviceSpec.make(request.device))
    # building the networks runs torch ops, sized by nas.cores like training (a spinning OpenMP team builds them
    # several times slower while another run is busy); the timed runs use the device's fixed thread count anyway
    with fair_threads(request.threads):
        return measure_archs(device, archs, reps=reps, passes=passes, progress=False, stat="p10_ms")


def measure_ms(arch: ss.Arch, request: Any, reps: int = 20) -> float:
    """Median measured end-to-end latency of `arch` on the request's device (random weights; speed only)."""
    import latency_models as lm

    device = lm.get_device(lm.DeviceSpec.make(request.device))
    with fair_threads(request.threads):  # see `measure_all`
        return float(statistics.median(device.time_arch(arch, reps)))


def finetune(arch: ss.Arch, evaluator: Evaluator, request: Any) -> tuple[Any, dict[str, Any]]:
    """`arch` fine-tuned from its supernet weights (batch norm recalibrated first: the shared statistics of a
    supernet fit no single sub-network) on cross-entropy alone; the model and the metrics of
    `nas.train.train_standalone`."""
    from nas.train import train_standalone

    return train_standalone(arch, evaluator.subnet.data, finetune_recipe(request), init=evaluator.subnet.model(arch))


def finetune_recipe(request: Any) -> Any:
    """The `nas.train.TrainRecipe` of `finetune` for the request (--quick: 2 epochs)."""
    from nas.train import TrainRecipe

    return TrainRecipe(epochs=2 if request.quick else FINETUNE_EPOCHS, lr=0.05, seed=request.seed,
                       threads=request.threads, recalibrate_bn=1024, kd_weight=0.0)


def finalize_best(arch: ss.Arch, model: Any, metrics: dict[str, Any], data: TensorSplits, request: Any,
                  run_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Compress and export the chosen network, already fine-tuned (`finetune`, by the verify step)."""
    from nas.search.export_step import compress_and_export

    out: dict[str, Any] = {"fp32_val_acc": metrics["val_acc"], "fp32_test_acc": metrics.get("test_acc"),
                           "finetune_seconds": metrics.get("wall_s")}
    with fair_threads(request.threads):  # its fine-tuning steps; latency is measured at fixed thread counts
        out.update(compress_and_export(model, arch, data, data_spec(request).fingerprinted(data.splits), request,
                                       run_dir, log))
    return out
