"""The in-memory dataset record and deterministic train / validation / test splits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # split() and stratified_subset() take streamed datasets too: they read only labels
    from nas.data.stream import StreamDataset

__all__ = ["Dataset", "DatasetError", "Splits", "split", "split_indices", "stratified_subset"]

MIN_CLASSES = 2  # a split with fewer classes scores any network 1.000 (or says nothing): refused


class DatasetError(ValueError):
    """A dataset path that is missing, unreadable, inconsistent or in no recognised format, or data too small
    or too uniform to split into usable train / val / test parts."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole image-classification dataset held in memory.

    ``x`` is always **NCHW** (``(N, C, H, W)``), ``uint8`` or ``float32``, with pixel values as the source
    stores them (0..255 for the file formats, 0..16 for scikit-learn's digits); scaling is left to the
    per-dataset mean/std normalisation in :mod:`nas.data.tensors`. ``y`` is ``int64`` in ``[0, num_classes)``.
    ``test`` holds the format's official test set when it has one (MNIST ``t10k-*``, CIFAR ``test_batch``,
    npz ``x_test``, an image folder's ``test/``); :func:`split` then uses it as the test split.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str = ""
    test: Dataset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = self.source or self.name
        if self.x.ndim != 4:
            raise ValueError(f"{where}: images must be NCHW (4-d), got shape {self.x.shape}")
        if self.x.dtype not in (np.uint8, np.float32):
            raise ValueError(f"{where}: images must be uint8 or float32, got {self.x.dtype}")
        if self.y.ndim != 1 or self.y.dtype != np.int64:
            raise ValueError(f"{where}: labels must be a 1-d int64 array, got {self.y.dtype} {self.y.shape}")
        if len(self.y) != len(self.x):
            raise ValueError(f"{where}: {len(self.y)} labels for {len(self.x)} images")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{where}: {len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"{where}: labels span {self.y.min()}..{self.y.max()}, outside 0..{self.num_classes - 1}")
        if self.test is not None and self.test.x.shape[1:] != self.x.shape[1:]:
            raise ValueError(
                f"{where}: test images {self.test.x.shape[1:]} differ from train images {self.x.shape[1:]}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        test = f", test={len(self.test)}" if self.test is not None else ""
        return (
            f"Dataset({self.name!r}, n={len(self)}{test}, shape={tuple(self.x.shape[1:])} {self.x.dtype}, "
            f"classes={self.num_classes}, source={self.source!r})"
        )

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for grayscale, 3 for RGB)."""
        return int(self.x.shape[1])

    @property
    def resolution(self) -> tuple[int, int]:
        """Native ``(height, width)`` of the images."""
        return int(self.x.shape[2]), int(self.x.shape[3])

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        """The images at ``indices`` (in that order), without the official test set."""
        indices = np.asarray(indices, dtype=np.int64)
        return replace(self, name=name or self.name, x=self.x[indices], y=self.y[indices], test=None)

    def describe(self) -> dict[str, object]:
        """JSON-ready summary (for run records and reports)."""
        return summary(self, self.x.shape[1:], str(self.x.dtype))

    def class_counts(self) -> np.ndarray:
        """Images per class, length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes)


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / val / test parts of a dataset. Search reads ``val``; ``test`` is for the final report."""

    train: Dataset
    val: Dataset
    test: Dataset
    seed: int
    official_test: bool

    def describe(self) -> dict[str, object]:
        """JSON-ready summary: sizes of each part, the seed, and whether test is the official set."""
        return {
            "seed": self.seed,
            "official_test": self.official_test,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
        }

    def __post_init__(self) -> None:
        # every evaluation divides by a part's size: an empty part must never reach training or scoring
        for part in ("train", "val", "test"):
            data: Dataset = getattr(self, part)
            if len(data) == 0:
                raise DatasetError(f"{data.source or data.name}: the {part} split is empty; "
                                   "train, val and test each need images")


def _stratified_take(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions of ``y`` into (taken, rest), taking ``round(fraction * n_c)`` of each class c."""
    taken: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        k = int(round(fraction * len(members)))
        taken.append(members[:k])
        rest.append(members[k:])
    if not taken:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def split_indices(
    y: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic, stratified ``(train, val, test)`` index arrays covering ``range(len(y))`` disjointly.

    Each class contributes ``round(test_fraction * n_c)`` images to test, then
    ``round(val_fraction / (1 - test_fraction) * remaining)`` to validation, so the fractions hold per class.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) with sum < 1"
        )
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    test_idx, rest = _stratified_take(y, test_fraction, rng)
    val_share = val_fraction / (1.0 - test_fraction)
    val_pos, train_pos = _stratified_take(y[rest], val_share, rng)
    return rest[train_pos], rest[val_pos], test_idx


def split(dataset: Dataset | StreamDataset, seed: int = 0, val_fraction: float = 0.1,
          test_fraction: float = 0.1) -> Splits:
    """Split ``dataset`` deterministically by ``seed`` (stratified by class; labels only, so a streamed dataset
    splits exactly as the same data in memory).

    If the dataset carries an official test set it becomes ``test`` unchanged, ``test_fraction`` is ignored,
    and validation is ``val_fraction`` of the official training set. Raises :class:`DatasetError` when a part
    would be empty or train / val (and a test taken from the data) would hold fewer than two classes.
    """
    if dataset.test is not None:
        train_idx, val_idx, _ = split_indices(dataset.y, seed, val_fraction, 0.0)
        test = replace(dataset.test, name=f"{dataset.name}/test")
        official = True
    else:
        train_idx, val_idx, test_idx = split_indices(dataset.y, seed, val_fraction, test_fraction)
        test = dataset.subset(test_idx, f"{dataset.name}/test")
        official = False
    train = dataset.subset(train_idx, f"{dataset.name}/train")
    val = dataset.subset(val_idx, f"{dataset.name}/val")
    _check_split(dataset, train, val, test, official, val_fraction, test_fraction)
    return Splits(train=train, val=val, test=test, seed=seed, official_test=official)


def _n_classes(y: np.ndarray) -> int:
    return len(np.unique(y))


def _classes(k: int) -> str:
    return f"{k} class" if k == 1 else f"{k} classes"


def _per_class(data: Dataset) -> str:
    """Images per class, by name for a few classes, else the range (one line for any class count)."""
    counts = np.bincount(data.y, minlength=data.num_classes)
    if data.num_classes <= 10:
        return ", ".join(f"{name}: {c}" for name, c in zip(data.class_names, counts.tolist(), strict=True))
    present = counts[counts > 0]
    if present.size == 0:
        return "none"
    return f"{len(present)} of {data.num_classes} classes present, {present.min()}..{present.max()} images each"


def _check_split(dataset: Dataset, train: Dataset, val: Dataset, test: Dataset, official: bool,
                 val_fraction: float, test_fraction: float) -> None:
    """Refuse a split that cannot train and score a classifier: once, here, before any training."""
    problems = []
    for name, p in (("train", train), ("val", val), ("test", test)):
        if len(p) == 0:
            problems.append(f"{name} would be empty")
        elif _n_classes(p.y) < MIN_CLASSES and not (name == "test" and official):  # the user's own test set
            problems.append(f"{name} would hold {_classes(_n_classes(p.y))}")
    if not problems:
        return
    where = dataset.source or dataset.name
    if _n_classes(dataset.y) < MIN_CLASSES:  # the root cause; every part's shortfall follows from it
        problems = [f"the data has {_classes(_n_classes(dataset.y))}"]
    found = ", ".join(f"{name} {len(p)} images in {_classes(_n_classes(p.y))}"
                      for name, p in (("train", train), ("val", val), ("test", test)))
    took = f"val takes {val_fraction:.0%} of each class" + (
        ", test is the official test set" if official else f", test {test_fraction:.0%}")
    raise DatasetError(
        f"{where}: cannot split {len(dataset)} images into non-empty train / val / test parts with at least "
        f"{MIN_CLASSES} classes each: {'; '.join(problems)} (found {found}; images per class: {_per_class(dataset)}; "
        f"{took})"
    )


def _largest_remainders(counts: np.ndarray, n: int) -> np.ndarray:
    """Images to take per class so the total is exactly ``n`` and each class keeps its share."""
    share = counts * n / counts.sum()
    take = np.floor(share).astype(int)
    take[np.argsort(share - take)[::-1][: n - take.sum()]] += 1
    return np.minimum(take, counts)


def stratified_subset(part: Dataset | StreamDataset, n: int, seed: int,
                      flag: str | None = None) -> Dataset | StreamDataset:
    """`n` images of `part`, each class keeping its share (largest remainders, so exactly `n`, unlike
    `_stratified_take`'s per-class rounding), chosen by `seed`.

    Raises :class:`DatasetError` naming ``flag`` (default: ``--train-images`` / ``--val-images`` after the part's
    name) when the subset would keep fewer than two classes, since it could then not train or score anything.
    """
    if flag is None:
        suffix = part.name.rpartition("/")[2]
        flag = {"train": "--train-images", "val": "--val-images"}.get(suffix, "n")
    classes, counts = np.unique(part.y, return_counts=True)
    take = _largest_remainders(counts, n) if n > 0 and len(part) else np.zeros_like(counts)
    kept = int((take > 0).sum())
    if kept < MIN_CLASSES:
        # the smallest n that would do; the search ends by n = len(part), which keeps every class
        enough = None if len(classes) < MIN_CLASSES else next(
            (m for m in range(max(n, 1) + 1, len(part) + 1)
             if (_largest_remainders(counts, m) > 0).sum() >= MIN_CLASSES), None)
        hint = (f"give at least {enough}" if enough is not None
                else f"{part.name} itself has {_classes(len(classes))}")
        raise DatasetError(
            f"{flag} {n}: a class-stratified subset of the {len(part)} {part.name} images ({_classes(len(classes))}) "
            f"would keep {int(take.sum())} image(s) of {_classes(kept)}, but needs at least {MIN_CLASSES} classes "
            f"({hint})"
        )
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(part.y == c))[:k] for c, k in zip(classes, take, strict=True)]
    return part.subset(np.sort(np.concatenate(keep)))


def summary(data: Dataset | StreamDataset, shape_chw: tuple[int, ...], dtype: str) -> dict[str, object]:
    """The JSON-ready summary of a dataset held in memory or streamed (`Dataset.describe`,
    `nas.data.stream.StreamDataset.describe`): name, source, image counts, shape, dtype and classes."""
    return {
        "name": data.name,
        "source": data.source,
        "images": len(data),
        "test_images": len(data.test) if data.test is not None else None,
        "shape_chw": list(shape_chw),
        "dtype": dtype,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
    }
