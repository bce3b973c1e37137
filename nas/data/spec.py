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

PARTS = ("train", "val", "test")


def part_fingerprint(splits: Splits, part: str) -> str:
    """16 hex digits of SHA-256 over a split's images and labels."""
    d = getattr(splits, part)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(d.x).tobytes())
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

    def load(self) -> tuple[Splits, DataSpec]:
        """The splits this spec describes, and the spec with their fingerprints."""
        splits = split(load_dataset(self.source), seed=self.split_seed)
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
