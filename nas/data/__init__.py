"""Datasets for search and final evaluation: loading (format detected), splits, and in-memory tensors.

>>> from nas.data import load_dataset, split, TensorSplits
>>> splits = split(load_dataset("digits"), seed=0)
>>> x, y = TensorSplits(splits).tensors("train", resolution=32)

Data larger than a memory limit streams from disk: ``load_dataset(path, memory_limit=parse_memory_limit("2GiB"))``
returns a :class:`StreamDataset`; ``data_source(split(...))`` gives :class:`StreamSplits` for it (else
:class:`TensorSplits`), and both offer ``train_batches`` / ``eval_batches`` (:class:`DataSource`).
"""

from nas.data.dataset import Dataset, Splits, split, split_indices, stratified_subset
from nas.data.formats import DatasetError, data_roots, load_dataset, load_digits, read_idx
from nas.data.loader import StreamBatches, StreamSplits, stream_channel_stats
from nas.data.spec import DataLoading, DataSpec
from nas.data.stream import StreamDataset, default_memory_limit, parse_memory_limit
from nas.data.tensors import (
    Augment,
    Batch,
    DataSource,
    MemoryBatches,
    TensorSplits,
    TrainBatches,
    channel_stats,
    to_tensors,
)


def data_source(splits: Splits, workers: int = 2) -> DataSource:
    """The batch source for ``splits``: :class:`StreamSplits` when they are streamed from disk, else
    :class:`TensorSplits` (``workers``: decoding processes of a streamed source)."""
    if isinstance(splits.train, StreamDataset):
        return StreamSplits(splits, workers)
    return TensorSplits(splits)


__all__ = [
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
    "parse_memory_limit",
    "read_idx",
    "split",
    "split_indices",
    "stratified_subset",
    "stream_channel_stats",
    "to_tensors",
]
