"""Latency models: per-op lookup tables profiled on a device, and a predictor of whole-network latency.

Public API: `LatencyTable.load(path)`, `Predictor(table).predict_ms(arch)`, `default_table_path(device)`,
`DeviceSpec`/`get_device`, `enumerate_ops`, `profile`/`profile_ray`.
"""

from latency_models.devices import DEVICE_NAMES, DeviceSpec, get_device
from latency_models.ops import OpKey, arch_ops, enumerate_ops, space_ops
from latency_models.predictor import Overhead, Predictor
from latency_models.profiling import estimate_seconds, profile, profile_ray
from latency_models.table import (
    FingerprintMismatch,
    LatencyTable,
    LatencyTableError,
    default_table_path,
)


def load_predictor(device: str = "kernels", path: str | None = None, check: bool = True) -> Predictor:
    """The predictor for `device` from `path` (default `default_table_path(device)`), its fingerprint checked
    against this machine (a mismatch warns)."""
    table = LatencyTable.load(path or default_table_path(device), device)
    if check:
        table.check_fingerprint(get_device(DeviceSpec.make(device)).fingerprint())
    return Predictor(table)


__all__ = [
    "DEVICE_NAMES", "DeviceSpec", "FingerprintMismatch", "LatencyTable", "LatencyTableError", "OpKey", "Overhead",
    "Predictor", "arch_ops", "default_table_path", "enumerate_ops", "estimate_seconds", "get_device",
    "load_predictor", "profile", "profile_ray", "space_ops",
]
