"""Data-parallel supernet training on Ray Train: `train_supernet_ray`, the same supernet and cache as `train_supernet`.

`workers` processes (Ray Train's `TorchTrainer`; its process group is gloo on the CPU, NCCL on GPUs) each build
the supernet from the same seed and walk the same global batches in the same order; worker r trains on the r-th
contiguous slice of every batch and the gradients are averaged over the workers once per step, after the sandwich
rule's backward passes (`nas.supernet.training.Shard`). The step is the single-process one
(`nas.supernet.training._train_step`), so the averaged gradient is the 1-worker gradient of the whole batch up to
batch norm: each worker normalizes with its own slice's statistics (per-worker BN; the elastic batch norm slices
its parameters per sub-network, which `SyncBatchNorm` cannot do), and the running statistics are averaged over the
workers after each epoch. Every worker draws the same sub-networks (`random.Random(seed/epoch)`).

Checkpoints go through Ray Train: after each epoch rank 0 writes the epoch's cache files (`_save_cache`'s format)
into a temporary folder and reports it; Ray Train stores it under `<cache folder>/ray/` and a worker group
restarted after a failure (up to `MAX_FAILURES` times) resumes from it (`ray.train.get_checkpoint`). When the run
ends, or when it is started again after its driver was killed, the newest reported epoch is copied into the cache
folder (`adopt_checkpoints`, which the single-process `train_supernet` runs too), so nothing is lost and a 1-worker
run resumes a 2-worker cache and vice versa. On a cluster of several machines, --out must be on storage all of
them share (Ray Train's storage requirement); the loopback test cluster and an embedded Ray share one disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import nas.supernet.pretrained as _pretrained
import search_spaces as ss
from nas.backend import CPU, TrainBackend
from nas.cores import fair_threads
from nas.data import DataSource, Splits
from nas.supernet.model import Supernet
from nas.supernet.training import (
    DEFAULT_ROOT,
    RAY_STORAGE,
    STATE_FILE,
    Shard,
    SupernetCacheError,
    SupernetRecipe,
    SupernetRun,
    _load_model,
    _read_cache,
    _save_cache,
    _schedule,
    adopt_checkpoints,
    initial_state,
    log_epoch,
    prepare_cache,
    run_epochs,
)
from nas.train import as_source

MAX_FAILURES = 3  # worker-group restarts (a killed or crashed worker) before the run fails


def train_supernet_ray(space: ss.SearchSpace, splits: Splits | DataSource, recipe: SupernetRecipe,
                       seed: int = 0, root: str | os.PathLike[str] = DEFAULT_ROOT, progress: bool = True,
                       pretrained: str | os.PathLike[str] | None = _pretrained.PACKAGED, backend: TrainBackend = CPU,
                       workers: int = 2) -> SupernetRun:
    """Train (or resume, or load) the supernet of `space` on `splits` as `train_supernet` does, data-parallel over
    `workers` Ray Train workers (each on `backend`'s device type and precision, `recipe.threads` torch threads).

    Ray must be connected first (`nas.search.runner.connect_ray`: a cluster's --address, or an embedded local
    Ray). The cache folder under `root` is the one `train_supernet` uses, in its format; the supernet comes back
    on the CPU. Unlike `train_supernet` there is no per-epoch callback: the epochs run in the workers.
    """
    if workers < 1:
        raise ValueError(f"--train-workers: expected a positive number of workers, got {workers}")
    if recipe.batch_size < workers:
        raise ValueError(f"--train-workers: {workers} workers split each batch of {recipe.batch_size} images; use "
                         f"at most {recipe.batch_size} workers or a larger batch")
    data = as_source(splits)  # in memory, or streamed from disk
    space, key, path = prepare_cache(space, data, recipe, seed, root)
    total = len(_schedule(recipe))
    net, state = initial_state(space, key, path, seed, pretrained, total)
    done = state["epoch"] if state is not None else 0
    if done < total:
        if progress:
            print(f"supernet {key}: {f'resuming at epoch {done + 1}' if done else 'starting at epoch 1'} of {total} on "
                  f"{workers} Ray Train workers ({backend.device_type}, {backend.precision}); checkpoints under "
                  f"{path / RAY_STORAGE}")
        _fit(data, space, key, path, recipe, seed, backend, workers, state is not None)
        state = _read_cache(path)
        if state is None:
            raise SupernetCacheError(f"{path}: the distributed run ended without a checkpoint")
        net = Supernet(space)
        _load_model(net, state, path)
        if progress:
            for record in state["history"][done:]:
                log_epoch(record, total)
    history = state["history"] if state is not None else []
    return SupernetRun(net.eval(), path, len(history), history, key, total,
                       Path(state["pretrained"]) if state and state.get("pretrained") else None)


def _fit(data: DataSource, space: ss.SearchSpace, key: str, path: Path, recipe: SupernetRecipe, seed: int,
         backend: TrainBackend, workers: int, resume: bool) -> None:
    """Run the remaining epochs on Ray Train and copy the last reported one into the cache folder `path`."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = path / RAY_STORAGE
    # its newest epoch is in the cache now (initial_state adopted it): a fresh run starts from the cache, never
    # from an older epoch of a run the cache has since moved past
    shutil.rmtree(storage, ignore_errors=True)
    # a fresh run starts from the cache folder (None: from the seed); a restarted worker group from the run's last
    # reported epoch. (Train V2 has no resume_from_checkpoint: the workers read the folder, on storage they share.)
    config = {"splits": ray.put(data.splits), "space": space, "key": key, "recipe": recipe, "seed": seed,
              "precision": backend.precision, "cuda": backend.is_cuda, "start": str(path.resolve()) if resume else None}
    trainer = TorchTrainer(
        _worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=backend.is_cuda),
        run_config=RunConfig(name=key, storage_path=str(storage.resolve()),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        adopt_checkpoints(path)
        raise RuntimeError(f"supernet {key}: distributed training failed after {MAX_FAILURES} worker restarts "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); the last finished "
                           f"epoch is kept in {path}, and running the command again resumes from it") from exc
    adopt_checkpoints(path)
    shutil.rmtree(storage, ignore_errors=True)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the supernet from the seed, loaded from the run's checkpoint (or the cache it started
    from), trained on this worker's slices of every batch; rank 0 reports each epoch's files as a checkpoint."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    recipe: SupernetRecipe = config["recipe"]
    space: ss.SearchSpace = config["space"]
    key, seed = config["key"], config["seed"]
    # the GPU Ray assigned this worker (use_gpu); a CPU run stays on the CPU even on a node with GPUs
    device = str(ray.train.torch.get_device()) if config["cuda"] else "cpu"
    backend = TrainBackend(device, config["precision"])
    data = as_source(ray.get(config["splits"]))  # streamed splits read the same files on each worker
    checkpoint = ray.train.get_checkpoint()
    with fair_threads(recipe.threads), \
            (checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(config["start"])) \
            as folder:
        torch.manual_seed(seed)
        net = Supernet(space)
        state = None
        if folder is not None:
            state = _read_cache(Path(folder))
            if state is None or state["key"] != key:
                raise SupernetCacheError(f"{folder}: not a checkpoint of supernet {key} (no {STATE_FILE} or "
                                         "another key)")
            _load_model(net, state, Path(folder))

        def commit(net: Supernet, opt: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler,
                   history: list[dict]) -> None:
            metrics = {"epoch": len(history), "loss": history[-1]["loss"]}
            if not shard.first:
                ray.train.report(metrics)
                return
            with tempfile.TemporaryDirectory(prefix="supernet-") as tmp:
                _save_cache(Path(tmp), net.state_dict(), opt, len(history), history, space, key, None, scaler)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

        run_epochs(net, state, Path(folder) if folder is not None else Path("."), data, space, recipe, seed,
                   backend, False, shard, commit)
