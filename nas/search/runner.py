"""The search loop: an Optuna study in persistent storage, run in-process or spread over Ray Tune workers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import search_spaces as ss
from nas.cores import fair_threads
from nas.errors import one_line
from nas.io import write_atomic
from nas.search.evolution import RegularizedEvolutionSampler
from nas.search.params import arch_from_params, distributions, repair, suggest_params
from nas.search.request import SAMPLERS
from nas.search.storage import (
    StorageError,
    _is_journal,
    check_storage,
    shown_url,
    store_exists,
    store_file,
)

MNASNET_W = -0.07
# each requested trial may ask the sampler this many times: asks that land on an architecture already evaluated
# cost no evaluation, and a space with fewer distinct architectures than requested must still end
MAX_ASKS_PER_TRIAL = 10
# the trial's user attributes: what trials.csv reports, and what a repeated architecture copies from its first trial
TRIAL_ATTRS = ("arch", "arch_hash", "macs", "params", "repaired", "seconds", "val_acc", "latency_ms")


@dataclass(frozen=True)
class Limits:
    """Hard budgets; an architecture fits when every cost is within its limit."""

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    peak_bytes: float | None = None  # peak activation memory on the kernels (`nas.kernels.memory`)
    weight_bytes: float | None = None  # int8 weights as stored

    def excess(self, arch: ss.Arch, latency_ms: Callable[[ss.Arch], float] | None) -> float:
        """max(cost / limit) over the set limits: <= 1 means the architecture fits."""
        ratios = [0.0]
        if self.macs:
            ratios.append(ss.count_macs(arch) / self.macs)
        if self.params:
            ratios.append(ss.count(arch).params / self.params)
        for kind in ss.MEMORY_KINDS:
            if getattr(self, kind):
                from nas.kernels import memory

                ratios.append(memory.cost(kind, arch) / getattr(self, kind))
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
    # the settings that define the study (`nas.search.main.SearchRequest.study_settings`): stored with the study
    # when it is created, and compared before it is continued
    identity: dict[str, Any] = field(default_factory=dict)

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
    """An Optuna storage from a URL: `sqlite:///...`, any SQLAlchemy URL, or a `.journal` / `.log` file path.

    The store (its file and folder) is created when missing. A bad value or a database that cannot be opened is a
    one-line `StorageError` naming --storage (the password hidden), not a driver's traceback.
    """
    check_storage(url)
    path = store_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if _is_journal(url):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    import sqlalchemy

    try:
        return optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as exc:
        cause = getattr(exc, "orig", None) or exc.__cause__ or exc  # the driver's own words, not the wrapper's
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise StorageError(f"--storage: cannot open {shown_url(url)!r}: {reason}") from None


def _is_record(line: bytes) -> bool:
    """Whether `line` is an Optuna journal record: a JSON object with an operation code."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def repair_journal(path: str | os.PathLike[str], log: Callable[[str], None] = print) -> None:
    """Make a journal readable again after a crash mid-write, before Optuna opens it.

    A torn last line (no newline, or not JSON) is what a process killed while appending leaves; Optuna skips it
    when reading but appends the next record right after it, so the record after it would be lost and every
    later read would fail. The original is copied aside (`<file>.bak`), the torn line dropped, and a warning
    says so. A damaged line before the last is not guessed at: the error names the file, the line and the fix.
    Runs under the journal's own lock, so a line another process is still writing is not mistaken for a torn one.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path).expanduser()
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        *records, tail = data.split(b"\n")  # bytes after the last newline: a write cut short (Optuna skips them)
        keep, offset = len(data) - len(tail), 0
        for number, line in enumerate(records, start=1):
            if not _is_record(line):
                if number < len(records) or tail:
                    raise StorageError(
                        f"study journal {path}: line {number} is not a journal record (the file is damaged); "
                        f"keep a copy, then keep only the lines before it (head -n {number - 1} {path} > "
                        f"{path}.fixed && mv {path}.fixed {path}; the trials recorded after it are lost) or "
                        "restore the file from a backup")
                keep = offset  # the last line, damaged: as good as torn
                break
            offset += len(line) + 1
        if keep >= len(data):
            return
        backup = path.with_name(path.name + ".bak")
        n = 1
        while backup.exists():
            n += 1
            backup = path.with_name(f"{path.name}.bak{n}")
        write_atomic(backup, lambda tmp: Path(tmp).write_bytes(data))
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(data[:keep]))
        log(f"warning: study journal {path}: dropped a torn last line ({len(data) - keep} bytes, a write cut "
            f"short by a crash); the original is kept as {backup}")
    finally:
        lock.release()


def make_sampler(s: SearchSettings) -> optuna.samplers.BaseSampler:
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(2, s.trials // 4)))
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=min(20, max(4, s.trials // 4)))
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return RegularizedEvolutionSampler(distributions(s.space), population=min(16, max(4, s.trials // 4)),
                                       tournament=min(4, max(2, s.trials // 16)), seed=s.seed)


def directions(objective: str) -> list[str]:
    """The study's optimization directions: pareto, accuracy up and latency down; mnasnet, the reward up."""
    return ["maximize", "minimize"] if objective == "pareto" else ["maximize"]


def study_exists(storage_url: str, name: str) -> bool:
    """Whether the store at `storage_url` holds a study called `name` (a missing store file is not created)."""
    if not store_exists(storage_url):
        return False
    return name in [st.study_name for st in make_storage(storage_url).get_all_studies()]


def stored_identity(storage_url: str, name: str) -> dict[str, Any] | None:
    """The settings stored with study `name` when it was created; None for a study made before they were stored."""
    storage = make_storage(storage_url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    return attrs.get("settings")


def identity_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'--flag: old in the study, new now' for each setting that differs (compared as JSON, as stored)."""
    def shown(value: Any) -> str:
        return "unset" if value is None else repr(value)

    new = json.loads(json.dumps(new))
    return [f"{key} {shown(old.get(key))} in the study, {shown(new.get(key))} now"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def check_study(storage_url: str, name: str, resume: bool, identity: dict[str, Any] | None = None) -> bool:
    """Refuse to overwrite an existing study without `resume`, to resume one that does not exist, or to continue
    one that was made with other settings (`identity`, compared with those stored with the study) — before the
    study is touched. Returns whether the study exists."""
    exists = study_exists(storage_url, name)
    where = shown_url(storage_url)
    if exists:
        stored = stored_identity(storage_url, name) if identity else None
        diffs = identity_diffs(stored, identity) if stored is not None and identity else []
        if diffs and resume:
            raise ValueError(f"--resume: study {name!r} in {where} was made with other settings ("
                             f"{'; '.join(diffs)}); resume it with its settings, or pass --study NAME for a new one")
        if diffs:
            raise ValueError(f"--study: a study {name!r} made with other settings ({'; '.join(diffs)}) already "
                             f"exists in {where}; pass --study NAME for a new one")
        if not resume:
            raise ValueError(f"--study: {name!r} already exists in {where}; pass --resume to continue it "
                             "or --study NAME for a new one")
    elif resume:
        raise ValueError(f"--resume: nothing to resume, no study {name!r} in {where}")
    return exists


def check_compatible(storage_url: str, name: str, space: ss.SearchSpace, objective: str) -> None:
    """Refuse to continue an existing study whose objectives or parameters differ from this run's: Optuna would
    add a failed trial and stop ("does not support dynamic value space"). Catches studies made before their
    settings were stored, and a data set whose channels or classes changed under the same path."""
    if not study_exists(storage_url, name):
        return
    storage = make_storage(storage_url)
    study_id = storage.get_study_id_from_name(name)
    wanted = directions(objective)
    have = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if have != wanted:
        raise ValueError(f"--objective: study {name!r} in {shown_url(storage_url)} optimizes {have}, the "
                         f"{objective!r} objective {wanted}; pass its --objective, or --study NAME for a new one")
    dists = distributions(space)
    for t in storage.get_all_trials(study_id, deepcopy=False):
        for param, dist in t.distributions.items():
            if dists.get(param) != dist:
                now = getattr(dists.get(param), "choices", "absent")
                raise ValueError(
                    f"--resume: study {name!r} in {shown_url(storage_url)} was searched over another space "
                    f"(parameter {param}: {getattr(dist, 'choices', dist)} in the study, {now} now); pass the "
                    "settings it was made with (--space, --phi, --budget, --quick, --data), or --study NAME for a "
                    "new one")


def open_study(s: SearchSettings, resume: bool) -> optuna.Study:
    """Create the study, or load it with `resume`; trials left RUNNING by a killed process are marked FAIL.

    A new study stores `s.identity` (user attribute "settings"), which `check_study` compares on a later run.
    """
    check_study(s.storage, s.study_name, resume, s.identity)
    storage = make_storage(s.storage)
    study = optuna.create_study(storage=storage, study_name=s.study_name, sampler=make_sampler(s),
                                directions=directions(s.objective), load_if_exists=True)
    if s.identity and "settings" not in study.user_attrs:  # a new study, or one from before settings were stored
        study.set_user_attr("settings", json.loads(json.dumps(s.identity)))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # interrupted mid-evaluation: its result was never recorded
    study.set_user_attr("space", s.space.name)
    return study


def arch_for(s: SearchSettings, params: dict[str, Any], latency_ms: Callable[[ss.Arch], float] | None) -> ss.Arch:
    """The feasible architecture a trial evaluates: the parameters' architecture, repaired into the limits."""
    raw = arch_from_params(s.space, params)
    return repair(s.space, raw, lambda a: s.limits.excess(a, latency_ms), 1.0)


def trial_scores(s: SearchSettings, t: optuna.trial.FrozenTrial, arch: ss.Arch,
                 latency_ms: Callable[[ss.Arch], float] | None) -> tuple[float, float]:
    """(val_acc, latency_ms) of a completed trial. A MnasNet trial run by a Ray worker (no user attributes) has
    only its reward: its accuracy is the reward divided by the latency factor."""
    if s.objective == "pareto":
        acc, lat = t.values
        return float(acc), float(lat)
    lat = t.user_attrs.get("latency_ms") or (latency_ms(arch) if latency_ms else float("nan"))
    return float(t.values[0] / (lat / s.target_ms) ** MNASNET_W), float(lat)


def first_trials(s: SearchSettings, study: optuna.Study, latency_ms: Callable[[ss.Arch], float] | None,
                 ) -> dict[str, dict[str, Any]]:
    """For each architecture the study has evaluated, by hash: the first completed trial that did (`trial`, its
    objective `values`, `val_acc`, `latency_ms`). Its size is the number of distinct architectures evaluated,
    which is what --trials counts; a later trial of the same architecture reuses these scores."""
    first: dict[str, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        # trials run in-process carry their architecture and scores; Ray workers' trials only their parameters
        arch = None if "arch_hash" in t.user_attrs else arch_for(s, t.params, latency_ms)
        arch_hash = t.user_attrs["arch_hash"] if arch is None else arch.hash()
        if arch_hash in first:
            continue
        if arch is None:
            acc, lat = t.user_attrs["val_acc"], t.user_attrs["latency_ms"]
        else:
            acc, lat = trial_scores(s, t, arch, latency_ms)
        first[arch_hash] = {"trial": t.number, "values": list(t.values), "val_acc": acc, "latency_ms": lat}
    return first


def objective_values(s: SearchSettings, metrics: dict[str, float]) -> list[float]:
    if s.objective == "pareto":
        return [metrics["val_acc"], metrics["latency_ms"]]
    return [metrics["val_acc"] * (metrics["latency_ms"] / s.target_ms) ** MNASNET_W]


def run_trial(s: SearchSettings, params: dict[str, Any], evaluate: Callable[[ss.Arch], dict[str, float]],
              latency_ms: Callable[[ss.Arch], float] | None,
              known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate the trial's architecture; returns metrics plus the architecture string and hash.

    An architecture already in `known` (`first_trials`) is not evaluated again: its first trial's scores come
    back with `duplicate_of` (that trial's number) and `values` (its objective values, to tell unchanged).
    """
    t0 = time.perf_counter()
    arch = arch_for(s, params, latency_ms)
    first = (known or {}).get(arch.hash())
    if first is None:
        metrics: dict[str, Any] = dict(evaluate(arch))
    else:
        metrics = {"val_acc": first["val_acc"], "latency_ms": first["latency_ms"], "values": first["values"],
                   "duplicate_of": first["trial"]}
    cost = ss.count(arch)
    metrics.update(macs=cost.macs, params=cost.params, arch=str(arch), arch_hash=arch.hash(),
                   repaired=arch != arch_from_params(s.space, params), seconds=time.perf_counter() - t0)
    return metrics


def _fewer_archs(s: SearchSettings, found: int, asks: int, log: Callable[[str], None]) -> None:
    log(f"search: {found} distinct architectures in {asks} proposals; the space within these limits seems to hold "
        f"fewer than the {s.trials} trials asked for (each proposal past those was one already evaluated), so the "
        "search stops here")


def run_optuna(s: SearchSettings, evaluate: Callable[[ss.Arch], dict[str, float]],
               latency_ms: Callable[[ss.Arch], float] | None, resume: bool = False,
               progress: Callable[[optuna.Study, int], None] | None = None,
               log: Callable[[str], None] = print) -> optuna.Study:
    """Run the remaining trials in this process, one at a time (ask -> repair -> evaluate -> tell).

    `s.trials` counts distinct architectures: a proposal that repairs to an architecture the study already
    evaluated is told that trial's scores (user attribute `duplicate_of`) without evaluating it again, and does
    not count. At most `MAX_ASKS_PER_TRIAL` proposals per requested trial are made in one call, so a space with
    fewer distinct architectures than requested ends (and says so). `progress(study, evaluated)` follows each.
    """
    study = open_study(s, resume)
    known = first_trials(s, study, latency_ms)
    if progress:  # a resumed study starts with its completed trials on the bar
        progress(study, len(known))
    asks = 0
    while len(known) < s.trials:
        if asks >= MAX_ASKS_PER_TRIAL * s.trials:
            _fewer_archs(s, len(known), asks, log)
            break
        trial = study.ask()
        asks += 1
        try:
            m = run_trial(s, suggest_params(trial, s.space), evaluate, latency_ms, known)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        for key in TRIAL_ATTRS + (("duplicate_of",) if "duplicate_of" in m else ()):
            trial.set_user_attr(key, m[key])
        values = m.get("values") or objective_values(s, m)
        study.tell(trial, values)
        known.setdefault(m["arch_hash"], {"trial": trial.number, "values": values, "val_acc": m["val_acc"],
                                          "latency_ms": m["latency_ms"]})
        if progress:
            progress(study, len(known))
    return study


@dataclass(frozen=True)
class _DefineByRun:
    """Ray's OptunaSearch pickles its search space with the experiment state, so no closures here."""

    space: ss.SearchSpace

    def __call__(self, trial: optuna.Trial) -> None:
        suggest_params(trial, self.space)


def _ray_trial(config: dict[str, Any], evaluate: Any, latency_ms: Any, settings: SearchSettings,
               threads: int, known: dict[str, dict[str, Any]]) -> None:
    """One Ray Tune trial: the same repair -> evaluate as in-process (an architecture in `known` not evaluated
    again), reported to Tune; `threads` torch threads at most, fewer while other processes (the other trials among
    them) keep the cores busy (`nas.cores`)."""
    from ray import tune

    with fair_threads(threads):  # restores the worker's thread count afterwards
        m = run_trial(settings, config, evaluate, latency_ms, known)
    m.pop("values", None)  # Tune reports scalars; the objective's values are recomputed from the metrics
    if settings.objective == "mnasnet":
        m["reward"] = objective_values(settings, m)[0]
    tune.report(m)


def _probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once a Ray address where nothing listens (`ray.init` would wait minutes for it)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--address: expected HOST:PORT, ray://HOST:PORT or 'auto', got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"--address: no Ray cluster answers at {hostport} "
                         f"({exc.strerror or type(exc).__name__})") from None


def connect_ray(address: str | None, workers: int, cpus_per_trial: float = 1.0) -> None:
    """Join the Ray cluster at `address`, or start an embedded one sized for `workers` trials; a cluster that
    cannot be reached is one line naming --address (the search calls this before loading data or training)."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        _probe_address(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(workers * cpus_per_trial, 1)}))
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"--address: cannot join a Ray cluster at {address!r}" if address else \
            "--backend ray: cannot start a local Ray instance"
        raise ValueError(f"{where} ({one_line(exc, 300, with_type=True)})") from None


def run_ray(s: SearchSettings, evaluate: Callable[[ss.Arch], dict[str, float]],
            latency_ms: Callable[[ss.Arch], float] | None, resume: bool = False, address: str | None = None,
            workers: int = 2, cpus_per_trial: float = 1.0, storage_path: str | None = None,
            log: Callable[[str], None] = print) -> optuna.Study:
    """Spread the remaining trials over a Ray cluster with Ray Tune's OptunaSearch on the same persistent study.

    Without `address` an embedded local Ray instance is started. The evaluator and predictor travel to the
    workers through Ray's object store (`tune.with_parameters`), so remote nodes need only the package.

    As in `run_optuna`, `s.trials` counts distinct architectures. Tune fixes a round's number of samples up front
    and OptunaSearch asks and tells in the driver, so duplicates are handled per round: each trial gets the
    architectures evaluated before the round (`first_trials`) and reuses their scores instead of evaluating
    again, but two trials of one round that land on the same new architecture both evaluate it (the workers
    share no state while the round runs). Rounds repeat, for the trials still missing, until the study holds
    `s.trials` distinct architectures or `MAX_ASKS_PER_TRIAL` proposals per trial were made.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    study = open_study(s, resume)
    known = first_trials(s, study, latency_ms)
    asks = 0
    while len(known) < s.trials:
        if asks >= MAX_ASKS_PER_TRIAL * s.trials:
            _fewer_archs(s, len(known), asks, log)
            break
        remaining = min(s.trials - len(known), MAX_ASKS_PER_TRIAL * s.trials - asks)
        connect_ray(address, workers, cpus_per_trial)
        search = OptunaSearch(space=_DefineByRun(s.space), metric=["val_acc", "latency_ms"]
                              if s.objective == "pareto" else "reward",
                              mode=["max", "min"] if s.objective == "pareto" else "max",
                              sampler=make_sampler(s), study_name=s.study_name, storage=make_storage(s.storage))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_ray_trial, evaluate=evaluate, latency_ms=latency_ms,
                                                     settings=s, threads=max(1, int(cpus_per_trial)), known=known),
                                {"cpu": cpus_per_trial}),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=remaining, max_concurrent_trials=workers),
            run_config=tune.RunConfig(storage_path=storage_path, name=s.study_name, verbose=0),
        )
        tuner.fit()
        asks += remaining
        study = optuna.load_study(study_name=s.study_name, storage=make_storage(s.storage), sampler=make_sampler(s))
        known = first_trials(s, study, latency_ms)
    return study
