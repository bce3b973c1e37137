"""Datasets for search and final evaluation: loading (format detected), splits, and in-memory tensors.

>>> from nas.data import load_dataset, split, TensorSplits
>>> splits = split(load_dataset("digits"), seed=0)
>>> x, y = TensorSplits(splits).tensors("train", resolution=32)

Data larger than a memory limit streams from disk: ``load_dataset(path, memory_limit=parse_memory_limit("2GiB"))``
returns a :class:`StreamDataset`; ``data_source(split(...))`` gives :class:`StreamSplits` for it (else
:class:`TensorSplits`), and both offer ``train_batches`` / ``eval_batches`` (:class:`DataSource`). Those two, and
the other torch-side names, are imported on first use: :class:`ArraySplits` (NumPy ``eval_batches``, what checkpoint
evaluation reads) and everything else here need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.data.arrays import ArraySplits, channel_stats, normalise
from nas.data.dataset import Dataset, Splits, split, split_indices, stratified_subset
from nas.data.formats import DatasetError, data_roots, load_dataset, load_digits, read_idx
from nas.data.spec import DataLoading, DataSpec
from nas.data.stream import StreamDataset, default_memory_limit, parse_memory_limit

if TYPE_CHECKING:
    from nas.data.tensors import DataSource

# The torch side (batches as tensors, streamed through torch's DataLoader), imported on first use so that reading
# data for an exported checkpoint (`ArraySplits`) never imports torch.
_TORCH_NAMES = {
    "StreamBatches": "nas.data.loader", "StreamSplits": "nas.data.loader", "stream_channel_stats": "nas.data.loader",
    "Augment": "nas.data.tensors", "Batch": "nas.data.tensors", "DataSource": "nas.data.tensors",
    "MemoryBatches": "nas.data.tensors", "TensorSplits": "nas.data.tensors", "TrainBatches": "nas.data.tensors",
    "to_tensors": "nas.data.tensors",
}


def __getattr__(name: str) -> object:
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def data_source(splits: Splits, workers: int = 2) -> DataSource:
    """The batch source for ``splits``: :class:`StreamSplits` when they are streamed from disk, else
    :class:`TensorSplits` (``workers``: decoding processes of a streamed source)."""
    from nas.data.loader import StreamSplits
    from nas.data.tensors import TensorSplits

    if isinstance(splits.train, StreamDataset):
        return StreamSplits(splits, workers)
    return TensorSplits(splits)


__all__ = [
    "ArraySplits",
    "Augment",
    "Batch",
    "DataLoading",
    "DataSource",
    "DataSpec",
    "Dataset",
    "DatasetError",
    "MemoryBatches",
    "Splits",
    "StreamBatches",
    "StreamDataset",
    "StreamSplits",
    "TensorSplits",
    "TrainBatches",
    "channel_stats",
    "data_roots",
    "data_source",
    "default_memory_limit",
    "load_dataset",
    "load_digits",
    "normalise",
    "parse_memory_limit",
    "read_idx",
    "split",
    "split_indices",
    "stratified_subset",
    "stream_channel_stats",
    "to_tensors",
]
