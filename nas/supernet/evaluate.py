"""Sub-network accuracy in well under a second: extract, recalibrate batch norm on a few images, score."""

from __future__ import annotations

import time

import torch

import search_spaces as ss
from nas.cores import fair_threads
from nas.data import Splits, TensorSplits
from nas.supernet.model import Supernet
from nas.train import accuracy, as_tensor_splits, recalibrate_bn


class SubnetEvaluator:
    """Validation accuracy of sub-networks of a trained supernet.

    Each call extracts the sub-network, re-estimates its batch-norm statistics on a fixed, seeded subset of
    `calib_images` training images (the shared running statistics of a supernet fit no single sub-network), and
    scores it on the cached `part` tensors at the architecture's resolution.
    """

    def __init__(self, supernet: Supernet, splits: Splits | TensorSplits, part: str = "val",
                 calib_images: int = 256, seed: int = 0):
        self.supernet = supernet
        self.data = as_tensor_splits(splits)
        self.part = part
        n = len(self.data.splits.train)
        self.calib_index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(calib_images, n)]
        self._calib: dict[int, torch.Tensor] = {}

    def calibration_images(self, resolution: int) -> torch.Tensor:
        """The fixed calibration subset of the training images at `resolution`."""
        if resolution not in self._calib:
            self._calib[resolution] = self.data.tensors("train", resolution)[0][self.calib_index]
        return self._calib[resolution]

    def model(self, arch: ss.Arch) -> ss.MBConvNet:
        """The extracted sub-network with recalibrated batch norm, in eval mode."""
        with fair_threads():  # the caller's thread count at most, fewer while other processes keep the cores busy
            return self._channels_last(arch).to(memory_format=torch.contiguous_format)

    def _channels_last(self, arch: ss.Arch) -> ss.MBConvNet:
        # oneDNN's NHWC kernels: a trial (recalibration + scoring) takes ~0.7 s instead of ~1.1 s
        model = self.supernet.extract(arch).to(memory_format=torch.channels_last)
        recalibrate_bn(model, self.calibration_images(arch.resolution))
        return model

    def __call__(self, arch: ss.Arch) -> float:
        """Top-1 accuracy of sub-network `arch` on the evaluator's split."""
        x, y = self.data.tensors(self.part, arch.resolution)
        with fair_threads():  # the caller's thread count at most, fewer while other processes keep the cores busy
            return accuracy(self._channels_last(arch), x, y)

    def evaluate_many(self, archs: list[ss.Arch]) -> tuple[list[float], float]:
        """Accuracies of `archs` and the throughput in sub-networks evaluated per second."""
        start = time.perf_counter()
        accs = [self(a) for a in archs]
        return accs, len(archs) / max(time.perf_counter() - start, 1e-9)
