"""finalize's W4A8 step: QAT only when PTQ loses more than the configured val accuracy."""

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
