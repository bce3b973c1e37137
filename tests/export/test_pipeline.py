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


def test_round_robin_times_each_exported_model_on_the_kernels():
    """`measure_round_robin` times each model's integer network (`QuantizedModel.runner`) with `nas.timing`'s
    round-robin (its turn-taking and best-round logic are tested in tests/test_timing.py)."""
    from latency_models.kernel_runner import kernel_network
    from nas.export import QuantizedModel
    from nas.export.pipeline import measure_round_robin

    big_arch = ss.decode("r32_i1_n10:stem_c32_s1_re6:ds_k3_c32_re6:ir_k5_e6_c64_re6:head_c256_re6")
    models = {name: QuantizedModel(kernel_network(arch), arch, {}, {}) for name, arch in (("small", ARCH),
                                                                                         ("big", big_arch))}
    best = measure_round_robin({name: m.runner() for name, m in models.items()}, reps=10, rounds=2, round_s=0.01)
    assert set(best) == {"small", "big"} and all(0 < ms < float("inf") for ms in best.values())
    assert best["big"] > best["small"]  # 4x the resolution and wider layers: many times the work
