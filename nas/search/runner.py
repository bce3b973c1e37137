"""The search loop: an Optuna study in persistent storage, run in-process or spread over Ray Tune workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import search_spaces as ss
from nas.search.evolution import RegularizedEvolutionSampler
from nas.search.params import arch_from_params, distributions, repair, suggest_params

SAMPLERS = ("tpe", "nsga2", "random", "evolution")
MNASNET_W = -0.07


@dataclass(frozen=True)
class Limits:
    """Hard budgets; an architecture fits when every cost is within its limit."""

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None

    def excess(self, arch: ss.Arch, latency_ms: Callable[[ss.Arch], float] | None) -> float:
        """max(cost / limit) over the set limits: <= 1 means the architecture fits."""
        ratios = [0.0]
        if self.macs:
            ratios.append(ss.count_macs(arch) / self.macs)
        if self.params:
            ratios.append(ss.count(arch).params / self.params)
        if self.latency_ms:
            if latency_ms is None:
                raise ValueError("latency: a latency limit needs a latency predictor (--device)")
            ratios.append(latency_ms(arch) / self.latency_ms)
        return max(ratios)


@dataclass(frozen=True)
class SearchSettings:
    """What one search needs besides the evaluator: space, limits, objective, sampler, storage, trials."""

    space: ss.SearchSpace
    limits: Limits
    trials: int = 40
    sampler: str = "tpe"
    objective: str = "pareto"  # "pareto": (accuracy up, latency down); "mnasnet": acc * (lat / target) ** w
    target_ms: float | None = None  # MnasNet reward target
    study_name: str = "nas"
    storage: str = "results/nas/study.journal"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        if self.objective not in ("pareto", "mnasnet"):
            raise ValueError(f"objective: expected 'pareto' or 'mnasnet', got {self.objective!r}")
        if self.objective == "mnasnet" and not self.target_ms:
            raise ValueError("objective: the MnasNet reward needs a latency target (--latency)")
        if self.trials < 1:
            raise ValueError(f"trials: expected a positive count, got {self.trials}")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: `sqlite:///...`, any SQLAlchemy URL, or a `.journal` / `.log` file path."""
    if url.endswith((".journal", ".log")) and "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(url)
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


def make_sampler(s: SearchSettings) -> optuna.samplers.BaseSampler:
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(2, s.trials // 4)))
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=min(20, max(4, s.trials // 4)))
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return RegularizedEvolutionSampler(distributions(s.space), population=min(16, max(4, s.trials // 4)),
                                       tournament=min(4, max(2, s.trials // 16)), seed=s.seed)


def directions(s: SearchSettings) -> list[str]:
    return ["maximize", "minimize"] if s.objective == "pareto" else ["maximize"]


def study_exists(storage_url: str, name: str) -> bool:
    """Whether the store at `storage_url` holds a study called `name`."""
    return name in [st.study_name for st in optuna.get_all_study_summaries(make_storage(storage_url))]


def check_study(storage_url: str, name: str, resume: bool) -> None:
    """Refuse to overwrite an existing study without `resume`, or to resume one that does not exist."""
    exists = study_exists(storage_url, name)
    if exists and not resume:
        raise ValueError(f"study: {name!r} already exists in {storage_url}; pass --resume to continue it "
                         "or --study NAME for a new one")
    if not exists and resume:
        raise ValueError(f"study: nothing to resume, no study {name!r} in {storage_url}")


def open_study(s: SearchSettings, resume: bool) -> optuna.Study:
    """Create the study, or load it with `resume`; trials left RUNNING by a killed process are marked FAIL."""
    check_study(s.storage, s.study_name, resume)
    storage = make_storage(s.storage)
    study = optuna.create_study(storage=storage, study_name=s.study_name, sampler=make_sampler(s),
                                directions=directions(s), load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # interrupted mid-evaluation: its result was never recorded
    study.set_user_attr("space", s.space.name)
    return study


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def arch_for(s: SearchSettings, params: dict[str, Any], latency_ms: Callable[[ss.Arch], float] | None) -> ss.Arch:
    """The feasible architecture a trial evaluates: the parameters' architecture, repaired into the limits."""
    raw = arch_from_params(s.space, params)
    return repair(s.space, raw, lambda a: s.limits.excess(a, latency_ms), 1.0)


def objective_values(s: SearchSettings, metrics: dict[str, float]) -> list[float]:
    if s.objective == "pareto":
        return [metrics["val_acc"], metrics["latency_ms"]]
    return [metrics["val_acc"] * (metrics["latency_ms"] / s.target_ms) ** MNASNET_W]


def run_trial(s: SearchSettings, params: dict[str, Any], evaluate: Callable[[ss.Arch], dict[str, float]],
              latency_ms: Callable[[ss.Arch], float] | None) -> dict[str, Any]:
    """Evaluate the trial's architecture; returns metrics plus the architecture string and hash."""
    t0 = time.perf_counter()
    arch = arch_for(s, params, latency_ms)
    metrics = dict(evaluate(arch))
    cost = ss.count(arch)
    metrics.update(macs=cost.macs, params=cost.params, arch=str(arch), arch_hash=arch.hash(),
                   repaired=arch != arch_from_params(s.space, params), seconds=time.perf_counter() - t0)
    return metrics


def run_optuna(s: SearchSettings, evaluate: Callable[[ss.Arch], dict[str, float]],
               latency_ms: Callable[[ss.Arch], float] | None, resume: bool = False,
               progress: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Run the remaining trials in this process, one at a time (ask -> repair -> evaluate -> tell)."""
    study = open_study(s, resume)
    if progress:  # a resumed study starts with its completed trials on the bar
        progress(study)
    while completed(study) < s.trials:
        trial = study.ask()
        try:
            m = run_trial(s, suggest_params(trial, s.space), evaluate, latency_ms)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        for key in ("arch", "arch_hash", "macs", "params", "repaired", "seconds", "val_acc", "latency_ms"):
            trial.set_user_attr(key, m[key])
        study.tell(trial, objective_values(s, m))
        if progress:
            progress(study)
    return study


@dataclass(frozen=True)
class _DefineByRun:
    """Ray's OptunaSearch pickles its search space with the experiment state, so no closures here."""

    space: ss.SearchSpace

    def __call__(self, trial: optuna.Trial) -> None:
        suggest_params(trial, self.space)


def _ray_trial(config: dict[str, Any], evaluate: Any, latency_ms: Any, settings: SearchSettings,
               threads: int) -> None:
    """One Ray Tune trial: the same repair -> evaluate as in-process, reported to Tune."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    m = run_trial(settings, config, evaluate, latency_ms)
    if settings.objective == "mnasnet":
        m["reward"] = objective_values(settings, m)[0]
    tune.report(m)


def run_ray(s: SearchSettings, evaluate: Callable[[ss.Arch], dict[str, float]],
            latency_ms: Callable[[ss.Arch], float] | None, resume: bool = False, address: str | None = None,
            workers: int = 2, cpus_per_trial: float = 1.0, storage_path: str | None = None) -> optuna.Study:
    """Spread the remaining trials over a Ray cluster with Ray Tune's OptunaSearch on the same persistent study.

    Without `address` an embedded local Ray instance is started. The evaluator and predictor travel to the
    workers through Ray's object store (`tune.with_parameters`), so remote nodes need only the package.
    """
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    study = open_study(s, resume)
    remaining = s.trials - completed(study)
    if remaining <= 0:
        return study
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(workers * cpus_per_trial, 1)}))

    search = OptunaSearch(space=_DefineByRun(s.space), metric=["val_acc", "latency_ms"] if s.objective == "pareto"
                          else "reward", mode=["max", "min"] if s.objective == "pareto" else "max",
                          sampler=make_sampler(s), study_name=s.study_name, storage=make_storage(s.storage))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_ray_trial, evaluate=evaluate, latency_ms=latency_ms, settings=s,
                                                 threads=max(1, int(cpus_per_trial))),
                            {"cpu": cpus_per_trial}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=remaining, max_concurrent_trials=workers),
        run_config=tune.RunConfig(storage_path=storage_path, name=s.study_name, verbose=0),
    )
    tuner.fit()
    return optuna.load_study(study_name=s.study_name, storage=make_storage(s.storage), sampler=make_sampler(s))
