"""Save / load a :class:`QuantizedNetwork` as one safetensors file (arrays) + JSON metadata (structure, ints).

int4 weights are stored packed, two per byte, so the file size is close to ``params x bits / 8``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from safetensors.numpy import load_file, save_file

from nas.io import write_atomic
from nas.kernels import ops
from nas.kernels.executor import QuantizedLayer, QuantizedNetwork
from nas.kernels.quant import QParams

_TYPES = {c.__name__: c for c in (ops.GemmSpec, ops.ConvSpec, ops.DepthwiseSpec, ops.PoolSpec, ops.SESpec,
                                  ops.Requant, ops.Residual, QParams, QuantizedLayer, QuantizedNetwork)}


def _pack_int4(w: np.ndarray) -> np.ndarray:
    flat = w.astype(np.int8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    u = flat.view(np.uint8) & 0x0F
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def _unpack_int4(p: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = p & 0x0F, p >> 4
    u = np.stack([lo, hi], axis=1).ravel()[: int(np.prod(shape))].astype(np.int16)
    return np.where(u > 7, u - 16, u).astype(np.int8).reshape(shape)


def _encode(obj, key: str, tensors: dict[str, np.ndarray]):
    if dataclasses.is_dataclass(obj):
        out = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name.startswith("_"):
                continue
            v = getattr(obj, f.name)
            if f.name == "weight" and getattr(obj, "bits", 8) == 4:
                tensors[f"{key}.weight"] = _pack_int4(v)
                out["weight"] = {"__int4__": f"{key}.weight", "shape": list(v.shape)}
            elif f.name == "sub_scales" and v is not None:  # integers in [1, 255]: one byte each
                tensors[f"{key}.sub_scales"] = np.ascontiguousarray(v, dtype=np.uint8)
                out["sub_scales"] = {"__uint8_as_int32__": f"{key}.sub_scales"}
            else:
                out[f.name] = _encode(v, f"{key}.{f.name}", tensors)
        return out
    if isinstance(obj, np.ndarray):
        tensors[key] = np.ascontiguousarray(obj)
        return {"__tensor__": key}
    if isinstance(obj, list | tuple):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj, tensors: dict[str, np.ndarray]):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__uint8_as_int32__" in obj:
            return tensors[obj["__uint8_as_int32__"]].astype(np.int32)
        if "__int4__" in obj:
            return _unpack_int4(tensors[obj["__int4__"]], tuple(obj["shape"]))
        cls = _TYPES[obj["__type__"]]
        return cls(**{k: _decode(v, tensors) for k, v in obj.items() if k != "__type__"})
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_network(net: QuantizedNetwork, path: str) -> None:
    """Write ``net`` to a safetensors file (structure and integer parameters in its metadata)."""
    tensors: dict[str, np.ndarray] = {}
    structure = _encode(net, "net", tensors)
    meta = {"nas.kernels.QuantizedNetwork": json.dumps(structure)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_network(path: str) -> QuantizedNetwork:
    """Read a network written by :func:`save_network`."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if "nas.kernels.QuantizedNetwork" not in meta:
        raise ValueError(f"path: {path} is not a nas.kernels quantized network file")
    return _decode(json.loads(meta["nas.kernels.QuantizedNetwork"]), load_file(path))
