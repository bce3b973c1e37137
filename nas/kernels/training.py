"""Float32 training ops backed by the kernel library.

PyTorch's CPU depthwise convolution (torch 2.13, channels-last) computes the weight gradient of 5x5 and 7x7
kernels 4-8x slower than its forward pass, and those layers make up most of an MBConv supernet's backward time.
`depthwise_conv2d` keeps PyTorch's forward and input gradient and computes the weight gradient of kernels of
`MIN_KERNEL` and larger with `_C.depthwise_weight_grad` (AVX-512F or AVX2+FMA over channels, images summed in
fixed chunks, so the result does not depend on the thread count): with AVX-512 3.3-7x faster than PyTorch's at 2
threads (64 images, 6-24 px, 120-480 channels; benchmarks/bench_train_ops.py). PyTorch's own 3x3 path is 2-4x
faster than ours and is kept. `fast_depthwise(model)` switches a model's depthwise `nn.Conv2d` layers to it for
a training run.

`fake_quantize` is `torch.fake_quantize_per_tensor_affine` (same values, same straight-through gradient) in one
vectorised pass (`_C.fake_quant`): 0.8 ms against PyTorch's CPU kernel's 13 ms on a 64x48x24x24 activation;
with `memory_order` for the observers' min/max, a W4A8 QAT step went 0.64 -> 0.37 s (fp32 step 0.30 s).

Both ops use the kernel library only for float32 CPU tensors, and only while `training_kernels` allows it (on by
default; `nas.backend.TrainBackend.training` turns it off for GPU and mixed-precision runs, benchmarks to compare).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.kernels import _C
from nas.kernels.isa import active_isa

MIN_KERNEL = 5  # smaller depthwise kernels keep PyTorch's weight gradient (faster there, measured)
# a context variable, not a module global: a block's choice ends with the block, and other threads keep theirs
_KERNELS_ON: ContextVar[bool] = ContextVar("nas_training_kernels", default=True)


@contextlib.contextmanager
def training_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, `depthwise_conv2d` and `fake_quantize` use the kernel library (`enabled`, the default
    outside any block) or PyTorch's own ops only."""
    token = _KERNELS_ON.set(bool(enabled))
    try:
        yield
    finally:
        _KERNELS_ON.reset(token)


def _float_isa() -> str:
    # the int8 ISA names double as the float paths: avx512vnni -> AVX-512F kernel, avx2 -> AVX2 + FMA kernel
    return active_isa()


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: int, stride: int, padding: int,
                          threads: int | None = None) -> torch.Tensor:
    """Weight gradient (C, 1, k, k) of a depthwise convolution with input `x` (N, C, H, W) and output gradient
    `grad_out`; channels-last inputs are read without a copy."""
    c = x.shape[1]
    xn = x.detach().permute(0, 2, 3, 1).contiguous()
    gn = grad_out.detach().permute(0, 2, 3, 1).contiguous()
    out = np.empty((kernel * kernel, c), np.float32)
    _C.depthwise_weight_grad(xn.numpy(), gn.numpy(), kernel, stride, padding, out,
                             threads or torch.get_num_threads(), _float_isa())
    return torch.from_numpy(out).t().reshape(c, 1, kernel, kernel)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, groups=x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, (s, s), (p, p), (1, 1), False, (0, 0), x.shape[1],
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape[-1], s, p).to(weight.dtype)
        return grad_x, grad_w, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """`F.conv2d(x, weight, None, stride, padding, groups=C)` for a (C, 1, k, k) weight; when the weight needs a
    gradient (float32 on the CPU, kernel >= `MIN_KERNEL`) the backward pass uses the kernel library's
    weight-gradient kernel."""
    if (_KERNELS_ON.get() and weight.requires_grad and torch.is_grad_enabled() and x.dtype == torch.float32
            and not x.is_cuda and weight.dtype == torch.float32 and weight.shape[-1] == weight.shape[-2] >= MIN_KERNEL):
        return _DepthwiseConv.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, None, stride, padding, groups=x.shape[1])


class FastDepthwiseConv2d(nn.Conv2d):
    """An `nn.Conv2d` depthwise layer (same parameters and state dict) that trains with `depthwise_conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])


def is_depthwise(m: nn.Module) -> bool:
    """Whether `m` is a bias-free depthwise `nn.Conv2d` (any subclass, e.g. parametrized) that `depthwise_conv2d`
    computes exactly: square kernel, equal strides and zero padding on both axes, no dilation."""
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1
            and m.bias is None and m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1] and m.dilation == (1, 1)
            and m.padding_mode == "zeros")


@contextlib.contextmanager
def fast_depthwise(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model`'s depthwise `nn.Conv2d` layers train with the kernel library's weight gradient;
    afterwards they are plain `nn.Conv2d` again (same parameter objects throughout)."""
    swapped = [m for m in model.modules() if type(m) is nn.Conv2d and is_depthwise(m)]
    for m in swapped:
        m.__class__ = FastDepthwiseConv2d
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.Conv2d


def _channels_last_only(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """`t`'s elements as a 1-d tensor in memory order: a view for contiguous and channels-last tensors (reductions
    over a channels-last tensor otherwise copy it first: aminmax 1.7 ms vs 0.2 ms on a 64x48x24x24 activation)."""
    return t.permute(0, 2, 3, 1).reshape(-1) if _channels_last_only(t) else t.reshape(-1)


def _flat(t: torch.Tensor) -> np.ndarray:
    """A 1-d NumPy view of a dense tensor's memory, in memory order (contiguous or channels-last)."""
    return memory_order(t.detach()).numpy()


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() or _channels_last_only(t) else t.contiguous()


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:  # noqa: ANN001
        x = _dense(x)
        out = torch.empty_like(x)
        mask = torch.empty_like(x, dtype=torch.uint8)
        _C.fake_quant(_flat(x), float(scale), int(zero_point), int(qmin), int(qmax), _flat(out), _flat(mask),
                      torch.get_num_threads(), _float_isa())
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """`torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)`, same values and straight-through
    gradient, in one pass on the kernel library for float32 CPU tensors (PyTorch's CPU kernel was a large share
    of a QAT step: benchmarks/RESULTS_kernels.md)."""
    if not _KERNELS_ON.get() or x.dtype != torch.float32 or x.is_cuda or x.dim() == 0:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return _FakeQuant.apply(x, scale, zero_point, qmin, qmax)
