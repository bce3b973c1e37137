"""Verify the search's choice by training: fine-tune a few candidates spread over the latency range, keep the best.

A short supernet scores its sub-networks nearly flat on a harder dataset (Fashion-MNIST, 5000 images: largest 0.824,
smallest 0.828 val), so the most accurate trial is close to a random pick among sizes and the search never learns
that spending the budget pays. Each candidate here is the most accurate trial of one band of predicted latency;
all are fine-tuned from their supernet weights with the recipe the chosen network gets anyway (`finetune`),
and the one with the best fine-tuned validation accuracy wins. The winner's fine-tuned weights go on to finalize,
so verification costs the fine-tunes of the other candidates. Each fine-tuned candidate is stored in the run folder
as it finishes, so an interrupted run resumes without training it again. With training workers
(`--train-workers` above 1) the fine-tunes run in parallel as Ray tasks, up to that many at once, with the same
results (`finetune_parallel`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import search_spaces as ss
from nas.backend import TrainBackend
from nas.io import write_atomic
from nas.search.report import choose, ranked
from nas.search.scoring import TrialScorer
from nas.train import TrainRecipe, recipe_key, train_standalone

if TYPE_CHECKING:
    from torch import nn

    from nas.data import DataSource

VERIFY_CANDIDATES = 3  # default; 1 keeps the supernet's choice (the most accurate trial), fine-tuned


def pick_candidates(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Up to `k` trials spread over the predicted-latency range of `df` (a `trials_frame`): the range is cut into `k`
    equal-width bands and each band gives its most accurate trial (ties: the faster). The most accurate trial
    overall is always among them. One row per architecture, fastest first."""
    if k < 1:
        raise ValueError(f"verify: expected at least 1 candidate, got {k}")
    trials = ranked(df).drop_duplicates("arch_hash")
    lo, hi = trials["latency_ms"].min(), trials["latency_ms"].max()
    width = (hi - lo) / k
    band = ((trials["latency_ms"] - lo) // width).clip(upper=k - 1) if width > 0 else pd.Series(0, trials.index)
    # rows are sorted most accurate first, so the first row of each band is its best
    return trials.groupby(band.astype(int), sort=False).head(1).sort_values("latency_ms")


def verify(candidates: pd.DataFrame, scorer: TrialScorer, recipe: TrainRecipe, backend: TrainBackend, store: Path,
           log: Callable[[str], None]) -> tuple[pd.DataFrame, nn.Module, dict[str, Any]]:
    """Fine-tune every candidate (rows of `pick_candidates`) with `recipe` on `backend`, as the chosen network is
    (`finetune`); the table of results (`store`/verify.csv, one row per candidate, winner marked), the winner's
    model and metrics.

    The winner has the best fine-tuned validation accuracy (ties: the lower predicted latency); the test split
    plays no part in the choice. Fine-tuned candidates are kept in `store`/<supernet key>-<recipe hash>/, so an
    interrupted run loads them instead of training them again (and a changed recipe trains them anew).
    """
    from safetensors.torch import load_file, save_file

    done = store / f"{scorer.supernet_key}-{recipe_key(recipe)}"

    n_val = len(scorer.subnet.data.splits.val)
    archs = [ss.decode(c["arch"]) for _, c in candidates.iterrows()]
    finished: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for i, ((_, c), arch) in enumerate(zip(candidates.iterrows(), archs, strict=True)):
        weights, meta = done / f"{arch.hash()}.safetensors", done / f"{arch.hash()}.json"
        if weights.exists() and meta.exists():
            model = ss.build(arch)
            model.load_state_dict(load_file(str(weights)))
            finished[arch.hash()] = (model.eval(), json.loads(meta.read_text()))
            log(f"verify {i + 1}/{len(candidates)}: {arch.hash()} ({c['macs'] / 1e6:.1f}M MACs) loaded from {done}")

    def keep(arch: ss.Arch, model: nn.Module, metrics: dict[str, Any]) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "history"}
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        write_atomic(done / f"{arch.hash()}.safetensors", lambda tmp: save_file(state, tmp))
        write_atomic(done / f"{arch.hash()}.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        finished[arch.hash()] = (model, metrics)
        log(f"  {arch.hash()} fine-tuned val {metrics['val_acc']:.4f}")

    todo = [(i, c, arch) for i, ((_, c), arch) in enumerate(zip(candidates.iterrows(), archs, strict=True))
            if arch.hash() not in finished]
    parallel = backend.workers > 1 and len(todo) > 1
    for i, c, arch in todo:
        log(f"verify {i + 1}/{len(candidates)}: fine-tuning {arch.hash()} ({c['macs'] / 1e6:.1f}M MACs, "
            f"{c['latency_ms']:.3f} ms predicted, supernet val {c['val_acc']:.4f}) for {recipe.epochs} epochs")
        if not parallel:
            keep(arch, *finetune(arch, scorer, recipe, backend))
    if parallel:  # the training workers' resources: up to that many fine-tunes at once
        log(f"verify: {len(todo)} fine-tunes in parallel, up to {backend.workers} at once (Ray tasks)")
        finetune_parallel([arch for _, _, arch in todo], scorer, recipe, backend, keep)
    rows: list[dict[str, Any]] = []
    for (_, c), arch in zip(candidates.iterrows(), archs, strict=True):
        metrics = finished[arch.hash()][1]
        rows.append({"trial": int(c["trial"]), "arch_hash": arch.hash(), "macs": c["macs"], "params": c["params"],
                     "latency_ms": c["latency_ms"], "supernet_val_acc": c["val_acc"],
                     "verified_val_acc": metrics["val_acc"],
                     # the binomial standard error of that accuracy on the val split: candidates closer than
                     # this are not told apart by the choice (seen on Fashion-MNIST, 1000 val images: 0.010)
                     "val_se": math.sqrt(metrics["val_acc"] * (1 - metrics["val_acc"]) / n_val),
                     "val_images": n_val, "finetune_seconds": metrics.get("wall_s"),
                     "arch": c["arch"]})
    table = pd.DataFrame(rows)
    order = ranked(table, "verified_val_acc")
    table["chosen"] = table.index == order.index[0]
    first = order.iloc[0]
    if len(order) > 1 and first["verified_val_acc"] - order.iloc[1]["verified_val_acc"] < first["val_se"]:
        log(f"verify: the winner leads the next candidate by less than one standard error of its val accuracy "
            f"({first['val_se']:.4f} on {n_val} images), so the val split does not tell them apart; more val "
            "images (--val-images) would")
    write_atomic(store / "verify.csv", lambda tmp: table.to_csv(tmp, index=False))
    model, metrics = finished[first["arch_hash"]]
    return table, model, metrics


def finetune_parallel(archs: list[ss.Arch], scorer: TrialScorer, recipe: TrainRecipe, backend: TrainBackend,
                      store: Callable[[ss.Arch, nn.Module, dict[str, Any]], None]) -> None:
    """`finetune` each of `archs` as a Ray task (Ray connected: `nas.search.runner.connect_ray`), up to
    `backend.workers` at once, each with one CPU (or one GPU) and `recipe.threads` torch threads, as the
    sequential path runs them; `store(arch, model, metrics)` gets each as it finishes (in any order). The same
    code, data and initial weights as the sequential path, so the same results for the same seeds."""
    import ray

    data = ray.put(scorer.subnet.data)
    task = ray.remote(_finetune_task).options(num_cpus=1, num_gpus=1 if backend.is_cuda else 0)
    # a task's GPU is the first its process sees (Ray sets CUDA_VISIBLE_DEVICES)
    remote_backend = replace(backend, device="cuda:0") if backend.is_cuda else backend
    waiting, running = list(archs), {}
    while waiting or running:
        while waiting and len(running) < backend.workers:
            arch = waiting.pop(0)
            # the initial weights are extracted here, as `finetune` does, and travel with the task
            running[task.remote(arch, data, scorer.subnet.model(arch), recipe, remote_backend)] = arch
        ready, _ = ray.wait(list(running), num_returns=1)
        arch = running.pop(ready[0])
        model, metrics = ray.get(ready[0])
        store(arch, model, {**metrics, "backend": backend.to_dict()})


def _finetune_task(arch: ss.Arch, data: DataSource, init: nn.Module, recipe: TrainRecipe,
                   backend: TrainBackend) -> tuple[nn.Module, dict[str, Any]]:
    """A Ray task: `train_standalone` of one verify candidate (what `finetune` runs in the driver)."""
    return train_standalone(arch, data, recipe, init=init, backend=backend)


def finetune(arch: ss.Arch, scorer: TrialScorer, recipe: TrainRecipe,
             backend: TrainBackend) -> tuple[nn.Module, dict[str, Any]]:
    """`arch` fine-tuned with `recipe` on `backend` from its supernet weights (batch norm recalibrated first: the shared
    statistics of a supernet fit no single sub-network); the model and the metrics of
    `nas.train.train_standalone`."""
    return train_standalone(arch, scorer.subnet.data, recipe, init=scorer.subnet.model(arch), backend=backend)


@dataclass(frozen=True)
class Choice:
    """The search's chosen network: its trial's row, and, when candidates were fine-tuned, the fine-tuned model,
    its metrics and the table of candidates."""

    best: pd.Series  # a row of `trials_frame`, with `verified_val_acc` when fine-tuned
    arch: ss.Arch
    model: nn.Module | None = None
    metrics: dict[str, Any] | None = None
    verified: pd.DataFrame | None = None


def choose_network(trials: pd.DataFrame, scorer: TrialScorer, candidates: int, recipe: TrainRecipe | None,
                   backend: TrainBackend, store: Path, log: Callable[[str], None]) -> Choice:
    """The choice: with a fine-tuning `recipe` (given when there is more than one candidate, or to finalize the
    chosen one), up to `candidates` trials are fine-tuned on `backend` and the best fine-tuned validation accuracy
    wins (`verify`, its records in `store`); without one, the most accurate trial."""
    if recipe is None:
        best = choose(trials)
        return Choice(best, ss.decode(best["arch"]))
    picked = pick_candidates(trials, candidates)
    log(f"verify: {len(picked)} candidate(s) spread over the latency range, each fine-tuned from its "
        "supernet weights; the best fine-tuned val accuracy is chosen")
    verified, model, metrics = verify(picked, scorer, recipe, backend, store, log)
    best = trials[trials["trial"] == int(verified.loc[verified["chosen"], "trial"].iloc[0])].iloc[0].copy()
    best["verified_val_acc"] = metrics["val_acc"]
    return Choice(best, ss.decode(best["arch"]), model, metrics, verified)
