"""Verify the search's choice by training: fine-tune a few candidates spread over the latency range, keep the best.

A short supernet scores its sub-networks nearly flat on a harder dataset (Fashion-MNIST, 5000 images: largest 0.824,
smallest 0.828 val), so the most accurate trial is close to a random pick among sizes and the search never learns
that spending the budget pays. Each candidate here is the most accurate trial of one band of predicted latency;
all are fine-tuned from their supernet weights with the recipe the chosen network gets anyway (`evaluate.finetune`),
and the one with the best fine-tuned validation accuracy wins. The winner's fine-tuned weights go on to finalize,
so verification costs the fine-tunes of the other candidates. Each fine-tuned candidate is stored in the run folder
as it finishes, so an interrupted run resumes without training it again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

import search_spaces as ss
from nas.io import write_atomic
from nas.search.report import ranked

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


def verify(candidates: pd.DataFrame, evaluator: Any, request: Any, store: Path,
           log: Callable[[str], None]) -> tuple[pd.DataFrame, Any, dict[str, Any]]:
    """Fine-tune every candidate (rows of `pick_candidates`) as the chosen network is (`evaluate.finetune`); the
    table of results (`store`/verify.csv, one row per candidate, winner marked), the winner's model and metrics.

    The winner has the best fine-tuned validation accuracy (ties: the lower predicted latency); the test split
    plays no part in the choice. Fine-tuned candidates are kept in `store`/<supernet key>-<recipe hash>/, so an
    interrupted run loads them instead of training them again (and a changed recipe trains them anew).
    """
    from safetensors.torch import load_file, save_file

    from nas.search.evaluate import finetune, finetune_recipe
    from nas.train import recipe_key

    recipe = finetune_recipe(request)
    done = store / f"{evaluator.supernet_key}-{recipe_key(recipe)}"

    n_val = len(evaluator.subnet.data.splits.val)
    models: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for i, (_, c) in enumerate(candidates.iterrows()):
        arch = ss.decode(c["arch"])
        weights, meta = done / f"{arch.hash()}.safetensors", done / f"{arch.hash()}.json"
        if weights.exists() and meta.exists():
            metrics = json.loads(meta.read_text())
            model = ss.build(arch)
            model.load_state_dict(load_file(str(weights)))
            model.eval()
            log(f"verify {i + 1}/{len(candidates)}: {arch.hash()} ({c['macs'] / 1e6:.1f}M MACs) loaded from {done}")
        else:
            log(f"verify {i + 1}/{len(candidates)}: fine-tuning {arch.hash()} ({c['macs'] / 1e6:.1f}M MACs, "
                f"{c['latency_ms']:.3f} ms predicted, supernet val {c['val_acc']:.4f}) for {recipe.epochs} epochs")
            model, metrics = finetune(arch, evaluator, request)
            metrics = {k: v for k, v in metrics.items() if k != "history"}
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            write_atomic(weights, lambda tmp, state=state: save_file(state, tmp))
            write_atomic(meta, lambda tmp, m=metrics: Path(tmp).write_text(json.dumps(m, indent=2)))
        models[arch.hash()] = (model, metrics)
        rows.append({"trial": int(c["trial"]), "arch_hash": arch.hash(), "macs": c["macs"], "params": c["params"],
                     "latency_ms": c["latency_ms"], "supernet_val_acc": c["val_acc"],
                     "verified_val_acc": metrics["val_acc"],
                     # the binomial standard error of that accuracy on the val split: candidates closer than
                     # this are not told apart by the choice (seen on Fashion-MNIST, 1000 val images: 0.010)
                     "val_se": math.sqrt(metrics["val_acc"] * (1 - metrics["val_acc"]) / n_val),
                     "val_images": n_val, "finetune_seconds": metrics.get("wall_s"),
                     "arch": c["arch"]})
        log(f"  fine-tuned val {metrics['val_acc']:.4f}")
    table = pd.DataFrame(rows)
    order = ranked(table, "verified_val_acc")
    table["chosen"] = table.index == order.index[0]
    first = order.iloc[0]
    if len(order) > 1 and first["verified_val_acc"] - order.iloc[1]["verified_val_acc"] < first["val_se"]:
        log(f"verify: the winner leads the next candidate by less than one standard error of its val accuracy "
            f"({first['val_se']:.4f} on {n_val} images), so the val split does not tell them apart; more val "
            "images (--val-images) would")
    write_atomic(store / "verify.csv", lambda tmp: table.to_csv(tmp, index=False))
    model, metrics = models[first["arch_hash"]]
    return table, model, metrics
