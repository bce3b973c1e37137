"""Progressive shrinking with in-place distillation, cached and resumable per (space, dataset, recipe, seed).

Phases (Once-for-All): the largest network, then elastic kernel (+ SE), elastic depth, elastic expansion and
width (channels sorted by importance first, no-expansion paths warm-started from the expanded ones).
Resolution is elastic in every shrinking phase. Each step follows the sandwich rule: the largest sub-network
learns from the labels, the smallest and `random_subnets` random ones from the labels plus the largest one's
(detached) predictions. After every epoch the cache folder `results/supernets/<key>/` gets, in this order,
`model-e<epoch>.safetensors` (the weights), `optimizer-e<epoch>.safetensors` (SGD momentum, only when the next
epoch continues the phase) and `state.json` (epoch, history, key, space, the two files' names and sha256), each
written atomically; then older epochs' files are removed. `state.json` is the commit point: a crash anywhere
leaves it naming a complete, earlier set. Nothing is pickled, so a planted or tampered cache cannot run code;
a reader refuses a missing, corrupt or mismatched file with one line naming it. Calling `train_supernet` again
resumes after the last finished epoch, or just loads the result when all epochs are done. A supernet shipped
with the package under the same key (`nas.supernet.pretrained`) is loaded instead of trained. Training runs on a
`nas.backend.TrainBackend` (device, precision), which is not part of the key: the cache holds CPU tensors, and a
supernet trained on a GPU resumes or loads on a CPU and vice versa.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import nas.supernet.pretrained as _pretrained
import search_spaces as ss
from nas.backend import CPU, TrainBackend
from nas.cores import fair_threads, tick
from nas.data import Batch, Splits, StreamDataset, TensorSplits, TrainBatches
from nas.errors import one_line
from nas.io import write_atomic
from nas.supernet.model import Supernet
from nas.supernet.subnet_eval import SubnetEvaluator
from nas.train import as_source, cosine_lr, kd_loss, make_optimizer, set_lr

PHASES = ("largest", "kernel", "depth", "width")
# bump when the supernet's parameters or the cache files change, so old caches are not loaded into a new layout
# (4: safetensors + state.json instead of a pickled checkpoint.pt)
FORMAT = 4
DEFAULT_ROOT = Path("results/supernets")
STATE_FILE = "state.json"
RAY_STORAGE = "ray"  # Ray Train's storage of a distributed run's checkpoints (nas.supernet.distributed)
OLD_CHECKPOINT = "checkpoint.pt"  # FORMAT <= 3: a pickle, never read (unpickling can run code)


class SupernetCacheError(ValueError):
    """A supernet cache file is missing, corrupt, inconsistent or in the old pickle format (one line naming it)."""


@dataclass(frozen=True)
class SupernetRecipe:
    """Progressive-shrinking schedule: epochs per phase (largest, kernel, depth, width) and the optimiser."""

    epochs: tuple[int, int, int, int] = (6, 3, 3, 6)
    lr: float = 0.05  # peak of the cosine schedule in the first phase
    lr_shrink: float = 0.02  # peak in each shrinking phase
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-5
    # sandwich rule: largest + smallest + this many random sub-networks per step; a tuple gives one count per
    # shrinking phase (kernel, depth, width)
    random_subnets: int | tuple[int, int, int] = 2
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    calib_images: int = 256  # for the validation probes of the largest, smallest and two random sub-networks
    threads: int = 2
    probe_each_epoch: bool = False  # probe after every epoch, not only at the end of each phase (~5 s a probe)
    # linear learning-rate warm-up over this fraction of each shrinking phase's steps: a phase's new sub-networks
    # start near chance with gradients 15-30x the largest one's, and at full rate they wreck the shared weights
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if len(self.epochs) != len(PHASES) or min(self.epochs) < 0:
            raise ValueError(f"epochs: expected {len(PHASES)} non-negative counts {PHASES}, got {self.epochs}")
        object.__setattr__(self, "epochs", tuple(int(e) for e in self.epochs))
        r = self.random_subnets
        counts = (r,) * 3 if isinstance(r, int) else tuple(r)
        if len(counts) != len(PHASES) - 1 or not all(isinstance(c, int) and c >= 0 for c in counts):
            raise ValueError("random_subnets: expected a non-negative count or one per shrinking phase "
                             f"{PHASES[1:]}, got {r!r}")
        # equal counts are stored as one int, so a recipe has one spelling (and one cache key)
        object.__setattr__(self, "random_subnets", counts[0] if len(set(counts)) == 1 else counts)
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup: expected a fraction of a phase's steps in [0, 1], got {self.warmup}")

    def random_in(self, phase: str) -> int:
        """Random sub-networks per step in `phase` (0 in the largest phase, which trains one network)."""
        if phase == "largest":
            return 0
        r = self.random_subnets
        return r if isinstance(r, int) else r[PHASES.index(phase) - 1]


def phase_space(space: ss.SearchSpace, phase: str) -> ss.SearchSpace:
    """The sub-space trained in `phase`: its elastic dimensions free, every other one at its maximum."""
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    level = PHASES.index(phase)
    stages = []
    for st in space.stages:
        kw: dict = {}
        if level < 1:
            kw.update(kernels=(max(st.kernels),), se=(max(st.se),))
        if level < 2:
            kw.update(depths=(max(st.depths),))
        if level < 3:
            kw.update(expands=(max(st.expands),), widths=(max(st.widths),))
        stages.append(replace(st, **kw))
    resolutions = (max(space.resolutions),) if level == 0 else space.resolutions
    return replace(space, stages=tuple(stages), resolutions=resolutions)


def dataset_fingerprint(splits: Splits) -> dict:
    """What identifies the training data in a cache key: name, sizes and a hash of the training images."""
    h = hashlib.sha256()
    for part in (splits.train, splits.val):
        # a part streamed from disk is hashed chunk by chunk: the same bytes, so the same key as in memory
        for chunk in part.chunks() if isinstance(part, StreamDataset) else [part.x]:
            h.update(np.ascontiguousarray(chunk).tobytes())
        h.update(part.y.tobytes())
    return {"name": splits.train.name, "train": len(splits.train), "val": len(splits.val), "seed": splits.seed,
            "sha256": h.hexdigest()[:16]}


def cache_key(space: ss.SearchSpace, dataset: dict, recipe: SupernetRecipe, seed: int) -> str:
    """A 16-hex-digit hash of (space, dataset fingerprint, recipe, seed)."""
    # threads change only the floating-point summation order and probes only what is logged: one cache serves all
    settings = {k: v for k, v in asdict(recipe).items() if k not in ("threads", "probe_each_epoch")}
    if settings["warmup"] == 0.0:  # recipes from before the warm-up setting keep their caches
        del settings["warmup"]
    blob = json.dumps({"space": asdict(space), "dataset": dataset, "recipe": settings, "seed": seed,
                       "format": FORMAT},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _schedule(recipe: SupernetRecipe) -> list[tuple[str, int, int]]:
    """(phase, epoch within phase, epochs in phase) for every global epoch."""
    return [(p, k, n) for p, n in zip(PHASES, recipe.epochs, strict=True) for k in range(n)]


@dataclass
class SupernetRun:
    """A trained (or partly trained) supernet and where it lives."""

    supernet: Supernet
    path: Path
    epochs_done: int
    history: list[dict]
    key: str
    total_epochs: int
    pretrained: Path | None = None  # the packaged file it was loaded from, if it was not trained here

    @property
    def finished(self) -> bool:
        """Whether every epoch of the recipe has run."""
        return self.epochs_done >= self.total_epochs


def load_supernet(path: str | os.PathLike[str]) -> Supernet:
    """The supernet stored in a cache directory `results/supernets/<key>` (or given any file inside it)."""
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"{given}: no such supernet directory")
    cache = given if given.is_dir() else given.parent
    state = _read_cache(cache)
    if state is None:
        raise SupernetCacheError(f"{given}: not a supernet cache (expected a directory such as "
                                 f"results/supernets/<key> holding {STATE_FILE})")
    net = _build(state["space"], cache)
    _load_model(net, state, cache)
    return net.eval()


def _fix(cache: Path) -> str:
    return f"delete {cache} to retrain"


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write `tensors` as a safetensors file, atomically; returns its sha256 (for state.json)."""
    from safetensors.torch import save

    # contiguous(): safetensors stores dense row-major tensors, and channels_last weights are not; cpu(): a cache
    # trained on a GPU loads anywhere
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(blob))
    return hashlib.sha256(blob).hexdigest()


def _read_tensors(cache: Path, entry: Any, field: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The tensors of the file that state.json's `field` entry names, checked against its sha256."""
    from safetensors.torch import load

    state_file = cache / STATE_FILE
    name = entry.get("file") if isinstance(entry, dict) else None
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    # a plain file name of this folder: state.json never points elsewhere
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors") \
            or not isinstance(digest, str):
        raise SupernetCacheError(f"{state_file}: {field!r} must name a .safetensors file in the folder with its "
                                 f"sha256; {_fix(cache)}")
    path = cache / name
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SupernetCacheError(f"{path}: cannot read it ({exc.strerror or one_line(exc, with_type=True)}), though "
                                 f"{STATE_FILE} names it; {_fix(cache)}") from exc
    if hashlib.sha256(blob).hexdigest() != digest:
        raise SupernetCacheError(f"{path}: contents do not match the sha256 in {STATE_FILE} (truncated, replaced "
                                 f"or from another epoch); {_fix(cache)}")
    try:
        return path, load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; any means unreadable
        raise SupernetCacheError(f"{path}: not a readable safetensors file ({one_line(exc, with_type=True)}); "
                                 f"{_fix(cache)}") from exc


def _read_cache(cache: Path) -> dict[str, Any] | None:
    """What a cache folder's state.json records, its space rebuilt and its model tensors read and checked;
    None when the folder has no state.json (nothing trained yet, or not a cache). The optimizer's tensors are
    read only on resume (`_load_optimizer`)."""
    state_file = cache / STATE_FILE
    if not state_file.is_file():
        old = cache / OLD_CHECKPOINT
        if old.exists():
            # only a folder that train_supernet made (meta.json beside it) is safe to tell the user to delete
            fix = f"; {_fix(cache)}" if (cache / "meta.json").is_file() else ""
            raise SupernetCacheError(f"{old}: old supernet cache format (a pickle, which nas no longer loads "
                                     f"because loading it can run code){fix}")
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SupernetCacheError(f"{state_file}: unreadable or not JSON ({one_line(exc, with_type=True)}); "
                                 f"{_fix(cache)}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise SupernetCacheError(f"{state_file}: expected a supernet cache of format {FORMAT}, found "
                                 f"{found!r}; {_fix(cache)}")
    epoch, history, key, origin = (state.get(k) for k in ("epoch", "history", "key", "pretrained"))
    if not (isinstance(epoch, int) and epoch >= 0 and isinstance(history, list) and len(history) == epoch
            and all(isinstance(h, dict) for h in history) and isinstance(key, str)
            and (origin is None or isinstance(origin, str))):
        raise SupernetCacheError(f"{state_file}: expected an epoch count, one history record per epoch, a key and "
                                 f"the pretrained origin (or null); {_fix(cache)}")
    try:
        space = ss.SearchSpace.from_dict(state.get("space"))
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise SupernetCacheError(f"{state_file}: 'space' is not a search space ({one_line(exc, with_type=True)}); "
                                 f"{_fix(cache)}") from exc
    model_file, model = _read_tensors(cache, state.get("model"), "model")
    return {"epoch": epoch, "history": history, "key": key, "space": space, "pretrained": origin,
            "model": model, "model_file": model_file, "optimizer": state.get("optimizer"),
            "scaler": state.get("scaler")}


def _build(space: ss.SearchSpace, cache: Path) -> Supernet:
    """The supernet of a space read from state.json (a tampered one may not build: say so in one line)."""
    try:
        return Supernet(space)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise SupernetCacheError(f"{cache / STATE_FILE}: its space does not build a supernet "
                                 f"({one_line(exc, with_type=True)}); {_fix(cache)}") from exc


def _load_model(net: Supernet, state: dict[str, Any], cache: Path) -> None:
    """Load the weights `_read_cache` read into `net` (the supernet of the same state.json's space)."""
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise SupernetCacheError(f"{state['model_file']}: does not fit the supernet of the space in {STATE_FILE} "
                                 f"({one_line(exc, with_type=True)}); {_fix(cache)}") from exc


def _optimizer_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as tensors ("<param index>.<name>") and a JSON part (hyperparameters, layout)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        plain[str(idx)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:  # e.g. a momentum buffer of None before the parameter's first step
                plain[str(idx)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _load_optimizer(opt: torch.optim.Optimizer, entry: Any, cache: Path) -> None:
    """Restore `opt` from the optimizer file state.json names (tensors) and its JSON part (the rest)."""
    path, tensors = _read_tensors(cache, entry, "optimizer")
    try:
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in entry["state"].items()}
        for name, value in tensors.items():
            idx, field = name.split(".", 1)
            state.setdefault(int(idx), {})[field] = value
        opt.load_state_dict({"state": state, "param_groups": entry["param_groups"]})
        for group in opt.param_groups:
            for p in group["params"]:
                buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
                if buf is not None and buf.shape != p.shape:
                    raise ValueError(f"a momentum buffer of shape {tuple(buf.shape)} for a parameter of shape "
                                     f"{tuple(p.shape)}")
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise SupernetCacheError(f"{path}: does not fit this supernet's optimizer ({one_line(exc, with_type=True)}); "
                                 f"{_fix(cache)}") from exc


def _load_scaler(scaler: torch.amp.GradScaler, entry: Any, cache: Path) -> None:
    """Restore an fp16 loss scaler from the state state.json recorded for it."""
    try:
        if not (isinstance(entry, dict) and float(entry["scale"]) > 0):
            raise ValueError(f"expected a positive scale, got {entry!r}")
        scaler.load_state_dict(entry)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SupernetCacheError(f"{cache / STATE_FILE}: 'scaler' is not a loss scaler's state "
                                 f"({one_line(exc, with_type=True)}); {_fix(cache)}") from exc


def _save_cache(cache: Path, model: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None, epoch: int,
                history: list[dict], space: ss.SearchSpace, key: str, pretrained: str | None,
                scaler: torch.amp.GradScaler | None = None) -> None:
    """Write one epoch's files: tensors first under epoch-stamped names, state.json last (the commit point),
    then remove the files of other epochs. An enabled loss `scaler` (fp16) keeps its scale in state.json, so a
    resumed run continues with the scale it had reached rather than skipping steps to find it again."""
    model_name = f"model-e{epoch:04d}.safetensors"
    state: dict[str, Any] = {"format": FORMAT, "key": key, "epoch": epoch, "history": history,
                             "space": asdict(space), "pretrained": pretrained,
                             "model": {"file": model_name, "sha256": _write_tensors(cache / model_name, model)},
                             "optimizer": None,
                             "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    if opt is not None:
        tensors, layout = _optimizer_files(opt)
        opt_name = f"optimizer-e{epoch:04d}.safetensors"
        state["optimizer"] = {"file": opt_name, "sha256": _write_tensors(cache / opt_name, tensors), **layout}
    text = json.dumps(state, indent=1) + "\n"
    write_atomic(cache / STATE_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    keep = {model_name, state["optimizer"] and state["optimizer"]["file"]}
    for old in [*cache.glob("model-e*.safetensors"), *cache.glob("optimizer-e*.safetensors")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)


def train_supernet(space: ss.SearchSpace, splits: Splits | TensorSplits, recipe: SupernetRecipe = SupernetRecipe(),
                   seed: int = 0, root: str | os.PathLike[str] = DEFAULT_ROOT, progress: bool = True,
                   callback: Callable[[dict], None] | None = None,
                   pretrained: str | os.PathLike[str] | None = _pretrained.PACKAGED,
                   backend: TrainBackend = CPU) -> SupernetRun:
    """Train (or resume, or load) the supernet of `space` on `splits` with progressive shrinking.

    `space` is adapted to the data's channels and classes. `callback` receives each finished epoch's record
    (after its checkpoint is on disk); an exception it raises stops training, which a later call resumes.
    Without a checkpoint under `root`, a pretrained supernet of the same key in the folder `pretrained` (default:
    the package's) is loaded and copied there; `pretrained=None` always trains (over such a copy too).
    Trains on `backend`'s device and precision (not part of the cache key); the supernet comes back on the CPU.
    Runs `recipe.threads` torch threads, fewer while other processes keep the cores busy (`nas.cores`).
    """
    with fair_threads(recipe.threads):  # restores the caller's thread count afterwards
        return _train_supernet(space, splits, recipe, seed, root, progress, callback, pretrained, backend)


def _train_supernet(space: ss.SearchSpace, splits: Splits | TensorSplits, recipe: SupernetRecipe, seed: int,
                    root: str | os.PathLike[str], progress: bool, callback: Callable[[dict], None] | None,
                    pretrained: str | os.PathLike[str] | None, backend: TrainBackend) -> SupernetRun:
    data = as_source(splits)  # in memory, or streamed from disk
    space, key, path = prepare_cache(space, data, recipe, seed, root)
    net, state = initial_state(space, key, path, seed, pretrained, len(_schedule(recipe)))

    def commit(net: Supernet, opt: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler,
               history: list[dict]) -> None:
        _save_cache(path, net.state_dict(), opt, len(history), history, space, key, None, scaler)
        if progress:
            log_epoch(history[-1], len(_schedule(recipe)))
        if callback is not None:
            callback(history[-1])

    history = run_epochs(net, state, path, data, space, recipe, seed, backend, progress, SINGLE, commit)
    net.to("cpu", memory_format=torch.contiguous_format).eval()
    return SupernetRun(net, path, len(history), history, key, len(_schedule(recipe)),
                       Path(state["pretrained"]) if state and state.get("pretrained") else None)


def prepare_cache(space: ss.SearchSpace, data: TensorSplits, recipe: SupernetRecipe, seed: int,
                  root: str | os.PathLike[str]) -> tuple[ss.SearchSpace, str, Path]:
    """`space` adapted to the data's channels and classes, its cache key, and its cache folder under `root`
    (created, with meta.json describing the key's inputs)."""
    train = data.splits.train
    space = space.with_io(train.in_channels, train.num_classes)
    fingerprint = dataset_fingerprint(data.splits)
    key = cache_key(space, fingerprint, recipe, seed)
    path = Path(root) / key
    path.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"space": asdict(space), "dataset": fingerprint, "recipe": asdict(recipe), "seed": seed,
                       "key": key}, indent=1, default=str)
    write_atomic(path / "meta.json", lambda tmp: Path(tmp).write_text(meta, encoding="utf-8"))
    return space, key, path


def initial_state(space: ss.SearchSpace, key: str, path: Path, seed: int,
                  pretrained: str | os.PathLike[str] | None, epochs: int) -> tuple[Supernet, dict[str, Any] | None]:
    """The supernet to train, seeded by `seed` and loaded from the cache folder `path` (a newer epoch that a
    distributed run reported first taken in, `adopt_checkpoints`) or from a packaged supernet of the same key
    (copied into `path`); and the state it was loaded from (None: a fresh start)."""
    adopt_checkpoints(path)
    torch.manual_seed(seed)
    net = Supernet(space)
    state = _read_cache(path)
    if state is not None and (state["key"] != key or state["space"] != space):
        raise SupernetCacheError(f"{path / STATE_FILE}: records supernet {state['key']}, not {key} (a copied or "
                                 f"edited folder); {_fix(path)}")
    if state is not None and pretrained is None and state["pretrained"]:
        state = None  # a cache copied from a packaged supernet: `pretrained=None` asks for one trained here
    found = _pretrained.find(key, pretrained) if state is None and pretrained is not None else None
    if found is not None:
        state = _pretrained.load_state(found, net.state_dict())
        if state["epoch"] != epochs:
            raise ValueError(f"{found}: {state['epoch']} epochs, but its recipe has {epochs}")
        _save_cache(path, state["model"], None, state["epoch"], state["history"], space, key, state["pretrained"])
        net.load_state_dict(state["model"])  # load_state checked every name and shape
    elif state is not None:
        _load_model(net, state, path)
    return net, state


def log_epoch(record: dict, total: int) -> None:
    """One line about a finished epoch (loss, probes, time)."""
    probe = (f"val largest {record['val_acc_largest']:.3f} smallest {record['val_acc_smallest']:.3f} "
             f"random {record['val_acc_random']:.3f} " if "val_acc_largest" in record else "")
    tqdm.write(f"supernet epoch {record['epoch']}/{total} [{record['phase']}] loss {record['loss']:.3f} {probe}"
               f"({record['wall_s']:.0f}s)")


def run_epochs(net: Supernet, state: dict[str, Any] | None, folder: Path, data: TensorSplits, space: ss.SearchSpace,
               recipe: SupernetRecipe, seed: int, backend: TrainBackend, progress: bool, shard: Shard,
               commit: Callable[[Supernet, torch.optim.Optimizer | None, torch.amp.GradScaler, list[dict]], None]
               ) -> list[dict]:
    """The epochs of the schedule after those `state` records (its files in `folder`), on this process's `shard`
    of every batch; after each, `commit(net, optimizer or None, loss scaler, history)` stores it (the optimizer
    only when the next epoch continues its phase; the scaler's state, kept across phases, only for fp16). The
    history of every epoch. The distributed workers run this too (`nas.supernet.distributed`): only the first
    probes the validation split."""
    schedule = _schedule(recipe)
    done, history = (state["epoch"], list(state["history"])) if state is not None else (0, [])
    # weights loaded on the CPU, then onto the device before the optimizer is made (its state follows them there)
    backend.module(net).to(memory_format=torch.channels_last)  # oneDNN's NHWC kernels: ~25% faster training steps
    evaluator = SubnetEvaluator(net, data, "val", recipe.calib_images, seed, backend=backend) if shard.first \
        else None
    scaler = backend.grad_scaler()
    if state is not None and state.get("scaler") and scaler.is_enabled():
        _load_scaler(scaler, state["scaler"], folder)
    opt = None
    for epoch in range(done, len(schedule)):
        phase, k, n = schedule[epoch]
        pspace = phase_space(space, phase)
        if k == 0 and phase == "width":
            net.sort_channels()
            net.init_plain_paths()
        peak = recipe.lr if phase == "largest" else recipe.lr_shrink
        if opt is None or k == 0:
            opt = make_optimizer(net, peak, recipe.momentum, recipe.weight_decay)
            if k > 0 and state is not None and state.get("optimizer") is not None:
                _load_optimizer(opt, state["optimizer"], folder)
        with backend.training(net):
            record = _train_epoch(net, opt, data, pspace, recipe, seed, epoch, k, n, peak, progress and shard.first,
                                  recipe.random_in(phase), backend, scaler, shard)
        shard.average_buffers(net)
        record.update(epoch=epoch + 1, phase=phase)
        net.eval()
        if evaluator is not None and (recipe.probe_each_epoch or k == n - 1):
            record.update(_probe(evaluator, pspace, seed))
        history.append(record)
        # momentum is needed only to resume within a phase: a new phase starts a new optimizer
        continues = epoch + 1 < len(schedule) and schedule[epoch + 1][1] > 0
        commit(net, opt if continues else None, scaler, history)
    return history


def adopt_checkpoints(path: Path) -> None:
    """Take into the cache folder `path` the newest complete epoch that a distributed run reported to Ray Train's
    storage (`path`/ray, `nas.supernet.distributed`), when it is newer than the cache's own: a run whose driver
    was killed loses nothing, whichever way it is resumed. The checkpoints are in the cache's format and are
    checked as the cache is (sha256 of each file); one that does not check is skipped."""
    storage = path / RAY_STORAGE
    if not storage.is_dir():
        return
    current = _read_cache(path) if (path / STATE_FILE).is_file() else None
    best, best_epoch = None, current["epoch"] if current is not None else -1
    for found in sorted(storage.glob(f"*/*/{STATE_FILE}")):  # <storage>/<run name>/<checkpoint>/state.json
        try:
            state = _read_cache(found.parent)
        except SupernetCacheError:
            continue  # a checkpoint Ray had not finished copying when the driver died
        if state is not None and state["epoch"] > best_epoch and (current is None or state["key"] == current["key"]):
            best, best_epoch = found.parent, state["epoch"]
    if best is not None:
        copy_checkpoint(best, path)


def copy_checkpoint(src: Path, cache: Path) -> None:
    """Copy the epoch stored in the folder `src` (the cache format) into the cache folder `cache`: its tensor files
    first, state.json last (the commit point), then the files of other epochs removed, as `_save_cache` does."""
    state = json.loads((src / STATE_FILE).read_text(encoding="utf-8"))
    names = [entry["file"] for entry in (state["model"], state["optimizer"]) if entry is not None]
    for name in names:
        blob = (src / name).read_bytes()
        write_atomic(cache / name, lambda tmp, blob=blob: Path(tmp).write_bytes(blob))
    text = (src / STATE_FILE).read_text(encoding="utf-8")
    write_atomic(cache / STATE_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for old in [*cache.glob("model-e*.safetensors"), *cache.glob("optimizer-e*.safetensors")]:
        if old.name not in names:
            old.unlink(missing_ok=True)


def _probe(evaluator: SubnetEvaluator, pspace: ss.SearchSpace, seed: int) -> dict[str, float]:
    """Validation accuracy of the phase's largest, smallest and two fixed random sub-networks (their mean), each
    distinct network evaluated once (in the largest phase all four are the same network)."""
    scores: dict[ss.Arch, float] = {}

    def score(arch: ss.Arch) -> float:
        if arch not in scores:
            scores[arch] = evaluator(arch)
        return scores[arch]

    probe = random.Random(f"probe/{seed}")  # the same two random sub-networks of the phase every epoch
    return {"val_acc_largest": score(pspace.largest()), "val_acc_smallest": score(pspace.smallest()),
            "val_acc_random": sum(score(pspace.random_arch(probe)) for _ in range(2)) / 2}


def phase_lr(peak: float, step: int, total: int, warmup_steps: float = 0.0) -> float:
    """Learning rate at `step` of a phase of `total` steps: cosine decay from `peak`, times a linear warm-up from
    1 / `warmup_steps` to 1 over the first `warmup_steps` steps."""
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return cosine_lr(peak, step, total) * ramp


@dataclass(frozen=True)
class Shard:
    """This process's part in data-parallel training: worker `rank` of `world` (set up by Ray Train's
    `TorchTrainer`: gloo on the CPU, NCCL on GPUs). Each global batch is cut into `world` contiguous slices and
    rank r trains on slice r; its losses are weighted by its share of the batch, so the gradients summed over the
    workers and divided by `world` are the gradient of the whole batch's mean loss (as one process computes it,
    up to batch norm, whose statistics each worker takes over its own slice). `world == 1`: the whole batch,
    no communication."""

    rank: int = 0
    world: int = 1

    @property
    def first(self) -> bool:
        """Whether this is rank 0 (which probes, logs and writes checkpoints)."""
        return self.rank == 0

    def take(self, batch: Batch) -> tuple[Batch, float]:
        """This worker's slice of `batch`, and the weight of its losses (its share times `world`)."""
        if self.world == 1:
            return batch, 1.0
        n = len(batch.y)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        part = Batch({size: x[lo:hi] for size, x in batch.xs.items()}, batch.y[lo:hi], batch.idx[lo:hi])
        return part, (hi - lo) * self.world / n

    def reduce_gradients(self, net: torch.nn.Module) -> None:
        """Average the accumulated gradients over the workers: one all-reduce per step, after the sandwich rule's
        backward passes (every worker trains the same sub-networks, so the same parameters have gradients)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view(g.shape))
            offset += g.numel()

    def average_buffers(self, net: torch.nn.Module) -> None:
        """Average batch norm's running statistics over the workers (each saw its own slices), so every worker
        holds the same model and the checkpoint reflects all the data."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for b in net.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world

    def total(self, values: list[float]) -> list[float]:
        """`values` summed over the workers (per-epoch loss and accuracy sums)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


SINGLE = Shard()  # one process trains on every batch whole


def _train_epoch(net: Supernet, opt: torch.optim.Optimizer, data: TensorSplits, pspace: ss.SearchSpace,
                 recipe: SupernetRecipe, seed: int, epoch: int, k: int, n: int, peak: float, progress: bool,
                 n_random: int, backend: TrainBackend = CPU, scaler: torch.amp.GradScaler | None = None,
                 shard: Shard = SINGLE, batches: TrainBatches | None = None) -> dict:
    """One epoch of sandwich-rule training with in-place distillation on `backend` (`net` on its device, the data
    on the CPU), on `shard` of every batch; returns loss/accuracy/time over the whole epoch (all workers).
    `scaler`: the run's `backend.grad_scaler()` (made here if None). `batches`: the training batches (default:
    the train split's, in the order of (seed, epoch))."""
    scaler = backend.grad_scaler() if scaler is None else scaler
    if batches is None:
        batches = data.train_batches(recipe.batch_size, resolutions=pspace.resolutions, seed=seed,
                                     drop_last=len(data.splits.train) > recipe.batch_size)
    net.train()
    rng = random.Random(f"{seed}/{epoch}")  # the same sub-networks on every worker
    largest, smallest = pspace.largest(), pspace.smallest()
    elastic = len(pspace.resolutions) > 1 or pspace.smallest() != pspace.largest()
    start, steps = time.perf_counter(), len(batches)
    warm = recipe.warmup * n * steps if elastic else 0.0
    loss_sum = acc_big = acc_small = seen = 0.0
    bar = tqdm(batches.batches(epoch), total=steps, desc=f"epoch {epoch + 1} {pspace.name}", disable=not progress,
               leave=False)
    for i, batch in enumerate(bar):
        tick()  # between steps: re-size the threads to the cores other processes leave free
        set_lr(opt, phase_lr(peak, k * steps + i, n * steps, warm))
        subnets = [smallest] + [pspace.random_arch(rng) for _ in range(n_random)] if elastic else []
        total, big, small, images = _train_step(net, opt, batch, largest, subnets, recipe, backend, scaler, shard)
        # summed on the device and read when shown (every few steps) and at the end: a read per step would make
        # the host wait for a GPU
        loss_sum += total * images
        acc_big += big
        acc_small += small
        seen += images
        if progress and (i % 10 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{float(acc_big) / seen:.3f}",
                            acc_small=f"{float(acc_small) / seen:.3f}" if elastic else "-")
    loss_sum, acc_big, acc_small, seen = shard.total([float(loss_sum), float(acc_big), float(acc_small), seen])
    net.set_active(largest)
    return {"loss": loss_sum / max(seen, 1), "train_acc_largest": acc_big / max(seen, 1),
            "train_acc_smallest": acc_small / max(seen, 1) if elastic else None,
            "wall_s": time.perf_counter() - start, "steps": steps}


def _train_step(net: Supernet, opt: torch.optim.Optimizer, batch: Batch, largest: ss.Arch, subnets: list[ss.Arch],
                recipe: SupernetRecipe, backend: TrainBackend, scaler: torch.amp.GradScaler,
                shard: Shard) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float, int]:
    """One optimizer step of the sandwich rule on this worker's share of `batch`: the largest sub-network learns
    from the labels, each of `subnets` (the smallest first; none outside the elastic phases) from the labels plus
    the largest one's detached predictions. Returns this worker's summed loss, correct predictions of the largest
    and the smallest sub-network (tensors on the device, so the step never waits for it), and its number of
    images."""
    part, weight = shard.take(batch)
    opt.zero_grad(set_to_none=True)
    net.set_active(largest)
    yd = backend.tensor(part.y)
    with backend.autocast():
        out = net(backend.tensor(part.at(largest.resolution)))
        loss = F.cross_entropy(out, yd)
    scaler.scale(loss if weight == 1.0 else loss * weight).backward()
    total = loss.detach().double()
    big = (out.argmax(1) == yd).sum()
    small: torch.Tensor | float = 0.0
    teacher = out.detach()
    for j, arch in enumerate(subnets):
        net.set_active(arch)
        with backend.autocast():
            out = net(backend.tensor(part.at(arch.resolution)))
            sub_loss = F.cross_entropy(out, yd) + recipe.kd_weight * kd_loss(out, teacher, recipe.kd_temperature)
        scaler.scale(sub_loss if weight == 1.0 else sub_loss * weight).backward()
        total = total + sub_loss.detach().double()
        if j == 0:
            small = (out.argmax(1) == yd).sum()
    shard.reduce_gradients(net)
    scaler.step(opt)
    scaler.update()
    return total, big, small, len(part.y)
