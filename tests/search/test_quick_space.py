"""`--quick` searches the space trimmed to part of the MAC budget (a cheaper supernet), never past its smallest."""

import search_spaces as ss
from nas.search.evaluate import QUICK_SPACE_FRACTION, load_data_and_space
from nas.search.main import SearchRequest


def _largest_macs(request: SearchRequest, budget: float) -> float:
    _, space = load_data_and_space(request, budget, lambda _: None)
    return ss.count_macs(space.largest())


def test_quick_trims_the_space_to_a_fraction_of_the_budget():
    budget = 100e6
    full = _largest_macs(SearchRequest(), budget)
    quick = _largest_macs(SearchRequest(quick=True), budget)
    assert quick <= 1.25 * QUICK_SPACE_FRACTION * budget < full  # trim_to_budget's slack is 1.25


def test_quick_near_the_smallest_network_keeps_a_searchable_space():
    smallest = ss.count_macs(ss.get_space(ss.DEFAULT_SPACE).with_io(1, 10).smallest())
    _, space = load_data_and_space(SearchRequest(quick=True), 1.1 * smallest, lambda _: None)
    assert ss.count_macs(space.smallest()) == smallest
