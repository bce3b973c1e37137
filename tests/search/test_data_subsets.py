"""Training and validation subsets of `nas search` (`--train-images`, `--val-images`)."""

import re

import numpy as np
import pytest

from nas.cli import main
from nas.data import DatasetError, load_dataset, split, stratified_subset
from nas.search.plan import plan
from nas.search.prepare import load_splits
from nas.search.request import SearchRequest


def test_stratified_subset_keeps_each_class_share_and_is_seeded():
    train = split(load_dataset("digits"), seed=0).train
    sub = stratified_subset(train, 300, seed=1)
    assert len(sub) == 300 and len(np.unique(sub.x.reshape(len(sub), -1), axis=0)) == 300
    full = np.bincount(train.y) / len(train)
    assert np.abs(np.bincount(sub.y, minlength=len(full)) - full * 300).max() < 1  # largest remainders
    assert np.array_equal(stratified_subset(train, 300, seed=1).x, sub.x)
    assert not np.array_equal(stratified_subset(train, 300, seed=2).x, sub.x)


def test_request_subsets_the_train_and_val_splits_but_not_test():
    def splits(**flags):
        return load_splits(plan(SearchRequest(**flags)).data).splits

    whole = splits()
    part = splits(train_images=400, val_images=100)
    assert (len(part.train), len(part.val), len(part.test)) == (400, 100, len(whole.test))
    assert np.array_equal(part.test.x, whole.test.x)
    assert len(splits(quick=True).train) == 512
    assert len(splits(train_images=10**6).train) == len(whole.train)
    assert SearchRequest(train_images=400, val_images=100).run_name().endswith("-tr400-va100")


@pytest.mark.parametrize("field, flag", [("train_images", "--train-images"), ("val_images", "--val-images")])
def test_bad_subset_size_names_the_flag(field, flag):
    with pytest.raises(ValueError, match=f"^{flag}: expected a positive integer, got 0$"):
        SearchRequest(**{field: 0})


@pytest.mark.parametrize("part, n, fragment", [
    ("train", 1, "--train-images 1: a class-stratified subset of the 1439 digits/train images (10 classes) would "
                 "keep 1 image(s) of 1 class, but needs at least 2 classes (give at least 2)"),
    ("val", 1, "--val-images 1:"),
])
def test_subset_with_one_class_is_refused_naming_the_flag(part, n, fragment):
    """--train-images 1 trained on one class and --val-images 1 scored every trial 1.000 or 0.000."""
    data = getattr(split(load_dataset("digits"), seed=0), part)
    with pytest.raises(DatasetError, match=re.escape(fragment)):
        stratified_subset(data, n, seed=0)


def test_skewed_subset_says_how_many_images_keep_two_classes():
    digits = load_dataset("digits")
    keep = np.flatnonzero(digits.y == 0)[:90].tolist() + np.flatnonzero(digits.y == 1)[:10].tolist()
    part = digits.subset(np.array(keep), "skewed/val")
    with pytest.raises(DatasetError, match=re.escape("--val-images 2: ") + ".*keep 2 image\\(s\\) of 1 class.*"
                                           "give at least 5"):
        stratified_subset(part, 2, seed=0)
    assert sorted(np.unique(stratified_subset(part, 5, seed=0).y)) == [0, 1]


@pytest.mark.parametrize("file, labels, extra, fragment", [
    ("one.npz", [0] * 60, [], "one.npz: cannot split 60 images into non-empty train / val / test parts"),
    ("tiny.npz", [0, 1, 2], [], "tiny.npz: cannot split 3 images"),
    ("three.npz", [0, 1, 2] * 20, ["--train-images", "1"], "--train-images 1: a class-stratified subset"),
    ("three.npz", [0, 1, 2] * 20, ["--val-images", "1"], "--val-images 1: a class-stratified subset"),
])
def test_search_refuses_unsplittable_data_before_training(tmp_path, capsys, file, labels, extra, fragment):
    """Exit 2 with one line, before any supernet training: these runs used to finish with exit 0."""
    path = tmp_path / file
    np.savez(path, x=load_dataset("digits").x[: len(labels)], y=np.array(labels))
    code = main(["search", "--budget", "100MFLOPs", "--quick", "--no-finalize", "--trials", "1", "--data", str(path),
                 "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("nas search: error: ") and fragment in err[0]
    assert not (tmp_path / "out" / "supernets").exists()
