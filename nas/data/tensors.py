"""Torch side: splits as normalised float32 NCHW tensors at a chosen resolution, and their training batches.
The transform itself (`normalise`, `channel_stats`) is NumPy's, in `nas.data.arrays`.

Small datasets stay whole in memory as tensors; :class:`MemoryBatches` slices them with a seeded permutation,
so training on two CPU cores spends no time in worker processes or per-sample Python code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from nas.data.arrays import _CHUNK, Resolution, _size, channel_stats, normalise
from nas.data.dataset import Dataset, Splits

__all__ = ["Augment", "Batch", "DataSource", "MemoryBatches", "TensorSplits", "TrainBatches", "epoch_order",
           "seeded_generator", "to_tensors"]


def to_tensors(
    data: Dataset, resolution: Resolution, mean: np.ndarray, std: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as ``(x - mean) / std`` float32 NCHW resized bilinearly to ``resolution``; labels as int64.

    Downsampling uses antialiasing so small targets do not alias. Work is chunked to bound peak memory.
    """
    h, w = _size(resolution, data.resolution)
    n, c = len(data), data.in_channels
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    for i in range(0, n, _CHUNK):
        part = data.x[i : i + _CHUNK]
        out[i : i + len(part)] = torch.from_numpy(normalise(part, mean, std, (h, w)))
    return out, torch.from_numpy(data.y.copy())


class TensorSplits:
    """Train / val / test as normalised tensors, built on first use and cached per (part, resolution).

    Normalisation uses the mean/std of the *train* split only, so nothing leaks from val or test; ``stats`` gives
    them instead (subsets held in memory of larger data, normalised as the whole train split was).
    """

    def __init__(self, splits: Splits, stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.splits = splits
        self.mean, self.std = channel_stats(splits.train) if stats is None else stats
        self._cache: dict[tuple[str, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def tensors(self, part: str, resolution: Resolution = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` for ``part`` in ``train``/``val``/``test`` at ``resolution`` (native if None)."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        data: Dataset = getattr(self.splits, part)
        key = (part, _size(resolution, data.resolution))
        if key not in self._cache:
            self._cache[key] = to_tensors(data, key[1], self.mean, self.std)
        return self._cache[key]

    def clear(self) -> None:
        """Drop every cached tensor."""
        self._cache.clear()

    def train_batches(self, batch_size: int, *, resolutions: Sequence[Resolution] = (None,), seed: int = 0,
                      shuffle: bool = True, drop_last: bool = False, augment: Augment | None = None) -> MemoryBatches:
        """Training batches of the train split at each of ``resolutions`` (see :class:`TrainBatches`)."""
        data = self.splits.train
        xs = {_size(r, data.resolution): self.tensors("train", r)[0] for r in resolutions}
        return MemoryBatches(xs, self.tensors("train", resolutions[0])[1], batch_size, seed=seed, shuffle=shuffle,
                             drop_last=drop_last, augment=augment)

    def eval_batches(self, part: str, resolution: Resolution = None,
                     batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` of ``part`` in order, ``batch_size`` at a time, without augmentation."""
        x, y = self.tensors(part, resolution)
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]


@dataclass(frozen=True)
class Augment:
    """Light training augmentation: random shift by up to ``pad`` pixels (reflect-padded crop), optional
    horizontal flip (right for CIFAR-like photos, wrong for digits)."""

    pad: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a CPU batch ``x`` (B, C, H, W) with randomness drawn from ``generator``.

        Works on NumPy views: per-image slice copies beat torch's advanced indexing by >10x on 2 busy cores.
        """
        b, _, h, w = x.shape
        out = x.detach().numpy()
        if self.pad > 0:
            p = self.pad
            if p >= min(h, w):
                raise ValueError(f"pad {p} must be smaller than the image size {h}x{w}")
            padded = np.pad(out, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
            out = np.empty_like(out)
            for i in range(b):
                out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        if self.flip:
            mask = (torch.rand(b, generator=generator) < 0.5).numpy()
            out = out.copy() if self.pad == 0 else out
            out[mask] = out[mask][..., ::-1]
        return torch.from_numpy(out)


def seeded_generator(*key: int) -> torch.Generator:
    """A torch generator seeded from ``key`` by NumPy's SeedSequence (e.g. (seed, epoch), (seed, epoch, batch))."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of ``n`` images in epoch ``epoch``: a seeded permutation drawn from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return torch.randperm(n, generator=seeded_generator(seed, epoch)).numpy()


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch of ``n`` images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


@dataclass(frozen=True)
class Batch:
    """One training batch: normalised float32 NCHW images per resolution ``(h, w)``, labels, and the positions
    ``idx`` of the images in the train split (to index per-image tensors such as distillation targets)."""

    xs: dict[tuple[int, int], torch.Tensor]
    y: torch.Tensor
    idx: torch.Tensor

    @property
    def x(self) -> torch.Tensor:
        """The images, for batches made at a single resolution."""
        if len(self.xs) != 1:
            raise ValueError(f"a batch at {len(self.xs)} resolutions: choose one with at(resolution)")
        return next(iter(self.xs.values()))

    def at(self, resolution: int | tuple[int, int]) -> torch.Tensor:
        """The images at ``resolution`` (one of those the batches were made at)."""
        key = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if key not in self.xs:
            raise KeyError(f"resolution {key} not among this batch's {sorted(self.xs)}")
        return self.xs[key]


class TrainBatches(Protocol):
    """Training batches for epoch after epoch, in memory (:class:`MemoryBatches`) or streamed from disk
    (``nas.data.loader.StreamBatches``): the same images, order and augmentation for the same (seed, epoch).

    The order of epoch e is :func:`epoch_order`; augmentation of batch k draws
    from ``seeded_generator(seed, e, k)``, so it does not depend on which worker made the batch.
    """

    def __len__(self) -> int: ...

    def batches(self, epoch: int) -> Iterator[Batch]: ...


class DataSource(Protocol):
    """What the training loops read data through: :class:`TensorSplits` (in memory) or
    ``nas.data.loader.StreamSplits`` (from disk)."""

    splits: Splits
    mean: np.ndarray
    std: np.ndarray

    def train_batches(self, batch_size: int, *, resolutions: Sequence[Resolution] = (None,), seed: int = 0,
                      shuffle: bool = True, drop_last: bool = False,
                      augment: Augment | None = None) -> TrainBatches: ...

    def eval_batches(self, part: str, resolution: Resolution = None,
                     batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class MemoryBatches:
    """:class:`TrainBatches` over in-memory tensors (one per resolution, the same images)."""

    def __init__(self, xs: dict[tuple[int, int], torch.Tensor], y: torch.Tensor, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, augment: Augment | None = None) -> None:
        if any(len(x) != len(y) for x in xs.values()):
            raise ValueError(f"{len(y)} labels for {[len(x) for x in xs.values()]} images")
        self._xs = {size: x.detach().cpu().numpy() for size, x in xs.items()}
        self._y = y.detach().cpu().numpy()
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.drop_last, self.augment = drop_last, augment
        self._len = num_batches(len(y), batch_size, drop_last)

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch``."""
        order = epoch_order(len(self._y), self.seed, epoch, self.shuffle)
        for k in range(self._len):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            xs = {}
            for size, x in self._xs.items():
                xb = torch.from_numpy(x.take(idx, axis=0))  # NumPy's take: torch's index_select was far slower
                xs[size] = xb if self.augment is None else self.augment(xb, seeded_generator(self.seed, epoch, k))
            yield Batch(xs, torch.from_numpy(self._y.take(idx)), torch.from_numpy(idx))
