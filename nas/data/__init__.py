"""Datasets for search and final evaluation: loading (format detected), splits, and in-memory tensors.

>>> from nas.data import load_dataset, split, TensorSplits, BatchLoader
>>> splits = split(load_dataset("digits"), seed=0)
>>> x, y = TensorSplits(splits).tensors("train", resolution=32)
"""

from nas.data.dataset import Dataset, Splits, split, split_indices, stratified_subset
from nas.data.formats import DatasetError, data_roots, load_dataset, load_digits, read_idx
from nas.data.spec import DataSpec
from nas.data.tensors import Augment, BatchLoader, TensorSplits, channel_stats, to_tensors

__all__ = [
    "Augment",
    "BatchLoader",
    "DataSpec",
    "Dataset",
    "DatasetError",
    "Splits",
    "TensorSplits",
    "channel_stats",
    "data_roots",
    "load_dataset",
    "load_digits",
    "read_idx",
    "split",
    "split_indices",
    "stratified_subset",
    "to_tensors",
]
