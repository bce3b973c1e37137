"""Supernets trained once and shipped with the package, as Once-for-All ships its pretrained supernets.

Training the default search's supernet (`nas search --budget 100MFLOPs`: space small32 trimmed to 100M MACs,
built-in digits, the default progressive-shrinking recipe, seed 0) is most of that job's time on 2 cores. What it
learns depends only on its cache key (`nas.supernet.cache_key`: space, data fingerprint, recipe, seed; up to the
floating-point summation order that the thread count sets), so
`tools/pretrain_supernet.py` trains it with `nas` itself and stores it in `nas/supernet/weights/` as
`<key>.safetensors` (weights in float16, batch-norm statistics in float32) with `<key>.json` (the key's inputs,
the training history, versions and machine). `train_supernet` loads it when its key matches and no cache of its
own exists; any change to the space, data, recipe or seed changes the key, and then the supernet is trained.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from nas.errors import one_line
from nas.io import write_atomic

PACKAGED = Path(__file__).parent / "weights"


def find(key: str, directory: str | os.PathLike[str] = PACKAGED) -> Path | None:
    """The weights file of the pretrained supernet with this cache key, or None."""
    path = Path(directory) / f"{key}.safetensors"
    return path if path.exists() else None


def save(net: torch.nn.Module, meta: dict[str, Any], directory: str | os.PathLike[str] = PACKAGED) -> Path:
    """Store a finished supernet as `<key>.safetensors` + `<key>.json` (meta must hold "key", "epochs" and
    "history")."""
    from safetensors.torch import save_file

    for field in ("key", "history", "epochs"):
        if field not in meta:
            raise ValueError(f"meta: expected a {field!r} entry, got keys {sorted(meta)}")
    # float16 halves the file (the default supernet: 9.3M parameters, 18.6 MB); the statistics stay float32
    state = {k: (v.half() if v.is_floating_point() and "running_" not in k else v).detach().contiguous()
             for k, v in net.state_dict().items()}
    directory = Path(directory)
    weights = directory / f"{meta['key']}.safetensors"
    write_atomic(weights, lambda tmp: save_file(state, tmp, metadata={"key": meta["key"]}))
    info = {**meta, "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    write_atomic(weights.with_suffix(".json"),
                 lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1, default=str) + "\n"))
    return weights


def load_state(path: str | os.PathLike[str], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A pretrained file's state for `train_supernet` (model, epoch, history, origin): weights cast to the
    dtypes of `reference` (the state dict of a freshly built supernet of the same space), history from its JSON.
    Both files are plain data (safetensors, JSON); an unreadable one is refused with one line naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        stored = load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; any means unreadable
        raise ValueError(f"{path}: not a readable safetensors file ({one_line(exc)}); "
                         "reinstall nas or pass --no-pretrained") from exc
    missing, extra = sorted(set(reference) - set(stored)), sorted(set(stored) - set(reference))
    if missing or extra:
        raise ValueError(f"{path}: does not fit this supernet (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in stored.items():
        if v.shape != reference[k].shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, this supernet {tuple(reference[k].shape)}")
    side = path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        epochs, history = meta["epochs"], meta["history"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"{side}: expected the JSON beside {path.name} with 'epochs' and 'history' "
                         f"({one_line(exc, with_type=True)})") from exc
    if not (isinstance(epochs, int) and isinstance(history, list) and len(history) == epochs
            and all(isinstance(h, dict) for h in history)):
        raise ValueError(f"{side}: expected an epoch count and one history record per epoch")
    return {"model": {k: v.to(reference[k].dtype) for k, v in stored.items()}, "optimizer": None,
            "epoch": epochs, "history": history, "pretrained": str(path)}
