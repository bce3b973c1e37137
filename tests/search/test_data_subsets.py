"""Training and validation subsets of `nas search` (`--train-images`, `--val-images`)."""

import numpy as np
import pytest

from nas.data import load_dataset, split, stratified_subset
from nas.search.evaluate import load_splits
from nas.search.main import SearchRequest


def test_stratified_subset_keeps_each_class_share_and_is_seeded():
    train = split(load_dataset("digits"), seed=0).train
    sub = stratified_subset(train, 300, seed=1)
    assert len(sub) == 300 and len(np.unique(sub.x.reshape(len(sub), -1), axis=0)) == 300
    full = np.bincount(train.y) / len(train)
    assert np.abs(np.bincount(sub.y, minlength=len(full)) - full * 300).max() < 1  # largest remainders
    assert np.array_equal(stratified_subset(train, 300, seed=1).x, sub.x)
    assert not np.array_equal(stratified_subset(train, 300, seed=2).x, sub.x)


def test_request_subsets_the_train_and_val_splits_but_not_test():
    whole = load_splits(SearchRequest()).splits
    part = load_splits(SearchRequest(train_images=400, val_images=100)).splits
    assert (len(part.train), len(part.val), len(part.test)) == (400, 100, len(whole.test))
    assert np.array_equal(part.test.x, whole.test.x)
    assert len(load_splits(SearchRequest(quick=True)).splits.train) == 512
    assert len(load_splits(SearchRequest(train_images=10**6)).splits.train) == len(whole.train)
    assert SearchRequest(train_images=400, val_images=100).run_name().endswith("-tr400-va100")


@pytest.mark.parametrize("field", ["train_images", "val_images"])
def test_bad_subset_size_names_the_field(field):
    with pytest.raises(ValueError, match=field):
        SearchRequest(**{field: 0})
