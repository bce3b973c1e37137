"""finalize's W4A8 step: QAT only when PTQ loses more than the configured val accuracy."""

import pytest
import torch

import search_spaces as ss
from nas.compress.quantize import QuantConfig
from nas.export.pipeline import _quantize_variant

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_re6:head_c64_re6")


def test_w4a8_qat_runs_only_when_ptq_loses_more_than_the_threshold():
    torch.manual_seed(0)
    model = ss.build(ARCH).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 1, 16, 16, generator=g), torch.randint(0, 10, (96,), generator=g)
    cfg = QuantConfig(weight_bits=4, lsq=True, qat_steps=2)
    fp32_val = float((model(x).argmax(1) == y).float().mean())

    _, skipped = _quantize_variant(model, cfg, x[:64], (x, y), (x, y), fp32_val, skip_within=1.0)
    assert skipped.qat[0]["steps"] == 0 and "within 1 of fp32" in skipped.qat[0]["skipped"]
    _, trained = _quantize_variant(model, cfg, x[:64], (x, y), (x, y), fp32_val, skip_within=-1.0)
    assert trained.qat == [{"steps": 2, "lsq": True, "distill": True}]
    _, always = _quantize_variant(model, cfg, x[:64], (x, y), (x, y), fp32_val, skip_within=None)
    assert always.qat[0]["steps"] == 2


def test_finalize_prices_pruning_with_the_table_it_is_given(tmp_path):
    """A search run with --out (or --table) keeps its latency table elsewhere than results/: finalize must read
    that one, not fall back to MACs."""
    import latency_models as lm
    from nas.compress.netadapt import cost_function
    from nas.export.pipeline import FinalizeConfig, table_path

    path = lm.default_table_path("kernels", root=tmp_path)
    lm.profile(lm.DeviceSpec.make("kernels"), lm.arch_ops(ARCH), path, reps=3, progress=False, log=lambda s: None)
    assert table_path(FinalizeConfig(table_root=str(tmp_path)), "kernels") == str(path)
    assert table_path(FinalizeConfig(table="mine.csv", table_root=str(tmp_path)), "kernels") == "mine.csv"
    # the W4A8 prediction reads the int4 table beside it, never the int8 one given explicitly
    assert table_path(FinalizeConfig(table="mine.csv", table_root=str(tmp_path)), "kernels-int4") == str(
        lm.default_table_path("kernels-int4", root=tmp_path))
    cost, unit = cost_function("latency", "kernels", table_path(FinalizeConfig(table_root=str(tmp_path)), "kernels"))
    assert unit.startswith("ms") and cost(ARCH) == lm.Predictor(lm.LatencyTable.load(path, "kernels")).predict_ms(ARCH)
    with pytest.warns(UserWarning, match="pruning by MACs"):
        _, unit = cost_function("latency", "kernels", str(tmp_path / "missing.csv"))
    assert unit == "MACs"


class _Timed:
    """Records the bench calls made on it; its 10th percentile falls as it is called, as a burst passes."""

    def __init__(self, name: str, log: list, ms: float, p10s: list[float]):
        self.name, self.log, self.ms, self.p10s = name, log, ms, p10s

    def bench(self, reps: int, threads: int, warmup: int) -> dict[str, float]:
        self.log.append((self.name, reps))
        p10 = self.p10s.pop(0) if reps > 3 else self.ms
        return {"median_ms": self.ms, "p10_ms": p10}


def test_round_robin_alternates_models_keeps_the_lowest_round_and_lasts_long_enough_per_round():
    from nas.export.pipeline import measure_round_robin

    log: list = []
    models = {"a": _Timed("a", log, 0.1, [3.0, 2.0, 1.0]), "b": _Timed("b", log, 10.0, [9.0, 30.0, 20.0])}
    best = measure_round_robin(models, reps=30, rounds=3, round_s=0.15)
    assert best == {"a": 1.0, "b": 9.0}
    timed = [e for e in log if e[1] > 3]
    assert [n for n, _ in timed] == ["a", "b"] * 3
    # 0.15 s is 1500 runs of a 0.1 ms model and 15 of a 10 ms one (more than reps / rounds = 10)
    assert {n: r for n, r in timed} == {"a": 1500, "b": 15}
