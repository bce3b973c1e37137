"""Batches of a streamed dataset, decoded in worker processes: the disk-backed :class:`~nas.data.DataSource`.

:class:`StreamSplits` is :class:`~nas.data.TensorSplits` for splits of :class:`~nas.data.stream.StreamDataset`:
the same normalisation (mean / std of the train split, computed by one chunked pass), the same batches in the
same order with the same augmentation for a seed (the images come from disk instead of a tensor), and the same
evaluation batches. Memory stays bounded by the batches in flight: ``workers * prefetch`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from nas.data.arrays import Resolution, _size, normalise, stats_of_chunks
from nas.data.dataset import DatasetError, Splits
from nas.data.stream import StreamDataset
from nas.data.tensors import Augment, Batch, epoch_order, num_batches, seeded_generator

__all__ = ["StreamBatches", "StreamSplits", "stream_channel_stats"]

_STATS_CHUNK_BYTES = 2 << 20  # of uint8 images per chunk of the statistics pass: memory, not count, is bounded
_Item = tuple[int, int, np.ndarray]  # (epoch, batch number, positions in the part)


class _Plan(Sampler[_Item]):
    """The batches of an epoch as (epoch, k, positions), in order; iterated in the main process, so setting
    ``epoch`` before starting an epoch reaches persistent workers too."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.count = num_batches(n, batch_size, drop_last)
        self.epoch = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[_Item]:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        for k in range(self.count):
            yield self.epoch, k, order[k * self.batch_size : (k + 1) * self.batch_size]


class _Reader(TorchDataset):
    """Runs in the workers: reads a batch's images and normalises, resizes and augments them."""

    def __init__(self, data: StreamDataset, mean: np.ndarray | None, std: np.ndarray | None,
                 sizes: Sequence[tuple[int, int]], seed: int, augment: Augment | None) -> None:
        self.data, self.mean, self.std, self.sizes = data, mean, std, tuple(sizes)
        self.seed, self.augment = seed, augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: _Item) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor, torch.Tensor]:
        epoch, k, idx = item
        raw = self.data.read(idx)
        y, where = torch.from_numpy(self.data.y[idx]), torch.from_numpy(np.ascontiguousarray(idx))
        if self.mean is None:  # the raw images, for the statistics pass
            return {self.data.resolution: torch.from_numpy(raw)}, y, where
        xs = {}
        for size in self.sizes:
            x = torch.from_numpy(normalise(raw, self.mean, self.std, size))
            xs[size] = x if self.augment is None else self.augment(x, seeded_generator(self.seed, epoch, k))
        return xs, y, where


def _loader(reader: _Reader, plan: _Plan, workers: int, prefetch: int, persistent: bool) -> DataLoader:
    # batch_size=None: the plan's items are whole batches, which the reader builds in one go
    extra = {"prefetch_factor": prefetch, "persistent_workers": persistent} if workers > 0 else {}
    return DataLoader(reader, batch_size=None, sampler=plan, num_workers=workers, **extra)


class StreamBatches:
    """:class:`~nas.data.TrainBatches` read from disk by ``workers`` processes (0: in this process), at most
    ``workers * prefetch`` batches ahead. Workers persist from one epoch to the next unless not ``persistent``."""

    def __init__(self, data: StreamDataset, mean: np.ndarray, std: np.ndarray, batch_size: int, *,
                 resolutions: Sequence[Resolution] = (None,), seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, augment: Augment | None = None, workers: int = 2,
                 prefetch: int = 2, persistent: bool = True) -> None:
        sizes = [_size(r, data.resolution) for r in resolutions]
        self._plan = _Plan(len(data), batch_size, seed, shuffle, drop_last)
        self._loader = _loader(_Reader(data, mean, std, sizes, seed, augment), self._plan, workers, prefetch,
                               persistent=persistent and workers > 0)

    def __len__(self) -> int:
        return len(self._plan)

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch``."""
        self._plan.epoch = epoch
        for xs, y, idx in self._loader:
            yield Batch(xs, y, idx)


def stream_channel_stats(data: StreamDataset, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nas.data.channel_stats` of a streamed dataset: one pass, chunk by chunk, equal to the in-memory
    result (whole-number float64 sums do not depend on the chunking)."""
    per_chunk = max(1, _STATS_CHUNK_BYTES // math.prod(data.rows.chw))
    plan = _Plan(len(data), per_chunk, 0, False, False)
    loader = _loader(_Reader(data, None, None, (), 0, None), plan, workers, 2, persistent=False)
    chunks = (xs[data.resolution].numpy() for xs, _, _ in loader)
    return stats_of_chunks(chunks, data.in_channels, len(data) * data.resolution[0] * data.resolution[1], data.name)


class StreamSplits:
    """Train / val / test of a streamed dataset as a :class:`~nas.data.DataSource`: :class:`~nas.data.TensorSplits`
    for data that does not fit in memory. Normalisation uses the mean / std of the *train* split only."""

    def __init__(self, splits: Splits, workers: int = 2, prefetch: int = 2) -> None:
        for part in ("train", "val", "test"):
            if not isinstance(getattr(splits, part), StreamDataset):
                raise TypeError(f"StreamSplits needs streamed splits; the {part} split is held in memory "
                                "(use TensorSplits)")
        self.splits, self.workers, self.prefetch = splits, workers, prefetch
        self.mean, self.std = stream_channel_stats(splits.train, workers)

    def tensors(self, part: str, resolution: Resolution = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Refused: a streamed split is too large to hold as one tensor (read it with the batch methods)."""
        raise DatasetError(f"{self.splits.train.source}: streamed from disk (larger than the memory limit), so the "
                           f"{part} split is not held as one tensor; read it with train_batches / eval_batches")

    def train_batches(self, batch_size: int, *, resolutions: Sequence[Resolution] = (None,), seed: int = 0,
                      shuffle: bool = True, drop_last: bool = False, augment: Augment | None = None) -> StreamBatches:
        """Training batches of the train split at each of ``resolutions`` (see :class:`~nas.data.TrainBatches`)."""
        return StreamBatches(self.splits.train, self.mean, self.std, batch_size, resolutions=resolutions, seed=seed,
                             shuffle=shuffle, drop_last=drop_last, augment=augment, workers=self.workers,
                             prefetch=self.prefetch)

    def eval_batches(self, part: str, resolution: Resolution = None,
                     batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` of ``part`` in order, ``batch_size`` at a time, without augmentation."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        data: StreamDataset = getattr(self.splits, part)
        source = StreamBatches(data, self.mean, self.std, batch_size, resolutions=(resolution,), shuffle=False,
                               workers=self.workers, prefetch=self.prefetch, persistent=False)
        for batch in source.batches(0):
            yield batch.x, batch.y
