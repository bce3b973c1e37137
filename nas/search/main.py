"""`search(plan)`: the whole `nas search` job, from data and budget to a chosen, finalized network, as a sequence
of stages (`nas.search.plan` builds the plan from the request once; each stage takes the typed pieces it needs):

prepare data and space -> latency model -> supernet (the trial scorer) -> trials -> report -> choice (verify)
-> finalize -> summary.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

import search_spaces as ss
from nas.io import write_atomic
from nas.search.finalize_stage import finalize_chosen
from nas.search.latency import latency_predictor, measure_all
from nas.search.plan import SearchPlan, StudyPlan
from nas.search.prepare import check_before_data, check_budgets, prepare
from nas.search.report import Front, trials_frame, write_report
from nas.search.runner import (
    Limits,
    SearchSettings,
    check_compatible,
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
from nas.search.scoring import TrialScorer, build_scorer
from nas.search.verify import Choice, choose_network

Log = Callable[[str], None]


def search(plan: SearchPlan, log: Log = print) -> dict[str, Any]:
    """Run the search `plan` describes; returns the summary written to `<run folder>/summary.json`.

    Each check that can refuse the run comes before the work it would waste, and the run folder and study are
    created only once all have passed: the name, store and study settings first; the MAC and parameter budgets
    before the data is loaded (`check_before_data`) and exactly once it is; a latency budget once the latency
    table is loaded or profiled; all before the supernet is trained. A run that fails before any trial completes
    removes the study, store file and run folder that it created, when they hold nothing else.
    """
    t_start = time.perf_counter()
    study = plan.study
    seconds: dict[str, float] = {}  # wall time of each stage, reported in summary.json
    existed = _check_study(plan, log)
    prepared = prepare(plan.data, plan.space, plan.budgets, log, plan.loading)
    if existed:
        check_compatible(study.storage, study.name, prepared.space, study.objective)
    # profile before training: right after the supernet's minutes of load a small VM runs the kernels slower for a
    # while, and a table profiled then says so for every op (benchmarks/RESULTS_latency.md)
    t = time.perf_counter()
    latency_ms = latency_predictor(plan.latency, prepared.space, log).predict_ms
    seconds["latency_table"] = time.perf_counter() - t
    check_budgets(plan.budgets, prepared.space, ("latency_ms",), latency_ms, where=plan.latency.where())
    settings = study.settings(prepared.space)
    before = _Existing(run_dir=study.run_dir.exists(), store=store_exists(study.storage), study=existed)
    try:
        scorer = build_scorer(plan.supernet, prepared.data, prepared.space, latency_ms, plan.backend, log,
                              study.address)
        seconds["data_and_supernet"] = time.perf_counter() - t_start - seconds["latency_table"]
        log(f"search {study.name}: {study.trials} trials, sampler {study.sampler}, backend {study.backend}, limits "
            f"{_describe(study.limits)}, study in {study.storage}")
        t = time.perf_counter()
        finished = _run_trials(study, settings, scorer, log)
    except BaseException:
        _remove_if_unused(study.storage, study.name, study.run_dir, before, log)
        raise
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    trials = trials_frame(finished, settings, latency_ms)
    front = _report(plan, trials, prepared.space, latency_ms)
    seconds["report"] = time.perf_counter() - t
    t = time.perf_counter()
    choice = choose_network(trials, scorer, plan.verify, plan.finetune if plan.fine_tunes else None, plan.backend,
                            study.run_dir / "verify", log)
    if choice.verified is not None:
        seconds["verify"] = time.perf_counter() - t
    _write_choice(choice, study.run_dir)
    summary = _summary(plan, trials, front, choice, scorer, seconds["search"])
    if plan.finalize is not None:
        t = time.perf_counter()
        summary["finalized"] = finalize_chosen(choice, scorer.subnet.data, plan.finalize, plan.finetune.threads,
                                               study.run_dir, log)
        seconds["finalize"] = time.perf_counter() - t
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_atomic(study.run_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    _print_summary(front.front, summary, study.run_dir, log)
    return summary


def _check_study(plan: SearchPlan, log: Log) -> bool:
    """The checks before anything is loaded: the store (a torn journal repaired), the study's name and settings,
    the MAC and parameter budgets, and the Ray cluster. Whether the study exists."""
    study = plan.study
    if "://" not in study.storage:
        repair_journal(study.storage, log)
    existed = check_study(study.storage, study.name, study.resume, study.identity)
    check_before_data(plan.data, plan.space, plan.budgets)
    if study.backend == "ray" or plan.backend.workers > 1:  # a cluster that cannot be joined says so before
        # minutes of training; an embedded Ray gets CPUs for the trials and for the training workers
        connect_ray(study.address, max(study.workers if study.backend == "ray" else 1, plan.backend.workers))
    return existed


def _report(plan: SearchPlan, trials: pd.DataFrame, space: ss.SearchSpace,
            latency_ms: Callable[[ss.Arch], float]) -> Front:
    """The report stage: the run folder's tables and plot, the front measured with MobileNetV2 / V3-Large
    width-scaled to the MAC budget at the data's input size."""
    from search_spaces.presets import width_scaled_baselines

    limits, device = plan.study.limits, plan.latency.device
    scaled = width_scaled_baselines(limits.macs, space.largest()) if limits.macs else {}
    return write_report(trials, scaled, latency_ms, lambda archs: measure_all(archs, device, plan.latency.threads),
                        plan.study.run_dir, f"{plan.study.name}: accuracy vs latency ({device})")


def _write_choice(choice: Choice, run_dir: Path) -> None:
    write_atomic(run_dir / "best.json", lambda tmp: Path(tmp).write_text(choice.arch.to_json(indent=2)))
    write_atomic(run_dir / "best.txt", lambda tmp: Path(tmp).write_text(str(choice.arch) + "\n"))


def _summary(plan: SearchPlan, trials: pd.DataFrame, front: Front, choice: Choice, scorer: TrialScorer,
             search_seconds: float) -> dict[str, Any]:
    """What summary.json records of the run (the finalize stage and the timings are added to it)."""
    baselines, verified = front.baselines, choice.verified
    return {
        "run": plan.study.name, "command": " ".join(sys.argv), "request": plan.request,
        "versions": _versions(), "limits": asdict(plan.study.limits),
        "trials": int(trials["duplicate_of"].isna().sum()), "duplicates": int(trials["duplicate_of"].notna().sum()),
        "search_seconds": round(search_seconds, 1),
        "best": {k: None if v is pd.NA else v.item() if hasattr(v, "item") else v for k, v in choice.best.items()},
        "pareto_size": int(len(front.front)),
        "supernet": {"key": scorer.supernet_key, "pretrained": scorer.supernet_pretrained},
        # where the supernet, the trials' scoring and the fine-tunes ran: device, precision, hardware, workers
        "training": plan.backend.to_dict(),
        "baselines": baselines.drop(columns="arch").to_dict("records") if len(baselines) else [],
        "verify": verified.drop(columns="arch").to_dict("records") if verified is not None else [],
    }


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import nas

    return {"nas": nas.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "optuna": optuna.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


@dataclass(frozen=True)
class _Existing:
    """What was there before this run created anything: what a failed run may remove is what it added."""

    run_dir: bool
    store: bool
    study: bool


def _run_trials(study: StudyPlan, settings: SearchSettings, scorer: TrialScorer, log: Log) -> optuna.Study:
    """The trials stage on the study's backend; the study."""
    if study.backend == "ray":
        return run_ray(settings, scorer, scorer.latency_ms, resume=study.resume, address=study.address,
                       workers=study.workers, storage_path=str((study.run_dir / "ray").resolve()), log=log)
    from tqdm import tqdm

    bar = tqdm(total=study.trials, desc="search", unit="trial")

    def progress(study: optuna.Study, evaluated: int) -> None:
        bar.n = evaluated
        best = max((t.values[0] for t in study.best_trials), default=float("nan"))
        bar.set_postfix_str(f"best acc {best:.4f}")
        bar.refresh()

    try:
        return run_optuna(settings, scorer, scorer.latency_ms, resume=study.resume, progress=progress,
                          log=lambda text: bar.write(text))
    finally:
        bar.close()


def _remove_if_unused(storage: str, name: str, run_dir: Path, before: _Existing, log: Log) -> None:
    """After a run failed before any trial completed: remove the study it created, then the store file and the
    run folder if it created them and they hold nothing else, so a corrected rerun starts clean (not "already
    exists; pass --resume"). A problem here is reported, never raised over the failure itself."""
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
    if limits.peak_bytes:
        parts.append(f"{limits.peak_bytes / 1e3:g} KB peak activation memory")
    if limits.weight_bytes:
        parts.append(f"{limits.weight_bytes / 1e3:g} KB of int8 weights")
    return ", ".join(parts) or "none"


def _print_summary(front: pd.DataFrame, summary: dict[str, Any], run_dir: Path, log: Log) -> None:
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
