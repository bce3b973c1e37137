"""`search(request)`: the whole `nas search` job, from data and budget to a chosen, finalized network."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import search_spaces as ss
from nas import checks
from nas.io import write_atomic
from nas.search import report
from nas.search.runner import (
    SAMPLERS,
    Limits,
    SearchSettings,
    check_compatible,
    check_storage,
    check_study,
    connect_ray,
    make_storage,
    repair_journal,
    run_optuna,
    run_ray,
    store_exists,
    store_file,
    study_exists,
)

OBJECTIVES = ("pareto", "mnasnet")
BACKENDS = ("optuna", "ray")
# the built-in data set's input channels and classes, known without loading it: its budgets are checked exactly
# before anything is loaded (tests/search/test_search_checks.py keeps this equal to what nas.data loads)
BUILTIN_IO = {"digits": (1, 10)}
# the cheapest input a data set can have: a budget no architecture meets even then is refused before loading data
CHEAPEST_IO = (1, 1)
_NAME_PART = re.compile(r"[^A-Za-z0-9._+=@-]")


@dataclass(frozen=True)
class SearchRequest:
    """Everything `nas search` was asked for (the CLI's flags, as a value).

    Every field is checked when the request is made, each error one line naming the CLI flag, so a bad value is
    refused before anything is loaded, trained or created (the checks of `nas.checks`).
    """

    budget: str = "100MFLOPs"
    latency: str | None = None
    device: str = "kernels"
    table: str | None = None
    space: str = ss.DEFAULT_SPACE
    phi: float = 0.0
    data: str = "digits"
    trials: int | None = None
    sampler: str = "tpe"
    objective: str = "pareto"
    backend: str = "optuna"
    address: str | None = None
    workers: int = 2
    storage: str | None = None
    study: str | None = None
    resume: bool = False
    finalize: bool = True
    quick: bool = False
    seed: int = 0
    out: str = "results"
    threads: int = 2
    supernet_epochs: tuple[int, int, int, int] | None = None  # None: the default (or --quick) recipe
    train_images: int | None = None  # a seeded, class-stratified subset of the training split (--quick: 512)
    val_images: int | None = None  # likewise for the validation split that scores the trials
    pretrained: bool = True  # load a packaged supernet whose cache key matches, instead of training it
    verify: int | None = None  # candidates fine-tuned before choosing (None: VERIFY_CANDIDATES, 1 with --quick)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:  # the checked, converted value (a frozen dataclass)
            object.__setattr__(self, name, value)

        put("budget", checks.budget("--budget", self.budget))
        if self.latency is not None:
            put("latency", checks.latency("--latency", self.latency))
        put("space", _one_of("--space", self.space, sorted(ss.SPACES)))
        put("phi", checks.phi("--phi", self.space, self.phi))
        put("device", checks.device("--device", self.device))
        if self.table is not None:
            table = Path(str(self.table)).expanduser()
            if not table.is_file():
                raise ValueError(f"--table: {str(self.table)!r} " + ("is a folder, expected a latency table file"
                                                                     if table.is_dir() else "does not exist"))
            put("table", str(self.table))
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"--data: expected 'digits' or a dataset path, got {self.data!r}")
        for name, flag in (("trials", "--trials"), ("train_images", "--train-images"),
                           ("val_images", "--val-images"), ("verify", "--verify")):
            if getattr(self, name) is not None:
                put(name, checks.positive_int(flag, getattr(self, name)))
        put("sampler", _one_of("--sampler", self.sampler, SAMPLERS))
        put("objective", _one_of("--objective", self.objective, OBJECTIVES))
        put("backend", _one_of("--backend", self.backend, BACKENDS))
        put("workers", checks.positive_int("--workers", self.workers))
        put("threads", checks.positive_int("--threads", self.threads, 1024))
        put("seed", checks.seed("--seed", self.seed))
        for name in ("resume", "finalize", "quick", "pretrained"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"--{name}: expected True or False, got {getattr(self, name)!r}")
        if self.address is not None and self.backend != "ray":
            raise ValueError(f"--address: a Ray cluster address needs --backend ray, got --backend {self.backend}")
        if self.study is not None:
            put("study", checks.plain_name("--study", self.study))
        if self.storage is not None:
            check_storage(str(self.storage))
        checks.output_dir("--out", self.out)
        if self.supernet_epochs is not None:
            put("supernet_epochs", checks.supernet_epochs("--supernet-epochs", self.supernet_epochs))
        if self.objective == "mnasnet" and self.target_budget() is None:
            raise ValueError("--objective: the MnasNet reward needs a latency target (--latency, or a --budget in "
                             "ms)")

    @property
    def n_trials(self) -> int:
        """Distinct architectures to evaluate (--trials; 60 by default, 12 with --quick)."""
        return self.trials if self.trials is not None else (12 if self.quick else 60)

    @property
    def n_verify(self) -> int:
        """Candidates fine-tuned before choosing (--verify; `VERIFY_CANDIDATES` by default, 1 with --quick)."""
        from nas.search.verify import VERIFY_CANDIDATES

        return self.verify if self.verify is not None else (1 if self.quick else VERIFY_CANDIDATES)

    def budgets(self) -> list[tuple[str, ss.Budget]]:
        """(flag, budget) of every budget asked for: --budget, and --latency when given."""
        out = [("--budget", ss.parse_budget(self.budget))]
        if self.latency:
            out.append(("--latency", ss.parse_budget(self.latency)))
        return out

    def target_budget(self) -> tuple[str, ss.Budget] | None:
        """The tightest latency budget (flag, budget), the MnasNet reward's target; None without one."""
        times = [(flag, b) for flag, b in self.budgets() if b.kind == "latency_ms"]
        return min(times, key=lambda fb: fb[1].value) if times else None

    def study_settings(self) -> dict[str, Any]:
        """The settings that define the study, by flag: what its trials' parameters and scores depend on.

        Stored with the study when it is created; continuing it (--resume, or a run of the same name) with any of
        them different is refused, naming each (`runner.check_study`). Free to differ: --trials (raise it to run
        more), --threads (only the floating-point summation order: supernet caches ignore it too), --backend,
        --workers, --address, --storage, --out, --resume, and --verify and --finalize, which act on the
        finished trials and are redone by each run.
        """
        from nas.data import DataSpec

        data = DataSpec.of(self.data).source  # a path resolved, so the same data under another name is the same
        return {
            "--budget": str(ss.parse_budget(self.budget)),
            "--latency": str(ss.parse_budget(self.latency)) if self.latency else None,
            "--device": self.device, "--table": str(Path(self.table).expanduser().resolve()) if self.table else None,
            "--space": self.space, "--phi": float(self.phi), "--data": data, "--sampler": self.sampler,
            "--objective": self.objective, "--seed": self.seed, "--quick": self.quick,
            "--supernet-epochs": list(self.supernet_epochs) if self.supernet_epochs else None,
            "--train-images": self.train_images, "--val-images": self.val_images, "--pretrained": self.pretrained,
        }

    def run_name(self) -> str:
        """Default study name: readable and specific to the settings that change the result (a short, plain folder
        name: budgets in canonical form, odd characters of a data set's file name replaced by '_')."""
        if self.study:
            return self.study
        data = Path(self.data).name if self.data != "digits" else "digits"
        parts = [self.space, data, str(ss.parse_budget(self.budget))]
        if self.latency:
            parts.append(f"lat{ss.parse_budget(self.latency)}")
        if self.phi:
            parts.append(f"phi{self.phi:g}")
        if self.device != "kernels":
            parts.append(self.device)
        if self.table:
            parts.append(f"table{Path(self.table).stem}")
        if self.objective != "pareto":
            parts.append(self.objective)
        parts += [self.sampler, f"s{self.seed}"]
        if self.supernet_epochs:
            parts.append("se" + "".join(map(str, self.supernet_epochs)))
        if self.train_images:
            parts.append(f"tr{self.train_images}")
        if self.val_images:
            parts.append(f"va{self.val_images}")
        if not self.pretrained:
            parts.append("scratch")
        if self.quick:
            parts.append("quick")
        name = "-".join(_NAME_PART.sub("_", p) for p in parts)
        if len(name) > 128:  # a long data set name: keep it readable and unique
            name = name[:119] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        return checks.plain_name("--study", name)


def _one_of(flag: str, value: Any, choices: Any) -> str:
    if value not in choices:
        raise ValueError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
    return value


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


def run_folder(request: SearchRequest) -> Path:
    """`--out`/<run name>, refused unless it resolves inside --out (a symlink pointing elsewhere, say)."""
    out = Path(request.out).expanduser()
    run_dir = out / request.run_name()
    if not run_dir.resolve().is_relative_to(out.resolve()) or run_dir.resolve() == out.resolve():
        raise ValueError(f"--study: the run folder {str(run_dir)!r} resolves to {str(run_dir.resolve())!r}, "
                         f"outside --out {str(out)!r}; pass another --study")
    return run_dir


def _limits(request: SearchRequest) -> tuple[Limits, float | None]:
    """The hard limits of the search, and the latency target of the MnasNet reward (the tightest latency budget).

    With --objective mnasnet the soft reward replaces the hard latency limit."""
    values: dict[str, float] = {}
    for _, b in request.budgets():
        values[b.kind] = min(values.get(b.kind, float("inf")), b.value)
    target = values.get("latency_ms")
    if request.objective == "mnasnet":
        values.pop("latency_ms", None)
    return Limits(macs=values.get("macs"), params=values.get("params"), latency_ms=values.get("latency_ms")), target


def check_budgets(request: SearchRequest, space: ss.SearchSpace, kinds: tuple[str, ...],
                  latency_ms: Callable[[ss.Arch], float] | None = None, where: str = "", note: str = "") -> None:
    """Refuse every budget of `kinds` that no architecture of `space` meets, naming its flag and the smallest
    reachable cost (`where` and `note` as in `search_spaces.check_reachable`, `where` for latency only). A latency
    budget is checked (with `latency_ms`) also as the MnasNet reward's target: a target nothing reaches means no
    more than such a limit."""
    costs: dict[str, Callable[[ss.Arch], float] | None] = {
        "macs": ss.count_macs, "params": lambda a: ss.count(a).params, "latency_ms": latency_ms}
    for flag, budget in request.budgets():
        cost = costs[budget.kind]
        if budget.kind in kinds and cost is not None:
            ss.check_reachable(space, budget, cost, name=flag, where=where if budget.kind == "latency_ms" else "",
                               note=note)


def check_before_data(request: SearchRequest) -> None:
    """The MAC and parameter budgets against the space before any data is loaded: exactly for the built-in data
    set (its channels and classes are known), else against the cheapest input (1 channel, 1 class), a lower
    bound of every data set's costs; `load_data_and_space` checks exactly once the data is in."""
    builtin = request.data.lower() in BUILTIN_IO and not Path(request.data).expanduser().exists()
    io = BUILTIN_IO[request.data.lower()] if builtin else CHEAPEST_IO
    note = "" if builtin else " even with 1 input channel and 1 class"
    check_budgets(request, ss.get_space(request.space, request.phi).with_io(*io), ("macs", "params"), note=note)


def _versions() -> dict[str, str]:
    import numpy
    import optuna
    import torch

    import nas

    return {"nas": nas.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "optuna": optuna.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


def search(request: SearchRequest, log: Any = print) -> dict[str, Any]:
    """Run the search the request describes; returns the summary written to `results/<run>/summary.json`.

    Each check that can refuse the run comes before the work it would waste, and the run folder and study are
    created only once all have passed: the name, store and study settings first; the MAC and parameter budgets
    before the data is loaded (`check_before_data`) and exactly once it is; a latency budget once the latency
    table is loaded or profiled; all before the supernet is trained. A run that fails before any trial completes
    removes the study, store file and run folder that it created, when they hold nothing else.
    """
    from nas.search.evaluate import build_evaluator, load_data_and_space, load_latency

    t_start = time.perf_counter()
    limits, target_ms = _limits(request)
    name = request.run_name()
    run_dir = run_folder(request)
    storage = request.storage or default_storage(run_dir)
    if "://" not in storage:
        repair_journal(storage, log)
    existed = check_study(storage, name, request.resume, request.study_settings())
    check_before_data(request)
    if request.backend == "ray":  # a cluster that cannot be joined says so before minutes of training
        connect_ray(request.address, request.workers)

    seconds: dict[str, float] = {}  # wall time of each stage, reported in summary.json
    data, space = load_data_and_space(request, limits.macs, log,
                                      check=lambda sp: check_budgets(request, sp, ("macs", "params")))
    if existed:
        check_compatible(storage, name, space, request.objective)
    # profile before training: right after the supernet's minutes of load on both cores, a 2-core VM ran the
    # kernels 1.4x slower for a while, and a table profiled then said so for every op (2026-12-03)
    t_table = time.perf_counter()
    predictor = load_latency(request, space, log)
    seconds["latency_table"] = time.perf_counter() - t_table
    latency_ms = predictor.predict_ms
    check_budgets(request, space, ("latency_ms",), latency_ms,
                  where=f" on device {request.device}" + (f" (table {request.table})" if request.table else ""))

    settings = SearchSettings(space=space, limits=limits, trials=request.n_trials, sampler=request.sampler,
                              objective=request.objective, target_ms=target_ms, study_name=name,
                              storage=storage, seed=request.seed, identity=request.study_settings())
    before = _Existing(run_dir=run_dir.exists(), store=store_exists(storage), study=existed)
    try:
        evaluator = build_evaluator(request, data, space, log)
        seconds["data_and_supernet"] = time.perf_counter() - t_start - seconds["latency_table"]
        evaluator.latency_ms = latency_ms
        log(f"search {settings.study_name}: {request.n_trials} trials, sampler {request.sampler}, backend "
            f"{request.backend}, limits {_describe(limits)}, study in {storage}")
        t_search = time.perf_counter()
        study = _run_trials(request, settings, evaluator, latency_ms, run_dir, log)
    except BaseException:
        _remove_if_unused(storage, name, run_dir, before, log)
        raise
    search_seconds = time.perf_counter() - t_search
    seconds["search"] = search_seconds
    t_report = time.perf_counter()

    df = report.trials_frame(study, settings, latency_ms)
    write_atomic(run_dir / "trials.csv", lambda tmp: df.to_csv(tmp, index=False))
    front = df[df["pareto"]].sort_values("latency_ms").copy()

    from nas.search.evaluate import measure_all
    from search_spaces.presets import width_scaled_baselines

    # MobileNetV2 / V3-Large width-scaled to the MAC budget at the data's input size; the front and they are
    # measured together, round-robin, so a burst of load slows all alike
    front_archs = [ss.decode(a) for a in front["arch"]]
    scaled = width_scaled_baselines(limits.macs, space.largest()) if limits.macs else {}
    to_measure = front_archs + list(scaled.values())
    measured = dict(zip((a.hash() for a in to_measure), measure_all(to_measure, request), strict=True))
    front["measured_ms"] = [measured[a.hash()] for a in front_archs]
    write_atomic(run_dir / "pareto.csv", lambda tmp: front.to_csv(tmp, index=False))
    baselines = report.baselines_frame(scaled, latency_ms, lambda a: measured[a.hash()])
    if len(baselines):
        write_atomic(run_dir / "baselines.csv", lambda tmp: baselines.to_csv(tmp, index=False))
    report.plot_pareto(df, run_dir / "pareto.png", f"{settings.study_name}: accuracy vs latency "
                       f"({request.device})", baselines=baselines, measured=front)
    seconds["report"] = time.perf_counter() - t_report

    # the choice: with more than one candidate, or to finalize it, the candidates are fine-tuned and the best
    # fine-tuned validation accuracy wins (nas.search.verify); else the most accurate trial
    model = metrics = verified = None
    if request.n_verify > 1 or request.finalize:
        from nas.search.verify import pick_candidates, verify

        t_verify = time.perf_counter()
        candidates = pick_candidates(df, request.n_verify)
        log(f"verify: {len(candidates)} candidate(s) spread over the latency range, each fine-tuned from its "
            "supernet weights; the best fine-tuned val accuracy is chosen")
        verified, model, metrics = verify(candidates, evaluator, request, run_dir / "verify", log)
        best = df[df["trial"] == int(verified.loc[verified["chosen"], "trial"].iloc[0])].iloc[0].copy()
        best["verified_val_acc"] = metrics["val_acc"]
        seconds["verify"] = time.perf_counter() - t_verify
    else:
        best = report.choose(df)
    best_arch = ss.decode(best["arch"])
    write_atomic(run_dir / "best.json", lambda tmp: Path(tmp).write_text(best_arch.to_json(indent=2)))
    write_atomic(run_dir / "best.txt", lambda tmp: Path(tmp).write_text(str(best_arch) + "\n"))

    summary: dict[str, Any] = {
        "run": settings.study_name, "command": " ".join(sys.argv), "request": asdict(request),
        "versions": _versions(), "limits": asdict(limits), "trials": int(df["duplicate_of"].isna().sum()),
        "duplicates": int(df["duplicate_of"].notna().sum()),
        "search_seconds": round(search_seconds, 1),
        "best": {k: None if v is pd.NA else v.item() if hasattr(v, "item") else v for k, v in best.items()},
        "pareto_size": int(len(front)),
        "supernet": {"key": evaluator.supernet_key, "pretrained": evaluator.supernet_pretrained},
        "baselines": baselines.drop(columns="arch").to_dict("records") if len(baselines) else [],
        "verify": verified.drop(columns="arch").to_dict("records") if verified is not None else [],
    }
    if request.finalize:
        from nas.search.evaluate import finalize_best

        t_final = time.perf_counter()
        summary["finalized"] = finalize_best(best_arch, model, metrics, evaluator.subnet.data, request, run_dir, log)
        seconds["finalize"] = time.perf_counter() - t_final
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_atomic(run_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    _print_summary(front, summary, run_dir, log)
    return summary


@dataclass(frozen=True)
class _Existing:
    """What was there before this run created anything: what a failed run may remove is what it added."""

    run_dir: bool
    store: bool
    study: bool


def _run_trials(request: SearchRequest, settings: SearchSettings, evaluator: Any,
                latency_ms: Callable[[ss.Arch], float], run_dir: Path, log: Any) -> Any:
    """The trials stage on the request's backend; the study."""
    if request.backend == "ray":
        return run_ray(settings, evaluator, latency_ms, resume=request.resume, address=request.address,
                       workers=request.workers, storage_path=str((run_dir / "ray").resolve()), log=log)
    from tqdm import tqdm

    bar = tqdm(total=request.n_trials, desc="search", unit="trial")

    def progress(study: Any, evaluated: int) -> None:
        bar.n = evaluated
        best = max((t.values[0] for t in study.best_trials), default=float("nan"))
        bar.set_postfix_str(f"best acc {best:.4f}")
        bar.refresh()

    try:
        return run_optuna(settings, evaluator, latency_ms, resume=request.resume, progress=progress,
                          log=lambda text: bar.write(text))
    finally:
        bar.close()


def _remove_if_unused(storage: str, name: str, run_dir: Path, before: _Existing, log: Any) -> None:
    """After a run failed before any trial completed: remove the study it created, then the store file and the
    run folder if it created them and they hold nothing else, so a corrected rerun starts clean (not "already
    exists; pass --resume"). A problem here is reported, never raised over the failure itself."""
    import optuna
    from optuna.trial import TrialState

    try:
        if not before.study and study_exists(storage, name):
            store = make_storage(storage)
            trials = store.get_all_trials(store.get_study_id_from_name(name), deepcopy=False)
            if any(t.state == TrialState.COMPLETE for t in trials):
                return
            optuna.delete_study(study_name=name, storage=store)
            file = store_file(storage)
            if not before.store and file is not None and not store.get_all_studies():
                file.unlink(missing_ok=True)
        if not before.run_dir and run_dir.is_dir():
            shutil.rmtree(run_dir / "ray", ignore_errors=True)  # Ray Tune's records of this run's trial-less round
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
        log(f"warning: could not remove what the failed run created ({exc})")


def _describe(limits: Limits) -> str:
    parts = []
    if limits.macs:
        parts.append(f"{limits.macs / 1e6:g}M MACs")
    if limits.params:
        parts.append(f"{limits.params / 1e6:g}M params")
    if limits.latency_ms:
        parts.append(f"{limits.latency_ms:g} ms")
    return ", ".join(parts) or "none"


def _print_summary(front: Any, summary: dict[str, Any], run_dir: Path, log: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pareto front of {summary['run']} ({summary['trials']} trials)")
    for col in ("trial", "val acc", "pred ms", "meas ms", "MMACs", "Mparams", "arch"):
        table.add_column(col)
    for _, r in front.iterrows():
        table.add_row(str(r["trial"]), f"{r['val_acc']:.4f}", f"{r['latency_ms']:.3f}", f"{r['measured_ms']:.3f}",
                      f"{r['macs'] / 1e6:.1f}", f"{r['params'] / 1e6:.3f}", r["arch_hash"])
    Console(file=sys.stdout).print(table)
    if len(summary["verify"]) > 1:
        table = Table(title="Verified candidates (fine-tuned from the supernet; the best val acc is chosen)")
        for col in ("trial", "supernet val acc", "fine-tuned val acc ± se", "pred ms", "MMACs", "arch", "chosen"):
            table.add_column(col)
        for r in summary["verify"]:
            table.add_row(str(r["trial"]), f"{r['supernet_val_acc']:.4f}",
                          f"{r['verified_val_acc']:.4f} ± {r['val_se']:.4f}",
                          f"{r['latency_ms']:.3f}", f"{r['macs'] / 1e6:.1f}", r["arch_hash"], "*" * r["chosen"])
        Console(file=sys.stdout).print(table)
    best = summary["best"]
    verified = f", fine-tuned {best['verified_val_acc']:.4f}" if "verified_val_acc" in best else ""
    log(f"chosen: {best['arch']}\n  supernet val acc {best['val_acc']:.4f}{verified}, predicted "
        f"{best['latency_ms']:.3f} ms, {best['macs'] / 1e6:.1f}M MACs, {best['params'] / 1e6:.3f}M params")
    if "finalized" in summary:
        log(f"finalized: {json.dumps(summary['finalized'])}")
    files = "trials.csv pareto.csv pareto.png best.json best.txt summary.json"
    log(f"outputs in {run_dir}/: {files}" + (" verify/verify.csv" if summary["verify"] else ""))
