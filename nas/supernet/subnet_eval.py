"""Sub-network accuracy in well under a second: extract, recalibrate batch norm on a few images, score."""

from __future__ import annotations

import time

import torch

import search_spaces as ss
from nas.backend import CPU, TrainBackend
from nas.cores import fair_threads
from nas.data import DataSource, Splits
from nas.supernet.model import Supernet
from nas.train import as_source, recalibrate_bn, split_accuracy, train_images


class SubnetEvaluator:
    """Validation accuracy of sub-networks of a trained supernet.

    Each call extracts the sub-network, re-estimates its batch-norm statistics on a fixed, seeded subset of
    `calib_images` training images (the shared running statistics of a supernet fit no single sub-network), and
    scores it on the `part` split at the architecture's resolution (cached tensors, or batches streamed from
    disk), on `backend`'s device and precision (the supernet may live anywhere: the sub-network is extracted on
    the CPU and moved).
    """

    def __init__(self, supernet: Supernet, splits: Splits | DataSource, part: str = "val",
                 calib_images: int = 256, seed: int = 0, backend: TrainBackend = CPU):
        self.supernet = supernet
        self.backend = backend
        self.data = as_source(splits)
        self.part = part
        n = len(self.data.splits.train)
        self.calib_index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(calib_images, n)]
        self._calib: dict[int, torch.Tensor] = {}

    def calibration_images(self, resolution: int) -> torch.Tensor:
        """The fixed calibration subset of the training images at `resolution` (held in memory: a few hundred)."""
        if resolution not in self._calib:
            self._calib[resolution] = train_images(self.data, self.calib_index, resolution)
        return self._calib[resolution]

    def model(self, arch: ss.Arch) -> ss.MBConvNet:
        """The extracted sub-network with recalibrated batch norm, in eval mode, on the CPU."""
        with fair_threads():  # the caller's thread count at most, fewer while other processes keep the cores busy
            return self._channels_last(arch).to("cpu", memory_format=torch.contiguous_format)

    def _channels_last(self, arch: ss.Arch) -> ss.MBConvNet:
        # oneDNN's NHWC kernels: a trial (recalibration + scoring) takes ~0.7 s instead of ~1.1 s
        model = self.backend.module(self.supernet.extract(arch)).to(memory_format=torch.channels_last)
        recalibrate_bn(model, self.calibration_images(arch.resolution), backend=self.backend)
        return model

    def __call__(self, arch: ss.Arch) -> float:
        """Top-1 accuracy of sub-network `arch` on the evaluator's split."""
        with fair_threads():  # the caller's thread count at most, fewer while other processes keep the cores busy
            return split_accuracy(self._channels_last(arch), self.data, self.part, arch.resolution,
                                  backend=self.backend)

    def evaluate_many(self, archs: list[ss.Arch]) -> tuple[list[float], float]:
        """Accuracies of `archs` and the throughput in sub-networks evaluated per second."""
        start = time.perf_counter()
        accs = [self(a) for a in archs]
        return accs, len(archs) / max(time.perf_counter() - start, 1e-9)
