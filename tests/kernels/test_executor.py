"""A whole quantized network runs on the kernels, agrees with the float model and equals the NumPy reference."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from nas.kernels import available_isas, time_layer
from nas.kernels.lower import lower, minmax_calibration
from search_spaces import build, layers
from search_spaces.presets import preset, small_input


def _digits(n: int) -> torch.Tensor:
    """Real 8x8 digits, upsampled to 16x16, normalised, 3 channels."""
    d = load_digits().images[:n].astype(np.float32) / 16.0
    x = torch.from_numpy(d)[:, None].repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    return (x - 0.3) / 0.4


@pytest.fixture(scope="module", params=["mobilenetv3-small", "efficientnet-b0"])
def net(request):
    torch.manual_seed(0)
    arch = small_input(preset(request.param), resolution=16, in_channels=3, num_classes=10)
    model = build(arch)
    data = _digits(160)
    model.train()
    with torch.no_grad():  # realistic BN statistics from real digits
        model(data[:96])
    model.eval()
    return arch, model, data


def quantize(model, arch, calib, bits: int = 8, group_size: int = 0):
    """PTQ with min/max ranges of `calib`, through the one lowering."""
    return lower(model, arch, minmax_calibration(model, calib, bits, group_size)).network


def test_int8_matches_float_and_reference(net):
    arch, model, data = net
    qn = quantize(model, arch, data[:64], bits=8)
    x = data[96:160].numpy()
    with torch.no_grad():
        f = model(torch.from_numpy(x)).numpy()
    q = qn.run(x)
    assert (q.argmax(1) == f.argmax(1)).mean() >= 0.85
    assert np.abs(q - f).max() <= 0.1 * np.abs(f).max()
    np.testing.assert_array_equal(q[:16], qn.run_reference(x[:16]))
    for isa in available_isas():
        np.testing.assert_array_equal(qn.run(x[:4], isa=isa, threads=2), q[:4])


def test_w4a8_bitexact_and_half_the_weight_bytes(net):
    arch, model, data = net
    q8 = quantize(model, arch, data[:64], bits=8)
    q4 = quantize(model, arch, data[:64], bits=4, group_size=16)
    x = data[96:104].numpy()
    np.testing.assert_array_equal(q4.run(x), q4.run_reference(x))
    pw = [layer.spec.weight.size for layer in q8.layers if layer.op in ("pw", "linear")]
    assert q8.weight_bytes() - q4.weight_bytes() == sum(n - n * 4 // 8 for n in pw)
    # PTQ to 4 bits (no QAT) is lossy but still tracks the float logits
    with torch.no_grad():
        f = model(torch.from_numpy(x)).numpy()
    assert np.corrcoef(q4.run(x).ravel(), f.ravel())[0, 1] > 0.8


def test_uint8_input_and_bad_input(net):
    arch, model, data = net
    qn = quantize(model, arch, data[:16])
    x = data[:4].numpy()
    xq = qn.quantize_input(x)
    assert xq.dtype == np.uint8 and xq.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(qn.run(xq), qn.run(x))
    with pytest.raises(TypeError):
        qn.run(x.astype(np.int16))
    with pytest.raises(ValueError):
        qn.run(x[0])


def test_time_layer_covers_every_layer_kind():
    arch = preset("mobilenetv3-small")
    seen = set()
    for layer in layers(arch):
        if layer.op in seen:
            continue
        seen.add(layer.op)
        for bits in (8, 4):
            t = time_layer(layer, bits=bits, reps=3, warmup=1, threads=2)
            assert len(t) == 3 and all(0 < v < 1.0 for v in t)
    assert seen == {"conv", "pw", "dw", "se", "pool", "linear"}
