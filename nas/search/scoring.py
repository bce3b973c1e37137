"""How the search scores a trial: its supernet sub-network's validation accuracy and its predicted latency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import search_spaces as ss
from nas.backend import TrainBackend
from nas.cores import fair_threads
from nas.data import DataSource
from nas.supernet import SubnetEvaluator, SupernetRun, train_supernet
from nas.supernet.pretrained import PACKAGED

if TYPE_CHECKING:
    from nas.search.plan import SupernetPlan


@dataclass
class TrialScorer:
    """Scores an architecture: validation accuracy of its supernet sub-network and its predicted latency.

    A plain picklable object, so Ray Tune ships it (supernet weights and cached tensors, or the streamed data's
    file locations, included) to workers.
    """

    subnet: SubnetEvaluator
    latency_ms: Callable[[ss.Arch], float] | None = None
    supernet_key: str = ""  # the cache key of the supernet behind `subnet`: what a trial's accuracy depends on
    supernet_pretrained: bool = False  # loaded from the package's pretrained supernets, not trained in this run
    threads: int | None = None  # torch threads of a trial at most (None: the caller's count), see `nas.cores`

    def __call__(self, arch: ss.Arch) -> dict[str, float]:
        with fair_threads(self.threads):  # fewer while other processes keep the cores busy; restored afterwards
            acc = self.subnet(arch)
        lat = self.latency_ms(arch) if self.latency_ms is not None else float("nan")
        return {"val_acc": float(acc), "latency_ms": float(lat)}


def build_scorer(plan: SupernetPlan, data: DataSource, space: ss.SearchSpace,
                 latency_ms: Callable[[ss.Arch], float] | None, backend: TrainBackend,
                 log: Callable[[str], None], address: str | None = None) -> TrialScorer:
    """Train (or load from cache, or resume) the supernet of `space` on `data` and wrap it, with the latency
    predictor `latency_ms`, as the trial scorer; both on `backend` (its training workers on the Ray cluster at
    `address`, `train_search_supernet`)."""
    run = train_search_supernet(space, data, plan, backend, log, address)
    return TrialScorer(SubnetEvaluator(run.supernet, data, "val", calib_images=plan.recipe.calib_images,
                                       seed=plan.seed, backend=backend), latency_ms=latency_ms, supernet_key=run.key,
                       supernet_pretrained=run.pretrained is not None, threads=plan.threads)


def train_search_supernet(space: ss.SearchSpace, data: DataSource, plan: SupernetPlan, backend: TrainBackend,
                          log: Callable[[str], None], address: str | None = None) -> SupernetRun:
    """Train on `backend` (or load from `plan.root`/supernets, or resume, or load the packaged one) the supernet the
    search uses; `nas train supernet` calls this too, so the same settings give the same supernet. With
    `backend.workers` above 1 it trains data-parallel on Ray Train (joining the cluster at `address`, else an
    embedded local Ray), into the same cache."""
    root, pretrained = Path(plan.root) / "supernets", PACKAGED if plan.pretrained else None
    if backend.workers > 1:
        from nas.search.runner import connect_ray
        from nas.supernet.distributed import train_supernet_ray

        connect_ray(address, backend.workers)
        run = train_supernet_ray(space, data, plan.recipe, seed=plan.seed, root=root, pretrained=pretrained,
                                 backend=backend, workers=backend.workers)
    else:
        run = train_supernet(space, data, plan.recipe, seed=plan.seed, root=root, pretrained=pretrained,
                             backend=backend)
    log(f"supernet {run.key}: {run.epochs_done} epochs, cached in {run.path}")
    if run.pretrained is not None:
        log(f"  (pretrained: trained once with this space, data, recipe and seed and shipped with nas, "
            f"{run.pretrained.name}; --no-pretrained trains it here)")
    if not any(plan.recipe.epochs[1:]):
        # --quick's recipe: shrinking phases cost ~3x a largest-network epoch each and did not help at 512 images
        log("note: this supernet trained only its largest network, so the trials' sub-network accuracies are near "
            "chance and rank little; the fine-tuned chosen network's accuracy is the real figure (drop --quick for "
            "a supernet trained with progressive shrinking)")
    return run
