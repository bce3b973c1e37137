"""`DataSpec`: which data a network was trained and scored on, recorded in every checkpoint so that evaluating it
again (`nas eval CKPT`) reads the very same test split.

A spec is the source (`digits` or a resolved path), the split seed, the seeded subsets of the train / validation
splits, and a fingerprint of each split; `load()` rebuilds the splits and `check()` refuses data whose
fingerprint differs from the recorded one (the file was replaced, or read differently).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.data.dataset import DatasetError, Splits, split, stratified_subset
from nas.data.formats import load_dataset
from nas.data.stream import StreamDataset, default_memory_limit, parse_memory_limit

PARTS = ("train", "val", "test")
CACHE_FOLDER = "data-cache"  # under --out: decompressed copies of gzipped IDX and deflated npz sources


def memory_limit(name: str, value: Any) -> int:
    """`value` (bytes, or text such as 2GiB, 500MB or 25%: `parse_memory_limit`) as bytes; else ValueError naming
    `name` (the flag) and what was expected (a check of `nas.checks`' kind, for `nas.checks.arg`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return value
        raise ValueError(f"{name}: expected a positive memory size, got {value}")
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a memory size such as 2GiB, 500MB or 25%, got {value!r}")
    try:
        return parse_memory_limit(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class DataLoading:
    """How a run reads its data (never what it reads, so no part of a cache key or fingerprint): in memory up to
    `memory_limit` bytes of the in-memory form (None: always in memory), else streamed from disk by `workers`
    decoding processes, with decompressed copies of compressed sources kept in `cache_dir` (None: the default).
    """

    memory_limit: int | None = None
    workers: int = 2
    cache_dir: str | None = None

    @classmethod
    def of(cls, memory_limit: int | None, workers: int, out: str | Path) -> DataLoading:
        """The CLI's loading: `memory_limit` bytes (None: `default_memory_limit()`, 25% of physical memory),
        `workers` decoding processes, the cache under `out`/data-cache."""
        limit = memory_limit if memory_limit is not None else default_memory_limit()
        return cls(limit, workers, str(Path(out) / CACHE_FOLDER))


IN_MEMORY = DataLoading()  # the Python API's default: always in memory


def part_fingerprint(splits: Splits, part: str) -> str:
    """16 hex digits of SHA-256 over a split's images and labels."""
    d = getattr(splits, part)
    h = hashlib.sha256()
    # a streamed part is hashed chunk by chunk: the same bytes in the same order, so the same fingerprint
    for chunk in d.chunks() if isinstance(d, StreamDataset) else [d.x]:
        h.update(np.ascontiguousarray(chunk).tobytes())
    h.update(np.ascontiguousarray(d.y).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DataSpec:
    """The data of a run: source, split seed, subsets (None: the whole split) and, once loaded, fingerprints."""

    source: str = "digits"
    split_seed: int = 0
    train_images: int | None = None
    val_images: int | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)  # part -> `part_fingerprint`

    @classmethod
    def of(cls, source: str, split_seed: int = 0, train_images: int | None = None,
           val_images: int | None = None) -> DataSpec:
        """A spec whose source is `digits` or the absolute path of `source` (so a checkpoint is found from
        anywhere)."""
        path = Path(source).expanduser()
        text = str(path.resolve()) if source != "digits" and path.exists() else source
        return cls(text, split_seed, train_images, val_images)

    def load(self, memory_limit: int | None = None,
             cache_dir: str | Path | None = None) -> tuple[Splits, DataSpec]:
        """The splits this spec describes, and the spec with their fingerprints (streamed from disk past
        ``memory_limit`` bytes, as :func:`nas.data.load_dataset` decides; ``DataLoading`` holds both)."""
        splits = split(load_dataset(self.source, memory_limit, cache_dir), seed=self.split_seed)
        if self.train_images and len(splits.train) > self.train_images:
            splits = replace(splits, train=stratified_subset(splits.train, self.train_images, self.split_seed,
                                                             flag="--train-images"))
        if self.val_images and len(splits.val) > self.val_images:
            splits = replace(splits, val=stratified_subset(splits.val, self.val_images, self.split_seed,
                                                           flag="--val-images"))
        return splits, self.fingerprinted(splits)

    def fingerprinted(self, splits: Splits) -> DataSpec:
        """This spec with the fingerprints of `splits` (the splits it describes)."""
        return replace(self, fingerprints={p: part_fingerprint(splits, p) for p in PARTS})

    def check(self, splits: Splits, part: str, where: str) -> None:
        """Refuse `splits` when its `part` differs from what this spec recorded (`where` names the checkpoint)."""
        want = self.fingerprints.get(part)
        if want is not None and part_fingerprint(splits, part) != want:
            raise DatasetError(f"{where}: the {part} split of {self.source} (split seed {self.split_seed}) is not "
                               f"the one this checkpoint was scored on (fingerprint {want}); the data changed since. "
                               "Pass --data and --split-seed to evaluate on it anyway")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in checkpoint metadata (`data`)."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, value: Any) -> DataSpec:
        """A spec from checkpoint metadata: the dict `to_dict` writes, or the older `name@splitN` string (no
        subsets or fingerprints recorded)."""
        if isinstance(value, dict):
            known = {k: value[k] for k in ("source", "split_seed", "train_images", "val_images", "fingerprints")
                     if k in value}
            try:
                return cls(**known)
            except TypeError as exc:
                raise DatasetError(f"data spec: unreadable ({exc})") from None
        text = str(value or "digits")
        name, _, seed = text.rpartition("@split")
        return cls(name, int(seed)) if name and seed.isdigit() else cls(text, 0)
