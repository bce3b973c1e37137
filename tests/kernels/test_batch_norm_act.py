"""The fused training batch norm + activation (`nas.kernels.training.batch_norm_act`) against PyTorch's ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces as ss
from nas.kernels import _C
from nas.kernels.training import FastConvBNAct, _BatchNormAct, batch_norm_act, fast_training
from search_spaces.model import ConvBNAct


def _run(x0: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, g0: torch.Tensor, act: nn.Module, fused: bool,
         dtype: torch.dtype = torch.float32, momentum: float = 0.1) -> list[torch.Tensor]:
    x = x0.to(dtype, copy=True).requires_grad_(True)
    w, b = w0.to(dtype, copy=True).requires_grad_(True), b0.to(dtype, copy=True).requires_grad_(True)
    rm, rv = torch.full((len(w0),), 0.5, dtype=dtype), torch.full((len(w0),), 2.0, dtype=dtype)
    if fused:
        y = batch_norm_act(x, rm, rv, w, b, True, momentum, 1e-5, act)
    else:
        y = act(F.batch_norm(x, rm, rv, w, b, True, momentum, 1e-5))
    y.backward(g0.to(dtype))
    return [t.double() for t in (y.detach(), x.grad, w.grad, b.grad, rm, rv)]


# (shape, activation, mean offset): row counts off the 128-row chunk, odd channel counts, one pixel per image,
# a mean of 100 (the statistics are shifted, so it costs no precision), enough elements for the threaded path
CASES = [((4, 13, 5, 7), nn.ReLU6(), 0.0), ((3, 40, 6, 6), nn.Identity(), 100.0), ((2, 8, 1, 1), nn.ReLU(), 0.0),
         ((8, 48, 12, 12), nn.ReLU6(), 2.0), ((16, 64, 12, 12), nn.ReLU6(), -1.0), ((1, 3, 2, 1), nn.ReLU6(), 0.0)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-{type(c[1]).__name__}")
def test_matches_float64_reference(case: tuple) -> None:
    shape, act, offset = case
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(shape, generator=gen) * 3 + offset).to(memory_format=torch.channels_last)
    w0, b0 = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)
    g0 = torch.randn(shape, generator=gen).to(memory_format=torch.channels_last)
    ref = _run(x0, w0, b0, g0, act, fused=False, dtype=torch.float64)
    got = _run(x0, w0, b0, g0, act, fused=True)
    torch_f32 = _run(x0, w0, b0, g0, act, fused=False)
    names = ("y", "grad x", "grad weight", "grad bias", "running mean", "running var")
    for name, a, r, t in zip(names, got, ref, torch_f32, strict=True):
        # as close to the float64 result as PyTorch's own float32 ops are, with a little room
        tol = max(3 * (t - r).abs().max().item(), 1e-5 * max(1.0, r.abs().max().item()))
        assert (a - r).abs().max().item() <= tol, name


def test_output_and_input_gradient_are_channels_last() -> None:
    x = torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last).requires_grad_(True)
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    y = batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, nn.ReLU6())
    assert y.grad_fn is not None and "BatchNormAct" in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.randn(2, 16, 4, 4))  # a plain NCHW gradient is laid out as needed
    assert x.grad is not None and x.grad.is_contiguous(memory_format=torch.channels_last)


def test_does_not_depend_on_thread_count() -> None:
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 64, 12, 12, generator=gen).to(memory_format=torch.channels_last)
    w0, b0, g0 = torch.rand(64, generator=gen), torch.randn(64, generator=gen), torch.randn_like(x0)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run(x0, w0, b0, g0, nn.ReLU6(), fused=True))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("why", ["eval", "hardswish", "nchw", "float64"])
def test_other_cases_run_pytorch_ops(why: str) -> None:
    x = torch.randn(2, 8, 5, 5)
    act: nn.Module = nn.Hardswish() if why == "hardswish" else nn.ReLU6()
    if why != "nchw":
        x = x.to(memory_format=torch.channels_last)
    if why == "float64":
        x = x.double()
    w, b = torch.rand(8, dtype=x.dtype), torch.randn(8, dtype=x.dtype)
    rm, rv = torch.zeros(8, dtype=x.dtype), torch.ones(8, dtype=x.dtype)
    training = why != "eval"
    y = batch_norm_act(x, rm, rv, w, b, training, 0.1, 1e-5, act)
    assert y.grad_fn is None or "BatchNormAct" not in type(y.grad_fn).__name__
    torch.testing.assert_close(y, act(F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fast_training_swaps_conv_bn_act_and_keeps_batch_norm_rules(momentum: float | None) -> None:
    arch = ss.decode("r16_i3_n10:stem_c16_re6:ds_k3_c16_re6:ir_r2_k5_s2_e6_c24_se0.25_re6:head_c64_re6")
    torch.manual_seed(0)
    model = ss.build(arch).to(memory_format=torch.channels_last)
    twin = ss.build(arch).to(memory_format=torch.channels_last)
    twin.load_state_dict(model.state_dict())
    for m in [*model.modules(), *twin.modules()]:
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    blocks = [m for m in model.modules() if type(m) is ConvBNAct]
    assert blocks
    x = torch.randn(6, 3, 16, 16).to(memory_format=torch.channels_last)
    calls = []
    apply = _BatchNormAct.apply

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return apply(*args)

    _BatchNormAct.apply = counting  # type: ignore[method-assign]
    try:
        for _ in range(2):
            with fast_training(model):
                assert all(type(m) is FastConvBNAct for m in blocks)
                out = model.train()(x)
                out.square().sum().backward()
    finally:
        _BatchNormAct.apply = apply  # type: ignore[method-assign]
    assert all(type(m) is ConvBNAct for m in blocks)
    assert len(calls) == 2 * len(blocks)
    for _ in range(2):
        ref = twin.train()(x)
        ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # running stats and batch counts
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_bad_input_names_the_field() -> None:
    x = np.zeros((10, 8), np.float32)
    v = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="mean"):
        _C.bn_stats(x, np.zeros(7, np.float32), v.copy(), 1)
    with pytest.raises(ValueError, match="out"):
        _C.bn_affine_act(x, v, v, 0.0, 6.0, np.zeros((10, 7), np.float32), 1)
    with pytest.raises(ValueError, match="grad_out"):
        _C.bn_act_grad_sums(x, np.zeros((9, 8), np.float32), v, v, 0.0, 6.0, v, np.zeros((2, 8), np.float32), 1)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        _C.bn_stats(x.astype(np.float64), v.copy(), v.copy(), 1)
    with pytest.raises(ValueError, match="threads"):
        _C.bn_act_grad_input(x, x, v, v, 0.0, 6.0, v, v, v, np.zeros((10, 8), np.float32), 0)
