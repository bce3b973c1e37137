"""The exported checkpoint: one directory, written atomically, read back bit-identically.

    <dir>/arch.json            the architecture (search_spaces.Arch JSON)
    <dir>/network.json         the quantized network's structure: op specs with their scalar fields
    <dir>/weights.safetensors  every array of the network; int4 weights packed two per byte
    <dir>/metadata.json        format + version, dataset, accuracies, MACs, params, bytes, latencies, versions,
                               per-file SHA-256 and a content hash over all of them

`save` writes the directory with `nas.io.write_dir_atomic` (temporary sibling, then swapped in); `load` checks the
format version and every file's hash, and names the file in any error (`CheckpointError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import nas
import nas.kernels
from nas.export.model import QuantizedModel
from nas.io import write_dir_atomic
from nas.kernels import ops as kops
from nas.kernels.executor import QuantizedLayer, QuantizedNetwork
from nas.kernels.quant import QParams
from search_spaces import Arch, ArchError, count

FORMAT = "nas-quantized-checkpoint"
FORMAT_VERSION = "1.0"
FILES = ("arch.json", "network.json", "weights.safetensors")
_TYPES = {c.__name__: c for c in (kops.GemmSpec, kops.ConvSpec, kops.DepthwiseSpec, kops.PoolSpec, kops.SESpec,
                                  kops.Requant, kops.Residual, QParams, QuantizedLayer)}


class CheckpointError(ValueError):
    """A checkpoint is missing a file, corrupt, truncated, tampered with or from an incompatible version."""


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] -> uint8, two per byte (low nibble first); odd lengths padded with 0."""
    flat = (q.astype(np.int16).ravel() & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_int4`."""
    n = int(np.prod(shape))
    lo, hi = packed & 0xF, packed >> 4
    flat = np.stack([lo, hi], 1).ravel()[:n].astype(np.int8)
    flat = np.where(flat > 7, flat - 16, flat).astype(np.int8)
    return flat.reshape(shape)


def _encode(obj: Any, key: str, arrays: dict[str, np.ndarray], int4: bool = False) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        bits4 = getattr(obj, "bits", 8) == 4
        out = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name.startswith("_"):
                continue
            out[f.name] = _encode(getattr(obj, f.name), f"{key}.{f.name}", arrays, bits4 and f.name == "weight")
        return out
    if isinstance(obj, np.ndarray):
        if int4:
            arrays[key] = pack_int4(obj)
            return {"__array__": key, "int4": list(obj.shape)}
        if obj.dtype.kind in "iu" and obj.size and obj.dtype.itemsize > 1:  # narrowest integer type that fits
            for small in (np.int8, np.uint8, np.int16):
                info = np.iinfo(small)
                if obj.min() >= info.min and obj.max() <= info.max:
                    arrays[key] = np.ascontiguousarray(obj.astype(small))
                    return {"__array__": key, "dtype": obj.dtype.name}
        arrays[key] = np.ascontiguousarray(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{key}.{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _encode(v, f"{key}.{k}", arrays) for k, v in obj.items()}
    return obj


def _decode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict) and "__type__" in obj:
        cls = _TYPES.get(obj["__type__"])
        if cls is None:
            raise CheckpointError(f"network.json: unknown op type {obj['__type__']!r}")
        kwargs = {k: _decode(v, arrays) for k, v in obj.items() if k != "__type__"}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise CheckpointError(f"network.json: {obj['__type__']} does not match this kernel library "
                                  f"({exc})") from exc
    if isinstance(obj, dict) and "__array__" in obj:
        if obj["__array__"] not in arrays:
            raise CheckpointError(f"weights.safetensors: array {obj['__array__']!r} is missing")
        a = arrays[obj["__array__"]]
        if "int4" in obj:
            return unpack_int4(a, tuple(obj["int4"]))
        return a.astype(obj["dtype"]) if "dtype" in obj else a
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import platform

    import torch

    out = {"nas": nas.__version__, "kernels": nas.kernels.version, "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    try:
        out["kernels_build"] = nas.kernels.build_hash()
    except OSError:
        pass
    return out


def save(model: QuantizedModel, path: str | os.PathLike, **metadata: Any) -> str:
    """Write `model` as a checkpoint directory at `path` (replacing an existing one atomically).

    Extra keyword metadata (dataset, accuracies, latencies, ...) is merged into metadata.json.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    net = model.network
    structure = {
        "input_q": _encode(net.input_q, "input_q", arrays),
        "layers": [_encode(layer, f"layers.{layer.name}", arrays) for layer in net.layers],
        "logit_scale": _encode(net.logit_scale, "logit_scale", arrays),
        "bits": net.bits, "arch": net.arch,
        "act_qparams": {k: [float(s), int(z)] for k, (s, z) in model.act_qparams.items()},
        "weight_scales": {k: _encode(np.asarray(v, dtype=np.float32), f"weight_scales.{k}", arrays)
                          for k, v in model.weight_scales.items()},
    }
    meta: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        (tmp / "arch.json").write_text(model.arch.to_json(indent=1) + "\n")
        (tmp / "network.json").write_text(json.dumps(structure, indent=1) + "\n")
        save_file(arrays, str(tmp / "weights.safetensors"))
        hashes = {f: _sha(tmp / f) for f in FILES}
        content = hashlib.sha256("".join(hashes[f] for f in FILES).encode()).hexdigest()
        cost = count(model.arch)
        meta.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "arch": str(model.arch), "arch_hash": model.arch.hash(), "macs": cost.macs,
                     "params": cost.params, "weight_bytes": model.weight_bytes, "bits": net.bits,
                     "versions": _versions(),
                     **{k: v for k, v in model.metadata.items() if k not in ("format", "format_version", "files")},
                     **metadata})
        meta["file_bytes"] = sum((tmp / f).stat().st_size for f in FILES)
        meta["files"], meta["content_hash"] = hashes, content
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")

    write_dir_atomic(path, fill)
    model.metadata = meta
    return str(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"metadata: cannot write {type(o).__name__} as JSON")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a complete nas checkpoint)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated JSON ({exc})") from exc


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of a checkpoint, with the format, the version and every entry `load` relies on checked."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory (with metadata.json), got a file")
    where = path / "metadata.json"
    meta = _read_json(where)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    for entry in ("format", "format_version", "files"):
        if entry not in meta:
            raise CheckpointError(f"{where}: missing entry {entry!r} (not a complete nas checkpoint)")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{where}: not a {FORMAT} (format={meta['format']!r})")
    ver = str(meta["format_version"])
    if ver.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise CheckpointError(f"{where}: format version {ver} is incompatible with this nas "
                              f"(reads {FORMAT_VERSION.split('.')[0]}.x); re-export it with a matching nas version")
    files = meta["files"]
    if not isinstance(files, dict):
        raise CheckpointError(f"{where}: entry 'files' must map each file to its SHA-256, got {type(files).__name__}")
    for f in FILES:
        if not isinstance(files.get(f), str):
            raise CheckpointError(f"{where}: entry 'files' has no SHA-256 for {f!r} (got {files.get(f)!r})")
    return meta


def load(path: str | os.PathLike, verify: bool = True) -> QuantizedModel:
    """Load a checkpoint directory as a `QuantizedModel` that runs on the kernels.

    `verify` checks each file's SHA-256 against metadata.json. Errors name the offending file.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    for f in FILES:
        if not (path / f).is_file():
            raise CheckpointError(f"{path / f}: missing (not a complete nas checkpoint)")
        if verify and _sha(path / f) != meta["files"][f]:
            raise CheckpointError(f"{path / f}: content does not match its hash in metadata.json (corrupt, "
                                  f"truncated or modified)")
    try:
        arch = Arch.from_json((path / "arch.json").read_text())
    except ArchError as exc:
        raise CheckpointError(f"{path / 'arch.json'}: {exc}") from exc
    structure = _read_json(path / "network.json")
    try:
        arrays = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path / 'weights.safetensors'}: unreadable ({exc})") from exc
    try:
        net = QuantizedNetwork(input_q=_decode(structure["input_q"], arrays),
                               layers=[_decode(x, arrays) for x in structure["layers"]],
                               logit_scale=_decode(structure["logit_scale"], arrays), bits=int(structure["bits"]),
                               arch=structure["arch"])
        acts = {k: (float(s), int(z)) for k, (s, z) in structure["act_qparams"].items()}
        wscales = {k: _decode(v, arrays) for k, v in structure["weight_scales"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path / 'network.json'}: malformed ({exc!r})") from exc
    return QuantizedModel(net, arch, acts, wscales, meta, source=str(path))
