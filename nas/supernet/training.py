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
with the package under the same key (`nas.supernet.pretrained`) is loaded instead of trained.
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
from nas.cores import fair_threads, tick
from nas.data import BatchLoader, Splits, TensorSplits
from nas.errors import one_line
from nas.io import write_atomic
from nas.supernet.evaluate import SubnetEvaluator
from nas.supernet.model import Supernet
from nas.train import as_tensor_splits, cosine_lr, kd_loss, make_optimizer, set_lr

PHASES = ("largest", "kernel", "depth", "width")
# bump when the supernet's parameters or the cache files change, so old caches are not loaded into a new layout
# (4: safetensors + state.json instead of a pickled checkpoint.pt)
FORMAT = 4
DEFAULT_ROOT = Path("results/supernets")
STATE_FILE = "state.json"
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
        h.update(np.ascontiguousarray(part.x).tobytes())
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

    # contiguous(): safetensors stores dense row-major tensors, and channels_last weights are not
    blob = save({k: v.detach().contiguous() for k, v in tensors.items()})
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
            "model": model, "model_file": model_file, "optimizer": state.get("optimizer")}


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


def _save_cache(cache: Path, model: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None, epoch: int,
                history: list[dict], space: ss.SearchSpace, key: str, pretrained: str | None) -> None:
    """Write one epoch's files: tensors first under epoch-stamped names, state.json last (the commit point),
    then remove the files of other epochs."""
    model_name = f"model-e{epoch:04d}.safetensors"
    state: dict[str, Any] = {"format": FORMAT, "key": key, "epoch": epoch, "history": history,
                             "space": asdict(space), "pretrained": pretrained,
                             "model": {"file": model_name, "sha256": _write_tensors(cache / model_name, model)},
                             "optimizer": None}
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
                   pretrained: str | os.PathLike[str] | None = _pretrained.PACKAGED) -> SupernetRun:
    """Train (or resume, or load) the supernet of `space` on `splits` with progressive shrinking.

    `space` is adapted to the data's channels and classes. `callback` receives each finished epoch's record
    (after its checkpoint is on disk); an exception it raises stops training, which a later call resumes.
    Without a checkpoint under `root`, a pretrained supernet of the same key in the folder `pretrained` (default:
    the package's) is loaded and copied there; `pretrained=None` always trains (over such a copy too).
    Runs `recipe.threads` torch threads, fewer while other processes keep the cores busy (`nas.cores`).
    """
    with fair_threads(recipe.threads):  # restores the caller's thread count afterwards
        return _train_supernet(space, splits, recipe, seed, root, progress, callback, pretrained)


def _train_supernet(space: ss.SearchSpace, splits: Splits | TensorSplits, recipe: SupernetRecipe, seed: int,
                    root: str | os.PathLike[str], progress: bool, callback: Callable[[dict], None] | None,
                    pretrained: str | os.PathLike[str] | None) -> SupernetRun:
    data = as_tensor_splits(splits)
    train = data.splits.train
    space = space.with_io(train.in_channels, train.num_classes)
    fingerprint = dataset_fingerprint(data.splits)
    key = cache_key(space, fingerprint, recipe, seed)
    path = Path(root) / key
    path.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"space": asdict(space), "dataset": fingerprint, "recipe": asdict(recipe), "seed": seed,
                       "key": key}, indent=1, default=str)
    write_atomic(path / "meta.json", lambda tmp: Path(tmp).write_text(meta, encoding="utf-8"))

    torch.manual_seed(seed)
    net = Supernet(space)
    schedule = _schedule(recipe)
    state = _read_cache(path)
    if state is not None and (state["key"] != key or state["space"] != space):
        raise SupernetCacheError(f"{path / STATE_FILE}: records supernet {state['key']}, not {key} (a copied or "
                                 f"edited folder); {_fix(path)}")
    if state is not None and pretrained is None and state["pretrained"]:
        state = None  # a cache copied from a packaged supernet: `pretrained=None` asks for one trained here
    found = _pretrained.find(key, pretrained) if state is None and pretrained is not None else None
    if found is not None:
        state = _pretrained.load_state(found, net.state_dict())
        if state["epoch"] != len(schedule):
            raise ValueError(f"{found}: {state['epoch']} epochs, but its recipe has {len(schedule)}")
        _save_cache(path, state["model"], None, state["epoch"], state["history"], space, key, state["pretrained"])
    done, history = 0, []
    if state is not None:
        if found is not None:
            net.load_state_dict(state["model"])  # load_state checked every name and shape
        else:
            _load_model(net, state, path)
        done, history = state["epoch"], state["history"]
    net.to(memory_format=torch.channels_last)  # oneDNN's NHWC kernels: ~25% faster training steps
    y = data.tensors("train")[1]
    loader = BatchLoader(torch.arange(len(y)), y, recipe.batch_size, seed=seed, drop_last=len(y) > recipe.batch_size)
    evaluator = SubnetEvaluator(net, data, "val", recipe.calib_images, seed)
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
                _load_optimizer(opt, state["optimizer"], path)
        record = _train_epoch(net, opt, data, loader, pspace, recipe, seed, epoch, k, n, peak, progress,
                              recipe.random_in(phase))
        record.update(epoch=epoch + 1, phase=phase)
        net.eval()
        if recipe.probe_each_epoch or k == n - 1:
            record.update(_probe(evaluator, pspace, seed))
        history.append(record)
        # momentum is needed only to resume within a phase: a new phase starts a new optimizer
        continues = epoch + 1 < len(schedule) and schedule[epoch + 1][1] > 0
        _save_cache(path, net.state_dict(), opt if continues else None, epoch + 1, history, space, key, None)
        if progress:
            probe = (f"val largest {record['val_acc_largest']:.3f} smallest {record['val_acc_smallest']:.3f} "
                     f"random {record['val_acc_random']:.3f} " if "val_acc_largest" in record else "")
            tqdm.write(f"supernet epoch {epoch + 1}/{len(schedule)} [{phase}] loss {record['loss']:.3f} {probe}"
                       f"({record['wall_s']:.0f}s)")
        if callback is not None:
            callback(record)
    net.to(memory_format=torch.contiguous_format).eval()
    return SupernetRun(net, path, len(history), history, key, len(schedule),
                       Path(state["pretrained"]) if state and state.get("pretrained") else None)


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


def _train_epoch(net: Supernet, opt: torch.optim.Optimizer, data: TensorSplits, loader: BatchLoader,
                 pspace: ss.SearchSpace, recipe: SupernetRecipe, seed: int, epoch: int, k: int, n: int,
                 peak: float, progress: bool, n_random: int) -> dict:
    """One epoch of sandwich-rule training with in-place distillation; returns loss/accuracy/time."""
    net.train()
    rng = random.Random(f"{seed}/{epoch}")
    loader.set_epoch(epoch)
    largest, smallest = pspace.largest(), pspace.smallest()
    elastic = len(pspace.resolutions) > 1 or pspace.smallest() != pspace.largest()
    xs = {r: data.tensors("train", r)[0] for r in pspace.resolutions}
    start, steps = time.perf_counter(), len(loader)
    warm = recipe.warmup * n * steps if elastic else 0.0
    loss_sum = acc_big = acc_small = seen = 0.0
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1} {pspace.name}", disable=not progress, leave=False)
    for i, (idx, yb) in enumerate(bar):
        tick()  # between steps: re-size the threads to the cores other processes leave free
        set_lr(opt, phase_lr(peak, k * steps + i, n * steps, warm))
        opt.zero_grad(set_to_none=True)
        net.set_active(largest)
        out = net(xs[largest.resolution][idx])
        loss = F.cross_entropy(out, yb)
        loss.backward()
        total = float(loss.detach())
        acc_big += float((out.argmax(1) == yb).sum())
        if elastic:
            teacher = out.detach()
            subnets = [smallest] + [pspace.random_arch(rng) for _ in range(n_random)]
            for j, arch in enumerate(subnets):
                net.set_active(arch)
                out = net(xs[arch.resolution][idx])
                sub_loss = F.cross_entropy(out, yb) + recipe.kd_weight * kd_loss(out, teacher, recipe.kd_temperature)
                sub_loss.backward()
                total += float(sub_loss.detach())
                if j == 0:
                    acc_small += float((out.argmax(1) == yb).sum())
        opt.step()
        loss_sum += total * len(yb)
        seen += len(yb)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{acc_big / seen:.3f}",
                        acc_small=f"{acc_small / seen:.3f}" if elastic else "-")
    net.set_active(largest)
    return {"loss": loss_sum / max(seen, 1), "train_acc_largest": acc_big / max(seen, 1),
            "train_acc_smallest": acc_small / max(seen, 1) if elastic else None,
            "wall_s": time.perf_counter() - start, "steps": steps}
