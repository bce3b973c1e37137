"""`--quick` searches the space trimmed to part of the MAC budget (a cheaper supernet), never past its smallest."""

from dataclasses import replace

import search_spaces as ss
from nas.search.plan import QUICK, plan
from nas.search.prepare import load_splits, sized_space
from nas.search.request import SearchRequest


def _space(request: SearchRequest, max_macs: float) -> ss.SearchSpace:
    p = plan(request)
    return sized_space(load_splits(p.data), replace(p.space, max_macs=max_macs), lambda _: None)


def test_quick_trims_the_space_to_a_fraction_of_the_budget():
    budget = 100e6
    full = ss.count_macs(_space(SearchRequest(), budget).largest())
    quick = ss.count_macs(_space(SearchRequest(quick=True), budget).largest())
    assert quick <= 1.25 * QUICK.space_fraction * budget < full  # trim_to_budget's slack is 1.25


def test_quick_near_the_smallest_network_keeps_a_searchable_space():
    smallest = ss.count_macs(ss.get_space(ss.DEFAULT_SPACE).with_io(1, 10).smallest())
    space = _space(SearchRequest(quick=True), 1.1 * smallest)
    assert ss.count_macs(space.smallest()) == smallest
