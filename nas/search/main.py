"""`search(request)`: the whole `nas search` job, from data and budget to a chosen, finalized network."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import search_spaces as ss
from nas.io import write_atomic
from nas.search import report
from nas.search.runner import Limits, SearchSettings, check_study, completed, run_optuna, run_ray


@dataclass(frozen=True)
class SearchRequest:
    """Everything `nas search` was asked for (the CLI's flags, as a value)."""

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
        for name in ("train_images", "val_images"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive number of images or None, got {v!r}")
        if self.verify is not None and (not isinstance(self.verify, int) or self.verify < 1):
            raise ValueError(f"verify: expected a positive number of candidates or None, got {self.verify!r}")

    @property
    def n_trials(self) -> int:
        return self.trials if self.trials is not None else (12 if self.quick else 60)

    @property
    def n_verify(self) -> int:
        from nas.search.verify import VERIFY_CANDIDATES

        return self.verify if self.verify is not None else (1 if self.quick else VERIFY_CANDIDATES)

    def run_name(self) -> str:
        """Default study name: readable and specific to the settings that change the result."""
        if self.study:
            return self.study
        data = Path(self.data).name if self.data != "digits" else "digits"
        parts = [self.space, data, self.budget.replace(" ", "")]
        if self.latency:
            parts.append(f"lat{self.latency}")
        parts += [self.sampler, f"s{self.seed}"]
        if self.supernet_epochs:
            parts.append("se" + "".join(map(str, self.supernet_epochs)))
        if self.train_images:
            parts.append(f"tr{self.train_images}")
        if self.val_images:
            parts.append(f"va{self.val_images}")
        if self.quick:
            parts.append("quick")
        return "-".join(parts)


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


def _limits(request: SearchRequest) -> tuple[Limits, float | None]:
    budgets = [ss.parse_budget(request.budget)]
    if request.latency:
        lat = ss.parse_budget(request.latency)
        if lat.kind != "latency_ms":
            raise ValueError(f"latency: expected a time such as '3ms', got {request.latency!r}")
        budgets.append(lat)
    values: dict[str, float] = {}
    for b in budgets:
        values[b.kind] = min(values.get(b.kind, float("inf")), b.value)
    target = values.get("latency_ms")
    if request.objective == "mnasnet":
        # MnasNet's soft reward replaces the hard latency limit
        values.pop("latency_ms", None)
    return Limits(macs=values.get("macs"), params=values.get("params"), latency_ms=values.get("latency_ms")), target


def _versions() -> dict[str, str]:
    import numpy
    import optuna
    import torch

    import nas

    return {"nas": nas.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "optuna": optuna.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


def search(request: SearchRequest, log: Any = print) -> dict[str, Any]:
    """Run the search the request describes; returns the summary written to `results/<run>/summary.json`."""
    from nas.search.evaluate import build_evaluator, load_data_and_space, load_latency

    t_start = time.perf_counter()
    limits, target_ms = _limits(request)
    run_dir = Path(request.out) / request.run_name()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = request.storage or default_storage(run_dir)
    check_study(storage, request.run_name(), request.resume)

    seconds: dict[str, float] = {}  # wall time of each stage, reported in summary.json
    data, space = load_data_and_space(request, limits.macs, log)
    # profile before training: right after the supernet's minutes of load on both cores, a 2-core VM ran the
    # kernels 1.4x slower for a while, and a table profiled then said so for every op (2026-12-03)
    t_table = time.perf_counter()
    predictor = load_latency(request, space, log)
    seconds["latency_table"] = time.perf_counter() - t_table
    evaluator = build_evaluator(request, data, space, log)
    seconds["data_and_supernet"] = time.perf_counter() - t_start - seconds["latency_table"]
    latency_ms = predictor.predict_ms
    if limits.macs:
        ss.check_reachable(space, ss.Budget("macs", limits.macs), ss.count_macs)
    if limits.params:
        ss.check_reachable(space, ss.Budget("params", limits.params), lambda a: ss.count(a).params)
    if limits.latency_ms:
        ss.check_reachable(space, ss.Budget("latency_ms", limits.latency_ms), latency_ms)

    settings = SearchSettings(space=space, limits=limits, trials=request.n_trials, sampler=request.sampler,
                              objective=request.objective, target_ms=target_ms, study_name=request.run_name(),
                              storage=storage, seed=request.seed)
    evaluator.latency_ms = latency_ms
    log(f"search {settings.study_name}: {request.n_trials} trials, sampler {request.sampler}, backend "
        f"{request.backend}, limits {_describe(limits)}, study in {storage}")
    t_search = time.perf_counter()
    if request.backend == "ray":
        study = run_ray(settings, evaluator, latency_ms, resume=request.resume, address=request.address,
                        workers=request.workers, storage_path=str((run_dir / "ray").resolve()))
    else:
        from tqdm import tqdm

        bar = tqdm(total=request.n_trials, desc="search", unit="trial")

        def progress(study: Any) -> None:
            bar.n = completed(study)
            best = max((t.values[0] for t in study.best_trials), default=float("nan"))
            bar.set_postfix_str(f"best acc {best:.4f}")
            bar.refresh()

        try:
            study = run_optuna(settings, evaluator, latency_ms, resume=request.resume, progress=progress)
        finally:
            bar.close()
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
        "versions": _versions(), "limits": asdict(limits), "trials": int(len(df)),
        "search_seconds": round(search_seconds, 1),
        "best": {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()},
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
