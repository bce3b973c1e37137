"""`QuantizedModel`: a quantized network on the kernel library plus what export and evaluation need."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas.data import ArraySplits, Splits
from nas.kernels import QuantizedNetwork
from nas.timing import time_calls
from search_spaces import Arch


class DataMismatchError(ValueError):
    """Data whose classes or image channels differ from those the network was built for."""


@dataclass
class Evaluation:
    """Top-1 accuracy of a network on one part of a dataset, with the labels and predictions behind it (and those
    of another runtime given the same inputs, when asked: `QuantizedModel.evaluate(..., also=...)`)."""

    part: str
    top1: float
    y: np.ndarray
    pred: np.ndarray
    also_pred: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of images scored."""
        return len(self.y)


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
    source: str = ""  # the checkpoint directory it was loaded from, named in errors

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
        """Top-1 accuracy on (x, y); refuses zero images rather than report a mean of nothing."""
        y = _numpy(y)
        if len(y) == 0:
            raise ValueError(f"checkpoint {self._name()}: no images to compute top-1 accuracy on")
        return float((self.predict(x) == y).mean())

    def check_data(self, data: Any, where: str = "data") -> None:
        """Refuse `data` (a nas.data `Dataset`, `Splits` or `TensorSplits`) whose number of classes or image
        channels differ from the network's, or whose class names differ from those the checkpoint records (when it
        records any): its scores would be meaningless (labels past the head never match) or it would fail deep
        inside the kernels. The image size may differ; evaluation resizes to the network's."""
        data = getattr(data, "splits", data)  # TensorSplits -> Splits
        data = getattr(data, "train", data)  # Splits -> its train part, whose classes and shape all parts share
        a = self.arch
        k, c, (h, w) = data.num_classes, data.in_channels, data.resolution
        if (k, c) == (a.num_classes, a.in_channels):
            names = self.metadata.get("class_names")  # recorded by checkpoints that carry them
            if isinstance(names, list) and [str(n) for n in names] != list(data.class_names):
                diff = [i for i in range(min(len(names), k)) if str(names[i]) != data.class_names[i]]
                detail = (f"class {diff[0]} is {data.class_names[diff[0]]!r} in the data but {str(names[diff[0]])!r} "
                          "in the checkpoint's class_names" if diff
                          else f"the checkpoint's class_names lists {len(names)} names for {k} classes")
                raise DataMismatchError(f"{where} does not match checkpoint {self._name()}: {detail}")
            return
        size = "" if (h, w) == (a.resolution, a.resolution) else f"; images are resized from {h}x{w}"
        raise DataMismatchError(
            f"{where} does not match checkpoint {self._name()}: the data has {k} classes and {c}-channel {h}x{w} "
            f"images, the network predicts {a.num_classes} classes from {a.in_channels}-channel "
            f"{a.resolution}x{a.resolution} input{size}"
        )

    def evaluate(self, data: Any, part: str = "test", where: str = "data",
                 also: Callable[[np.ndarray], np.ndarray] | None = None) -> Evaluation:
        """Top-1 accuracy on `part` ('train', 'val' or 'test') of `data` (`nas.data.Splits`, in memory or streamed
        from disk and read as NumPy batches by `nas.data.ArraySplits`, without torch; or any source with
        `eval_batches`, such as a `DataSource`), after `check_data`, batch by batch (data larger than memory never
        is held whole). `also`: another runtime's logits for the same normalised float NCHW batches (e.g. ONNX Runtime),
        whose top-1 predictions come back as `also_pred`. `where` names the data in errors ("--data PATH")."""
        self.check_data(data, where)  # before a source computes anything from the data
        source = ArraySplits(data) if isinstance(data, Splits) else data
        ys, preds, others = [], [], []
        for x, y in source.eval_batches(part, self.arch.resolution):
            xn = _numpy(x)
            ys.append(_numpy(y))
            preds.append(self.predict(xn))
            if also is not None:
                others.append(np.asarray(also(xn)).argmax(1))
        if not ys or sum(len(y) for y in ys) == 0:
            raise ValueError(f"{where}: the {part} split has no images to evaluate checkpoint {self._name()} on")
        y, pred = np.concatenate(ys), np.concatenate(preds)
        return Evaluation(part, float((pred == y).mean()), y, pred, np.concatenate(others) if others else None)

    def _name(self) -> str:
        return self.source or f"with arch {self.arch}"

    @property
    def weight_bytes(self) -> int:
        return self.network.weight_bytes()

    def runner(self, batch: int = 1, threads: int = 1) -> Callable[[], object]:
        """A zero-argument call running the integer network once on `batch` random (pre-quantized) inputs: what
        `bench` and `nas.export.pipeline.measure_round_robin` time."""
        rng = np.random.default_rng(0)
        a = self.arch
        x = self.network.quantize_input(rng.standard_normal((batch, a.in_channels, a.resolution, a.resolution))
                                        .astype(np.float32))
        return lambda: self.network.run(x, threads=threads)

    def bench(self, batch: int = 1, threads: int = 1, reps: int = 50, warmup: int = 5) -> dict[str, float]:
        """Measured latency on the kernels (median and 10th/90th percentile, ms) for `batch` random inputs."""
        times = time_calls(self.runner(batch, threads), reps=reps, warmup=warmup, min_sample_s=0,
                           max_total_s=math.inf)
        return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
                "p90_ms": float(np.percentile(times, 90)), "batch": batch, "threads": threads, "reps": reps}


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
