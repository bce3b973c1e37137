"""`DataSpec`: the data a checkpoint was scored on, rebuilt exactly, and refused when it changed."""

import numpy as np
import pytest

from nas.data import DatasetError, DataSpec, load_digits


def _npz(path, labels_shift: int = 0) -> str:
    d = load_digits()
    np.savez(path, x=d.x, y=(d.y + labels_shift) % 10)
    return str(path)


def test_load_rebuilds_the_same_splits_and_round_trips_through_metadata(tmp_path):
    spec = DataSpec.of(_npz(tmp_path / "d.npz"), split_seed=3, train_images=400, val_images=60)
    assert spec.source == str((tmp_path / "d.npz").resolve())
    splits, recorded = spec.load()
    assert len(splits.train) == 400 and len(splits.val) == 60 and set(recorded.fingerprints) == {"train", "val", "test"}
    back = DataSpec.from_metadata(recorded.to_dict())
    assert back == recorded
    again, _ = back.load()
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(again, part).x, getattr(splits, part).x)
        back.check(again, part, "ck")  # the same data passes
    other, _ = DataSpec.of(spec.source, split_seed=4).load()
    assert not np.array_equal(other.test.y, splits.test.y) or not np.array_equal(other.test.x, splits.test.x)


def test_changed_data_is_refused_naming_the_checkpoint(tmp_path):
    path = _npz(tmp_path / "d.npz")
    _, recorded = DataSpec.of(path, split_seed=1).load()
    _npz(tmp_path / "d.npz", labels_shift=1)  # the file was replaced by other data
    changed, _ = recorded.load()
    with pytest.raises(DatasetError, match=r"^ck: the test split of .* is not the one this checkpoint was scored on"):
        recorded.check(changed, "test", "ck")


def test_older_checkpoints_record_name_at_split():
    assert DataSpec.from_metadata("digits@split2") == DataSpec("digits", 2)
    assert DataSpec.from_metadata(None) == DataSpec("digits", 0)
    assert DataSpec.from_metadata("/data/fmnist") == DataSpec("/data/fmnist", 0)
