"""Pareto masks and the 2-D hypervolume."""

import pytest

from nas.search.pareto import hypervolume, pareto_mask


def test_pareto_mask():
    acc = [0.9, 0.8, 0.95, 0.85, 0.9]
    lat = [2.0, 1.0, 3.0, 2.5, 2.0]
    assert pareto_mask(acc, lat) == [True, True, True, False, True]


def test_hypervolume_by_hand():
    # two points: (lat 1, acc .8), (lat 2, acc .9); reference (acc .5, lat 4)
    # strips: [1,2) x (.8-.5) + [2,4) x (.9-.5) = .3 + .8
    assert hypervolume([0.8, 0.9], [1.0, 2.0], 0.5, 4.0) == pytest.approx(1.1)
    # a dominated point adds nothing; points beyond the reference add nothing
    assert hypervolume([0.8, 0.9, 0.7], [1.0, 2.0, 3.0], 0.5, 4.0) == pytest.approx(1.1)
    assert hypervolume([0.4, 0.9], [1.0, 5.0], 0.5, 4.0) == 0.0


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="lat"):
        pareto_mask([1.0], [1.0, 2.0])
