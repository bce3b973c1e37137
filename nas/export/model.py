"""`QuantizedModel`: a quantized network on the kernel library plus what export and evaluation need."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas.kernels import QuantizedNetwork
from search_spaces import Arch


@dataclass
class QuantizedModel:
    """Runs on the integer kernels: `model(x)` -> float32 logits, `model.predict(x)` -> labels.

    `x` is float NCHW, normalised as for the PyTorch model (NumPy array or torch tensor). `act_qparams` (tensor
    name -> (scale, zero point)) and `weight_scales` (layer -> float per-channel scale) are the float grid of the
    integer network, kept for ONNX export and inspection. `metadata` is what the checkpoint records.
    """

    network: QuantizedNetwork
    arch: Arch
    act_qparams: dict[str, tuple[float, int]]
    weight_scales: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    def __call__(self, x: Any, batch_size: int = 256) -> np.ndarray:
        x = _numpy(x)
        if x.ndim == 3:
            x = x[None]
        outs = [self.network.run(np.ascontiguousarray(x[i : i + batch_size]), threads=self.threads)
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.arch.num_classes), np.float32)

    def predict(self, x: Any) -> np.ndarray:
        """Top-1 class indices."""
        return self(x).argmax(1)

    def accuracy(self, x: Any, y: Any) -> float:
        """Top-1 accuracy on (x, y)."""
        return float((self.predict(x) == _numpy(y)).mean())

    @property
    def weight_bytes(self) -> int:
        return self.network.weight_bytes()

    def bench(self, batch: int = 1, threads: int = 1, reps: int = 50, warmup: int = 5) -> dict[str, float]:
        """Measured latency on the kernels (median and 10th/90th percentile, ms) for `batch` random inputs."""
        rng = np.random.default_rng(0)
        a = self.arch
        x = self.network.quantize_input(rng.standard_normal((batch, a.in_channels, a.resolution, a.resolution))
                                        .astype(np.float32))
        for _ in range(warmup):
            self.network.run(x, threads=threads)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            self.network.run(x, threads=threads)
            times.append((time.perf_counter() - t) * 1e3)
        return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
                "p90_ms": float(np.percentile(times, 90)), "batch": batch, "threads": threads, "reps": reps}

    def save(self, path: str, **metadata: Any) -> str:
        """Write a checkpoint directory (atomically); see `nas.export.save`."""
        from nas.export.checkpoint import save

        return save(self, path, **metadata)

    def to_onnx(self, path: str) -> str:
        """Write an ONNX QDQ model of this network; see `nas.export.to_onnx`."""
        from nas.export.onnx_qdq import to_onnx

        return to_onnx(self, path)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
