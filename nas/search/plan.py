"""What a search will do, as typed values built once from the request: `plan(request) -> SearchPlan`.

`--quick` is a preset (`QUICK`, else `DEFAULT`; `preset(quick)`): the values it changes, in one place, so no stage
reads the flag. Each stage of `nas.search.main.search` takes only the pieces of the plan it needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import search_spaces as ss
from nas.backend import CPU, TrainBackend, resolve
from nas.data import DataLoading, DataSpec
from nas.data.spec import IN_MEMORY
from nas.export.pipeline import FinalizeConfig
from nas.search.request import SearchRequest
from nas.search.runner import Limits, SearchSettings
from nas.search.verify import VERIFY_CANDIDATES
from nas.supernet.training import SupernetRecipe
from nas.train import TrainRecipe

# W4A8 QAT steps when PTQ loses more than a point: 100 reach what 200 do in under half the time
# (benchmarks/RESULTS_finalize.md)
QAT_STEPS = 100
# No distillation from the supernet's largest sub-network when fine-tuning: that teacher is only as good as a short
# supernet's probe, and the student learns to copy it (benchmarks/RESULTS_search_quality.md)
FINETUNE_KD_WEIGHT = 0.0
FINETUNE_LR = 0.05
FINETUNE_RECALIBRATE_BN = 1024
W4_QAT_SKIP_WITHIN = 0.01  # skip W4A8 QAT when PTQ loses at most one point (half the 2-point W4A8 target)


@dataclass(frozen=True)
class Preset:
    """The settings `--quick` changes, as one value: the default search's, or the short demo's (`QUICK`)."""

    trials: int  # distinct architectures evaluated (--trials replaces it)
    verify: int  # candidates fine-tuned before choosing (--verify replaces it)
    train_images: int | None  # the training subset (--train-images replaces it; None: the whole split)
    space_fraction: float  # the space is trimmed to this fraction of the MAC budget (no lower than its smallest)
    supernet: SupernetRecipe  # progressive shrinking (--supernet-epochs replaces its epochs, --threads its threads)
    finetune_epochs: int  # the chosen network (and the verify step's candidates), from their supernet weights
    profile_reps: int  # latency-table profiling: runs per op and pass
    profile_passes: int
    overhead_networks: int  # networks measured to fit the per-network latency overhead
    overhead_passes: int
    prune_ratio: float | None  # finalize: prune toward this fraction of the chosen network's latency (None: no)
    w4_qat_steps: int  # finalize: W4A8 QAT steps (0: int8 PTQ only)

    def supernet_recipe(self, threads: int = 2, epochs: tuple[int, int, int, int] | None = None) -> SupernetRecipe:
        """This preset's supernet recipe with `threads` torch threads; `epochs` replaces the epochs per phase."""
        return replace(self.supernet, threads=threads, epochs=epochs or self.supernet.epochs)


# 1,1,1,2 with warm-up over half of each phase matches the old 2,1,1,4 in two thirds of the time; two random
# sub-networks per step beat one (benchmarks/RESULTS_supernet.md)
DEFAULT = Preset(trials=60, verify=VERIFY_CANDIDATES, train_images=None, space_fraction=1.0,
                 supernet=SupernetRecipe(epochs=(1, 1, 1, 2), batch_size=64, random_subnets=2, warmup=0.5),
                 finetune_epochs=6, profile_reps=30, profile_passes=3, overhead_networks=30, overhead_passes=6,
                 prune_ratio=0.85, w4_qat_steps=QAT_STEPS)
# The demo: 512 training images; the space trimmed to half the MAC budget (no lower than its smallest network), so
# its supernet trains a largest network about half as costly and the networks found still fit the budget (faster
# and more accurate on digits: benchmarks/RESULTS_default_run.md). Its supernet trains only the largest network, 2
# epochs: trials score near chance either way at this size, and one width epoch on 512 images wrecked the shared
# weights (largest 0.80 -> 0.44 val); the fine-tuned result reaches ~0.8 (benchmarks/RESULTS_default_run.md).
# Batch-norm recalibration on 128 images per sub-network (the recipe's 256 else).
QUICK = Preset(trials=12, verify=1, train_images=512, space_fraction=0.5,
               supernet=SupernetRecipe(epochs=(2, 0, 0, 0), batch_size=32, random_subnets=1, calib_images=128),
               finetune_epochs=2, profile_reps=10, profile_passes=1, overhead_networks=16, overhead_passes=2,
               prune_ratio=None, w4_qat_steps=0)


def preset(quick: bool) -> Preset:
    """`QUICK` for --quick, else `DEFAULT`."""
    return QUICK if quick else DEFAULT


@dataclass(frozen=True)
class SpacePlan:
    """The search space: `name` compound-scaled by `phi`, sized to the data once it is loaded, then trimmed to
    `trim_fraction` of the MAC budget `max_macs` (no trimming without one)."""

    name: str = ss.DEFAULT_SPACE
    phi: float = 0.0
    max_macs: float | None = None
    trim_fraction: float = 1.0


@dataclass(frozen=True)
class SupernetPlan:
    """The supernet the trials are scored with: trained (or loaded, or resumed) under `root`/supernets."""

    recipe: SupernetRecipe
    seed: int = 0
    root: str = "results"  # --out
    pretrained: bool = True  # load a packaged supernet whose cache key matches, instead of training it
    threads: int = 2  # torch threads of a trial at most


@dataclass(frozen=True)
class LatencyPlan:
    """The latency model of `device`: the given `table`, or the default one under `root` (profiled when missing or
    stale, with the preset's repetitions). `threads` sizes the torch work of building networks to time."""

    device: str = "kernels"
    table: str | None = None
    root: str = "results"
    threads: int = 2
    profile_reps: int = DEFAULT.profile_reps
    profile_passes: int = DEFAULT.profile_passes
    overhead_networks: int = DEFAULT.overhead_networks
    overhead_passes: int = DEFAULT.overhead_passes

    def where(self) -> str:
        """' on device D (table T)', for messages about a latency budget."""
        return f" on device {self.device}" + (f" (table {self.table})" if self.table else "")


@dataclass(frozen=True)
class StudyPlan:
    """The study: where it is stored, what it optimizes under which limits, and on which backend its trials run."""

    name: str
    run_dir: Path
    storage: str
    limits: Limits
    target_ms: float | None  # the MnasNet reward's latency target (the tightest latency budget)
    trials: int
    sampler: str = "tpe"
    objective: str = "pareto"
    seed: int = 0
    resume: bool = False
    identity: dict[str, Any] = field(default_factory=dict)  # `SearchRequest.study_settings`
    backend: str = "optuna"
    address: str | None = None
    workers: int = 2

    def settings(self, space: ss.SearchSpace) -> SearchSettings:
        """The runner's settings for `space` (known once the data is loaded)."""
        return SearchSettings(space=space, limits=self.limits, trials=self.trials, sampler=self.sampler,
                              objective=self.objective, target_ms=self.target_ms, study_name=self.name,
                              storage=self.storage, seed=self.seed, identity=self.identity)


@dataclass(frozen=True)
class SearchPlan:
    """Everything `nas search` will do, as typed values: built once from the request (`plan`)."""

    data: DataSpec
    space: SpacePlan
    budgets: tuple[tuple[str, ss.Budget], ...]  # (flag, budget) of every budget asked for
    supernet: SupernetPlan
    latency: LatencyPlan
    study: StudyPlan
    verify: int  # candidates fine-tuned before choosing (1: the most accurate trial)
    finetune: TrainRecipe  # the verify step's candidates and the chosen network, from their supernet weights
    finalize: FinalizeConfig | None  # None: --no-finalize
    request: dict[str, Any]  # the request as given, recorded in summary.json
    # where and in what precision the supernet, the trial scoring and the fine-tunes run (not part of any cache key)
    backend: TrainBackend = CPU
    # in memory or streamed from disk (not part of any cache key: the same data and batches either way)
    loading: DataLoading = IN_MEMORY

    @property
    def fine_tunes(self) -> bool:
        """Whether candidates are fine-tuned: to choose among several, or to finalize the chosen one."""
        return self.verify > 1 or self.finalize is not None


def plan(request: SearchRequest) -> SearchPlan:
    """The typed plan of `request`: the preset of --quick, with each flag given replacing its value.

    Checks that need nothing loaded or created (the run folder stays inside --out, this machine runs
    --train-device and --precision) refuse here, one line naming the flag.
    """
    p = preset(request.quick)
    budgets = tuple(request.budgets())
    limits, target_ms = limits_of(budgets, request.objective)
    data, space, supernet = supernet_inputs(
        data=request.data, seed=request.seed, space=request.space, phi=request.phi, max_macs=limits.macs,
        preset=p, threads=request.threads, supernet_epochs=request.supernet_epochs,
        train_images=request.train_images, val_images=request.val_images, out=request.out,
        pretrained=request.pretrained)
    run_dir = run_folder(request.out, request.run_name())
    study = StudyPlan(name=request.run_name(), run_dir=run_dir, storage=request.storage or default_storage(run_dir),
                      limits=limits, target_ms=target_ms, trials=request.trials or p.trials, sampler=request.sampler,
                      objective=request.objective, seed=request.seed, resume=request.resume,
                      identity=request.study_settings(), backend=request.backend, address=request.address,
                      workers=request.workers)
    latency = LatencyPlan(device=request.device, table=request.table, root=request.out, threads=request.threads,
                          profile_reps=p.profile_reps, profile_passes=p.profile_passes,
                          overhead_networks=p.overhead_networks, overhead_passes=p.overhead_passes)
    finetune = TrainRecipe(epochs=p.finetune_epochs, lr=FINETUNE_LR, seed=request.seed, threads=request.threads,
                           recalibrate_bn=FINETUNE_RECALIBRATE_BN, kd_weight=FINETUNE_KD_WEIGHT)
    backend = resolve(request.train_device, request.precision, workers=request.train_workers)
    return SearchPlan(data=data, space=space, budgets=budgets, supernet=supernet, latency=latency, study=study,
                      verify=request.verify or p.verify, finetune=finetune,
                      # the checkpoints record where the chosen network was trained
                      finalize=replace(finalize_config(request.device, request.table, request.out, request.seed,
                                                       data, p), training=backend) if request.finalize else None,
                      request=asdict(request), backend=backend,
                      loading=DataLoading.of(request.data_memory_limit, request.data_workers, request.out))


def supernet_inputs(*, data: str, seed: int, space: str, phi: float, max_macs: float | None, preset: Preset,
                    threads: int, supernet_epochs: tuple[int, int, int, int] | None, train_images: int | None,
                    val_images: int | None, out: str, pretrained: bool) -> tuple[DataSpec, SpacePlan, SupernetPlan]:
    """What the supernet depends on: its data (source, split seed, the seeded, class-stratified subsets of the
    train / validation splits; the test split stays whole), its space and its recipe. `nas search` and `nas train
    supernet` both build them here, so the same flags give the same supernet (one cache under --out/supernets)."""
    spec = DataSpec.of(data, seed, train_images or preset.train_images, val_images)
    return (spec, SpacePlan(space, phi, max_macs, preset.space_fraction),
            SupernetPlan(preset.supernet_recipe(threads, supernet_epochs), seed, out, pretrained, threads))


def finalize_config(device: str, table: str | None, out: str, seed: int, data: DataSpec,
                    preset: Preset) -> FinalizeConfig:
    """The finalize steps of the search's chosen network: prune toward the preset's fraction of its latency, int8
    PTQ, W4A8 (QAT unless PTQ already loses at most `W4_QAT_SKIP_WITHIN` of val accuracy; one point is under two
    images of digits' 179 val images), ONNX export. Pruning is priced on the kernels: on `device` when it is a
    kernels device, and then by the search's own table (--table, or the one profiled under --out). On another
    `device` (ort-int8, torch-int8...) the final int8 network is measured there too."""
    kernels = device if device.startswith("kernels") else "kernels"
    return FinalizeConfig(prune_ratio=preset.prune_ratio, device=kernels, table=table if kernels == device else None,
                          measure_device=None if kernels == device else device,
                          table_root=out, w4_qat_steps=preset.w4_qat_steps, w4_qat_skip_within=W4_QAT_SKIP_WITHIN,
                          data=data, seed=seed, onnx=True)


def limits_of(budgets: tuple[tuple[str, ss.Budget], ...], objective: str) -> tuple[Limits, float | None]:
    """The hard limits of the search (the tightest budget of each kind), and the latency target of the MnasNet
    reward (the tightest latency budget). With --objective mnasnet the soft reward replaces the hard latency
    limit."""
    values: dict[str, float] = {}
    for _, b in budgets:
        values[b.kind] = min(values.get(b.kind, float("inf")), b.value)
    target = values.get("latency_ms")
    if objective == "mnasnet":
        values.pop("latency_ms", None)
    return Limits(macs=values.get("macs"), params=values.get("params"), latency_ms=values.get("latency_ms"),
                  peak_bytes=values.get("peak_bytes"), weight_bytes=values.get("weight_bytes")), target


def default_storage(run_dir: Path) -> str:
    """The study's store when no --storage is given: an Optuna journal file in the run folder.

    Measured (60 TPE trials, 85 parameters, trivial objective): 0.22 s of Optuna per trial with the journal,
    1.34 s with SQLite, whose ~150 commits per trial dominated the trials stage. A run folder made when SQLite was
    the default keeps its `study.db`, so `--resume` finds its trials.
    """
    journal, sqlite = run_dir / "study.journal", run_dir / "study.db"
    if sqlite.exists() and not journal.exists():
        return f"sqlite:///{sqlite.resolve()}"
    return str(journal.resolve())


def run_folder(out: str, name: str) -> Path:
    """`out`/`name`, refused unless it resolves inside `out` (a symlink pointing elsewhere, say)."""
    root = Path(out).expanduser()
    run_dir = root / name
    if not run_dir.resolve().is_relative_to(root.resolve()) or run_dir.resolve() == root.resolve():
        raise ValueError(f"--study: the run folder {str(run_dir)!r} resolves to {str(run_dir.resolve())!r}, "
                         f"outside --out {str(root)!r}; pass another --study")
    return run_dir
