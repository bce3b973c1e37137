"""NumPy side: the one image transform (normalise, resize) and splits as normalised float32 NCHW batches.

No torch here: evaluating an exported checkpoint (`nas.export.QuantizedModel.evaluate`) reads its data through
:class:`ArraySplits`, and the torch side (`nas.data.tensors`, the streamed loader) wraps :func:`normalise`, so both
give equal values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache

import numpy as np

from nas.data.dataset import Dataset, Splits
from nas.data.stream import StreamDataset

__all__ = ["ArraySplits", "Resolution", "channel_stats", "normalise", "stats_of_chunks"]

Resolution = int | tuple[int, int] | None
_CHUNK = 2048


def _size(resolution: Resolution, native: tuple[int, int]) -> tuple[int, int]:
    if resolution is None:
        return native
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    if min(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return int(resolution[0]), int(resolution[1])


def _chunks(data: Dataset | StreamDataset) -> Iterator[np.ndarray]:
    """Every image of `data` in order, `_CHUNK` at a time (a streamed dataset reads them from disk)."""
    if isinstance(data, StreamDataset):
        yield from data.chunks(_CHUNK)
        return
    for i in range(0, len(data), _CHUNK):
        yield data.x[i : i + _CHUNK]


def channel_stats(data: Dataset | StreamDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64) of the raw pixel values, computed in chunks (in this
    process; `nas.data.stream_channel_stats` reads a streamed dataset with decoding workers instead)."""
    return stats_of_chunks(_chunks(data), data.in_channels, len(data) * data.resolution[0] * data.resolution[1],
                           data.name)


def stats_of_chunks(chunks: Iterable[np.ndarray], channels: int, pixels: int,
                    name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`channel_stats` of the NCHW images in ``chunks`` (``pixels`` per channel in all).

    uint8 images are summed in int64 (squares in uint16, which holds 255**2): exact, so the result does not
    depend on the chunking, and equal to float64 sums while those stay below 2**53 (they are whole numbers);
    it needs 3 bytes a pixel where float64 needed 16.
    """
    total, total_sq = np.zeros(channels), np.zeros(channels)
    exact, exact_sq = np.zeros(channels, np.int64), np.zeros(channels, np.int64)
    for chunk in chunks:
        if chunk.dtype == np.uint8:
            exact += chunk.sum(axis=(0, 2, 3), dtype=np.int64)
            exact_sq += np.square(chunk, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.int64)
            continue
        part = chunk.astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    if pixels == 0:
        raise ValueError(f"{name}: cannot compute statistics of an empty dataset")
    total, total_sq = total + exact, total_sq + exact_sq  # one of each pair is zero: a dataset has one dtype
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    return mean, np.where(std > 1e-12, std, 1.0)


@cache
def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float32 weights of bilinear resizing along one axis (half-pixel centres, as PyTorch's
    `align_corners=False`), antialiased when shrinking: a triangle filter widened by the scale and normalised
    (PyTorch's `antialias=True`). Upsampling reduces to plain linear interpolation with clamped edges."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle's half-width in input pixels
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(1.0 - np.abs((j - centre + 0.5) / support), 0.0)
        weights[i, lo:hi] = w / w.sum()
    return weights.astype(np.float32)


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NCHW images (as stored) as ``(x - mean) / std`` float32 resized bilinearly to ``size`` (antialiased when
    shrinking): the one transform behind every batch, in memory or streamed, torch or NumPy."""
    c, native = images.shape[1], (images.shape[2], images.shape[3])
    m = np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1)
    part = (np.asarray(images).astype(np.float32) - m) / s
    if size != native:
        rows, cols = _resize_weights(native[0], size[0]), _resize_weights(native[1], size[1])
        part = np.ascontiguousarray(np.matmul(np.matmul(rows, part), cols.T), dtype=np.float32)
    return part


class ArraySplits:
    """Train / val / test (in memory or streamed from disk) as normalised float32 NumPy batches, read in this
    process: the data source of checkpoint evaluation, which needs no torch. Normalisation uses the mean / std of
    the *train* split only, as :class:`~nas.data.TensorSplits` does."""

    def __init__(self, splits: Splits, stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.splits = splits
        self.mean, self.std = channel_stats(splits.train) if stats is None else stats

    def eval_batches(self, part: str, resolution: Resolution = None,
                     batch_size: int = 500) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x, y)`` of ``part`` in order, ``batch_size`` at a time, without augmentation."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        data: Dataset | StreamDataset = getattr(self.splits, part)
        size = _size(resolution, data.resolution)
        for lo in range(0, len(data), batch_size):
            idx = np.arange(lo, min(lo + batch_size, len(data)))
            raw = data.read(idx) if isinstance(data, StreamDataset) else data.x[lo : lo + batch_size]
            yield normalise(raw, self.mean, self.std, size), data.y[idx]
