"""The validation's own repeatability: each network measured twice from one round-robin measurement."""

from dataclasses import asdict

import pytest

import search_spaces as ss
from latency_models.validation import Report, halves, measure_archs, measure_passes, score


def test_halves_are_the_best_of_the_odd_and_of_the_even_passes():
    assert halves([[3.0, 2.0, 1.0, 4.0], [5.0, 6.0, 7.0, 5.5]]) == ([1.0, 5.0], [2.0, 5.5])
    assert halves([[1.0], [2.0]]) is None and halves([]) is None


def test_score_reports_how_often_the_two_measurements_agree_within_5_percent():
    meas = [1.0, 1.0, 1.0, 1.0]
    plain = score(meas, meas, meas)
    assert plain.repeat_within_5 is None and plain.repeat_mape is None
    assert not any("repeatability" in line for line in plain.lines())
    # 4% apart, 1.0 vs 0.9 (11.1% of the lower), the same, 20% apart: in either order
    r = score(meas, meas, meas, ([1.0, 0.9, 1.0, 1.2], [1.04, 1.0, 1.0, 1.0]))
    assert r.repeat_within_5 == 50.0 and r.repeat_mape == pytest.approx((4 + 100 / 9 + 0 + 20) / 4)
    assert any("50.0% of the networks within +-5% of themselves" in line for line in r.lines())
    assert any("rerun on an idle machine" in line for line in r.lines())  # too noisy to judge +-5%
    quiet = score(meas, meas, meas, ([1.0, 1.0, 1.0, 1.0], [1.01, 1.0, 0.99, 1.02]))
    assert quiet.repeat_within_5 == 100.0 and not any("idle machine" in line for line in quiet.lines())
    older = {k: v for k, v in asdict(plain).items() if not k.startswith("repeat_")}  # a summary from before them
    assert Report(**older).repeat_within_5 is None


def test_measure_passes_keeps_every_pass_in_order_and_measure_archs_the_lowest(monkeypatch):
    import latency_models.validation as validation
    from nas.timing import Timing

    def timing(ms: float) -> Timing:
        return Timing(median_ms=ms + 0.5, p10_ms=ms, mad_ms=0.0, min_ms=ms, max_ms=ms, n=9, rejected=0)

    passes = {0: [timing(2.0), timing(1.0), timing(3.0)], 1: [timing(4.0), timing(5.0), timing(4.5)]}
    seen = {}

    def rounds(runners, reps, rounds, **kw):
        seen.update(runners=len(runners), reps=reps, rounds=rounds)
        return passes

    monkeypatch.setattr(validation, "round_robin_rounds", rounds)

    class Device:
        def prepare_arch(self, arch):
            return lambda: None

    archs = [ss.get_space("small32").smallest(), ss.get_space("small32").largest()]
    assert measure_passes(Device(), archs, reps=7, passes=3, progress=False) == [[2.0, 1.0, 3.0], [4.0, 5.0, 4.5]]
    assert seen == {"runners": 2, "reps": 7, "rounds": 3}
    assert measure_passes(Device(), archs, passes=3, progress=False, stat="median_ms")[0] == [2.5, 1.5, 3.5]
    assert measure_archs(Device(), archs, passes=3, progress=False) == [1.0, 4.0]
    assert halves(measure_passes(Device(), archs, passes=3, progress=False)) == ([2.0, 4.0], [1.0, 5.0])
    with pytest.raises(ValueError, match="stat: expected one of"):
        measure_passes(Device(), archs, stat="mean_ms", progress=False)
