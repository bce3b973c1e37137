"""Float32 training ops on the kernel library (depthwise weight gradient, fake quantization) against PyTorch's, on
every ISA path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces as ss
from nas.kernels import _C, available_isas, use_isa
from nas.kernels.training import FastDepthwiseConv2d, depthwise_conv2d, depthwise_weight_grad, fast_depthwise

FLOAT_ISAS = available_isas()

# (batch, channels, size, kernel, stride): tails of 16 and 8 channels and of 8-image chunks, kernels larger than
# the input, a kernel with no AVX-512/AVX2 specialisation (11), stride 2 with odd sizes; the last two are past
# the AVX2 kernel's 512 KB per chunk, where it goes row by row instead of all rows per channel block
SHAPES = [(5, 19, 7, 3, 1), (13, 40, 9, 5, 2), (8, 16, 6, 7, 1), (3, 33, 3, 7, 1), (9, 48, 11, 7, 2),
          (2, 8, 12, 11, 1), (17, 24, 5, 9, 1), (1, 1, 4, 5, 2), (4, 12, 8, 1, 1),
          (9, 64, 24, 5, 1), (10, 75, 20, 7, 2)]


def _reference(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(g.double(), x.double(), w.double(), None, (stride, stride), (pad, pad),
                                               (1, 1), False, (0, 0), x.shape[1], (False, True, False))[1]


@pytest.mark.parametrize("isa", FLOAT_ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}c{}h{}k{}s{}".format(*s))
def test_weight_grad_matches_pytorch(isa: str, shape: tuple[int, ...]) -> None:
    n, c, h, k, s = shape
    pad = k // 2
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, h, generator=gen)
    w = torch.randn(c, 1, k, k, generator=gen)
    ho = (h + 2 * pad - k) // s + 1
    g = torch.randn(n, c, ho, ho, generator=gen)
    ref = _reference(x, g, w, s, pad)
    with use_isa(isa):
        got = depthwise_weight_grad(x, g, k, s, pad, threads=2)
    assert got.shape == (c, 1, k, k) and got.dtype == torch.float32
    scale = float(ref.abs().max()) + 1.0
    assert float((got.double() - ref).abs().max()) < 1e-5 * scale * n * h


@pytest.mark.parametrize("isa", FLOAT_ISAS)
def test_weight_grad_does_not_depend_on_thread_count(isa: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(29, 40, 10, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    g = torch.randn(29, 40, 10, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    with use_isa(isa):
        outs = [depthwise_weight_grad(x, g, 5, 1, 2, threads=t) for t in (1, 2, 3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("k,stride", [(5, 1), (7, 2), (3, 1)])
def test_autograd_function_matches_conv2d(layout: torch.memory_format, k: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(k * 10 + stride)
    x0 = torch.randn(10, 24, 9, 9, generator=gen).contiguous(memory_format=layout)
    w0 = torch.randn(24, 1, k, k, generator=gen)
    outs = []
    for fn in (depthwise_conv2d, lambda x, w, s, p: F.conv2d(x, w, None, s, p, groups=x.shape[1])):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fn(x, w, stride, k // 2)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append((y.detach(), x.grad, w.grad))
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fast_depthwise_swaps_and_restores() -> None:
    arch = ss.get_space("small32").largest()
    model = ss.build(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dws = [m for m in model.modules() if type(m) is nn.Conv2d and m.groups > 1]
    assert dws
    x = torch.randn(4, arch.in_channels, arch.resolution, arch.resolution)
    ref = model.train()(x)
    ref.sum().backward()
    ref_grads = [m.weight.grad.clone() for m in dws]
    model.zero_grad()
    with fast_depthwise(model):
        assert all(type(m) is FastDepthwiseConv2d for m in dws)
        out = model(x)
        out.sum().backward()
    assert all(type(m) is nn.Conv2d for m in dws)
    torch.testing.assert_close(out, ref)
    for m, g in zip(dws, ref_grads, strict=True):
        torch.testing.assert_close(m.weight.grad, g, rtol=1e-3, atol=1e-4)
    assert before.keys() == model.state_dict().keys()


def test_bad_input_names_the_field() -> None:
    x = np.zeros((2, 5, 5, 8), np.float32)
    out = np.zeros((9, 8), np.float32)
    with pytest.raises(ValueError, match="grad_out"):
        _C.depthwise_weight_grad(x, np.zeros((2, 4, 5, 8), np.float32), 3, 1, 1, out, 1, "reference")
    with pytest.raises(ValueError, match="out"):
        _C.depthwise_weight_grad(x, np.zeros((2, 5, 5, 8), np.float32), 3, 1, 1, np.zeros((8, 9), np.float32), 1,
                                 "reference")
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        _C.depthwise_weight_grad(x.astype(np.float64), np.zeros((2, 5, 5, 8), np.float32), 3, 1, 1, out, 1,
                                 "reference")
    with pytest.raises(ValueError, match="pad"):
        _C.depthwise_weight_grad(x, np.zeros((2, 5, 5, 8), np.float32), 3, 1, 3, out, 1, "reference")


def test_is_depthwise() -> None:
    from torch.nn.utils import parametrize

    from nas.kernels.training import is_depthwise

    dw = nn.Conv2d(8, 8, 5, 2, 2, groups=8, bias=False)
    assert is_depthwise(dw)
    assert not is_depthwise(nn.Conv2d(8, 8, 5, 2, 2, groups=8, bias=True))
    assert not is_depthwise(nn.Conv2d(8, 16, 5, 2, 2, groups=8, bias=False))
    assert not is_depthwise(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=False, dilation=2))
    assert not is_depthwise(nn.Conv2d(8, 8, 1, bias=False))

    class Half(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * 0.5

    parametrize.register_parametrization(dw, "weight", Half())  # QAT's fake-quantized weights are parametrized
    assert type(dw) is not nn.Conv2d and is_depthwise(dw)


def _fq_cases() -> list[tuple[torch.Tensor, float, int, int, int]]:
    gen = torch.Generator().manual_seed(3)
    cases = []
    # channels-last and contiguous, the SE gate's 1/255 grid, a signed grid, odd lengths (AVX2 tails of 8)
    specs = [((6, 19, 7, 7), True, 0.05, 17, 0, 255), ((4, 8, 5, 5), False, 0.013, 0, 0, 255),
             ((3, 5, 1, 1), True, 1 / 255, 0, 0, 255), ((1001,), False, 0.3, -3, -7, 7),
             ((33, 9), False, 0.02, 128, 0, 255)]
    for shape, cl, scale, zp, qmin, qmax in specs:
        x = torch.randn(shape, generator=gen) * 4 * scale * (qmax - qmin) / 8
        flat = x.view(-1)
        k = min(60, flat.numel())
        flat[:k] = (torch.arange(k) - k // 2 + 0.5) * scale  # exact ties: round half to even decides
        if cl:
            x = x.to(memory_format=torch.channels_last)
        cases.append((x, scale, zp, qmin, qmax))
    return cases


@pytest.mark.parametrize("isa", FLOAT_ISAS)
def test_fake_quant_kernel_equals_pytorchs_fake_quantize_on_every_isa(isa: str) -> None:
    from nas.kernels.training import _flat

    for x, scale, zp, qmin, qmax in _fq_cases():
        want = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
        xd = x.contiguous()
        out, mask = torch.empty_like(xd), torch.empty_like(xd, dtype=torch.uint8)
        _C.fake_quant(_flat(xd), scale, zp, qmin, qmax, _flat(out), _flat(mask), 2, isa)
        assert torch.equal(out, want.contiguous()), (isa, x.shape)
        q = torch.round(x / scale) + zp  # the mask: inside the grid before clamping
        assert 0 < int(mask.sum()) < mask.numel()
        assert torch.equal(mask.bool(), ((q >= qmin) & (q <= qmax)).contiguous()), (isa, x.shape)


def test_fake_quantize_forward_and_straight_through_gradient_equal_pytorchs() -> None:
    from nas.kernels.training import fake_quantize

    for x, scale, zp, qmin, qmax in _fq_cases():
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = torch.fake_quantize_per_tensor_affine(a, scale, zp, qmin, qmax)
        got = fake_quantize(b, scale, zp, qmin, qmax)
        assert torch.equal(got, want) and got.stride() == x.stride()
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        want.backward(g)
        got.backward(g)
        assert torch.equal(b.grad, a.grad)


def test_memory_order_is_a_view_in_storage_order() -> None:
    from nas.kernels.training import memory_order

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5).to(memory_format=torch.channels_last)
    v = memory_order(x)
    assert v.data_ptr() == x.data_ptr() and v.shape == (120,)
    assert torch.equal(v, x.permute(0, 2, 3, 1).reshape(-1))
    y = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(memory_order(y), torch.arange(6.0))


def test_fake_quant_kernel_rejects_bad_input() -> None:
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="out: bad shape"):
        _C.fake_quant(x, 0.1, 0, 0, 255, np.zeros((4, 6), np.float32), np.zeros((4, 5), np.uint8), 1, "reference")
    with pytest.raises(TypeError, match="mask: expected dtype uint8"):
        _C.fake_quant(x, 0.1, 0, 0, 255, np.zeros((4, 5), np.float32), np.zeros((4, 5), np.int32), 1, "reference")
    with pytest.raises(ValueError, match="scale: expected a positive finite value"):
        _C.fake_quant(x, 0.0, 0, 0, 255, np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8), 1, "reference")
    with pytest.raises(ValueError, match="qmin: must not exceed qmax"):
        _C.fake_quant(x, 0.1, 0, 9, 3, np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8), 1, "reference")
