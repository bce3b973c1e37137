"""Budget strings and sampling under budgets."""

import pytest

import search_spaces as ss
from search_spaces import Budget, BudgetError


@pytest.mark.parametrize("text, kind, value", [
    ("100MFLOPs", "macs", 100e6), ("100M", "macs", 100e6), ("0.1GFLOPs", "macs", 100e6),
    ("300MMACs", "macs", 300e6), ("3ms", "latency_ms", 3.0), ("2.5Mparams", "params", 2.5e6),
    ("500us", "latency_ms", 0.5), (" 50 mflops ", "macs", 50e6), ("1.5kFLOPs", "macs", 1500),
])
def test_parse_budget(text, kind, value):
    b = ss.parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "100", "-3ms", "0M", "100Mbogus", "3Mms", "1e6FLOPs"])
def test_bad_budgets_get_clear_errors(text):
    with pytest.raises(BudgetError, match="budget"):
        ss.parse_budget(text)


@pytest.mark.parametrize("name", sorted(ss.SPACES))
def test_samples_fit_the_budget(name):
    space = ss.get_space(name)
    lo, hi = ss.count_macs(space.smallest()), ss.count_macs(space.largest())
    for value in (lo * 1.05, (lo + hi) / 4, hi):
        budget = Budget("macs", value)
        archs = ss.sample(space, budget, n=50, seed=7)
        assert len(archs) == 50
        assert all(ss.count_macs(a) <= value and space.contains(a) for a in archs)


def test_tight_budgets_still_give_variety():
    space = ss.get_space("small32")
    archs = ss.sample(space, ss.parse_budget("16MFLOPs"), n=30, seed=0)
    assert len({a.hash() for a in archs}) > 20


def test_param_budget():
    space = ss.get_space("mobilenetv3")
    archs = ss.sample(space, ss.parse_budget("3Mparams"), n=20, seed=2)
    assert all(ss.count(a).params <= 3e6 for a in archs)


def test_unreachable_budget_names_the_smallest_cost():
    with pytest.raises(BudgetError, match=r"smallest architecture costs 12\.84"):
        ss.sample(ss.get_space("small32"), ss.parse_budget("1MFLOPs"))


def test_latency_budget_needs_a_model():
    with pytest.raises(BudgetError, match="latency model"):
        ss.sample(ss.get_space("small32"), ss.parse_budget("3ms"))
    fake_ms = lambda a: ss.count_macs(a) / 20e6  # noqa: E731  a cost function in ms, as a latency model gives
    archs = ss.sample(ss.get_space("small32"), ss.parse_budget("3ms"), n=10, latency_ms=fake_ms)
    assert all(fake_ms(a) <= 3 for a in archs)


def test_sampling_is_deterministic_by_seed():
    space = ss.get_space("small32")
    b = ss.parse_budget("100MFLOPs")
    assert ss.sample(space, b, n=5, seed=3) == ss.sample(space, b, n=5, seed=3)
    assert ss.sample(space, b, n=5, seed=3) != ss.sample(space, b, n=5, seed=4)


@pytest.mark.parametrize("text", ["9" * 400 + "M", "1" * 305 + "GFLOPs", "1" * 310 + "ms", "1" * 308 + "s",
                                  "1" * 400 + "params"])
def test_amounts_that_overflow_are_refused_as_not_finite(text):
    with pytest.raises(BudgetError, match=r"^budget: expected a finite amount, got '9{37}\.\.\.'$|"
                                          r"^budget: expected a finite amount, got '1{37}\.\.\.'$"):
        ss.parse_budget(text)


def test_the_canonical_budget_is_short_whatever_was_written():
    assert str(ss.parse_budget("0" * 400 + "100M")) == "100MFLOPs"
    assert str(ss.parse_budget("0.1 gflops")) == "100MFLOPs"
    assert len(str(ss.parse_budget("1" * 300 + "M"))) < 30  # the largest finite amounts still print short
    with pytest.raises(BudgetError) as err:
        ss.parse_budget("x" * 500)
    assert len(str(err.value)) < 200  # the text is quoted cut short


def test_unreachable_budget_names_the_flag_and_where():
    fake_ms = lambda a: ss.count_macs(a) / 20e6  # noqa: E731
    with pytest.raises(BudgetError, match=r"^--latency: nothing in space 'small32' fits 0\.1ms on device x; the "
                                          r"smallest architecture costs 0\.64\d*ms"):
        ss.check_reachable(ss.get_space("small32"), ss.parse_budget("100us"), fake_ms, name="--latency",
                           where=" on device x")
