"""Float32 training ops backed by the kernel library.

PyTorch's CPU depthwise convolution (torch 2.13, channels-last) computes the weight gradient of 5x5 and 7x7
kernels 4-8x slower than its forward pass, and those layers make up most of an MBConv supernet's backward time.
`depthwise_conv2d` keeps PyTorch's forward and input gradient and computes the weight gradient of kernels of
`MIN_KERNEL` and larger with `_C.depthwise_weight_grad` (AVX-512F or AVX2+FMA over channels, images summed in
fixed chunks, so the result does not depend on the thread count): with AVX-512 3.3-7x faster than PyTorch's at 2
threads (64 images, 6-24 px, 120-480 channels; benchmarks/bench_train_ops.py). PyTorch's own 3x3 path is 2-4x
faster than ours and is kept. `fast_depthwise(model)` switches a model's depthwise `nn.Conv2d` layers to it for
a training run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.kernels import _C
from nas.kernels.isa import active_isa
from search_spaces.model import ConvBNAct

MIN_KERNEL = 5  # smaller depthwise kernels keep PyTorch's weight gradient (faster there, measured)


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
    if (weight.requires_grad and torch.is_grad_enabled() and x.dtype == torch.float32 and not x.is_cuda
            and weight.dtype == torch.float32 and weight.shape[-1] == weight.shape[-2] >= MIN_KERNEL):
        return _DepthwiseConv.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, None, stride, padding, groups=x.shape[1])


# clamp ranges of the activations `batch_norm_act` fuses (their gradient passes where lo < z < hi)
_CLAMPS: dict[type, tuple[float, float]] = {nn.Identity: (-math.inf, math.inf), nn.ReLU: (0.0, math.inf),
                                            nn.ReLU6: (0.0, 6.0)}


def _rows(t: torch.Tensor) -> np.ndarray:
    """A channels-last (N, C, H, W) tensor as the (N*H*W, C) array it is in memory (no copy)."""
    n, c, h, w = t.shape
    return t.detach().permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()


def _empty_channels_last(shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return torch.empty((n, h, w, c)).permute(0, 3, 1, 2)


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, lo, hi):  # noqa: ANN001, ANN205
        n, c, h, w = x.shape
        rows, threads = n * h * w, torch.get_num_threads()
        xr = _rows(x)
        mean, var = np.empty(c, np.float32), np.empty(c, np.float32)
        _C.bn_stats(xr, mean, var, threads)
        mean_t, var_t = torch.from_numpy(mean), torch.from_numpy(var)
        invstd = torch.rsqrt(var_t + eps)
        scale = (weight.detach() * invstd).contiguous()
        shift = (bias.detach() - mean_t * scale).contiguous()
        y = _empty_channels_last(x.shape)
        _C.bn_affine_act(xr, scale.numpy(), shift.numpy(), lo, hi, _rows(y), threads)
        if running_mean is not None:  # as F.batch_norm: the running variance is the unbiased one
            running_mean.mul_(1 - momentum).add_(mean_t, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var_t, alpha=momentum * rows / (rows - 1))
        ctx.save_for_backward(x, mean_t, invstd, scale, shift)
        ctx.lo, ctx.hi = lo, hi
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        x, mean, invstd, scale, shift = ctx.saved_tensors
        n, c, h, w = x.shape
        rows, threads = n * h * w, torch.get_num_threads()
        g = grad_out.contiguous(memory_format=torch.channels_last)
        xr, gr = _rows(x), _rows(g)
        sums = np.empty((2, c), np.float32)
        _C.bn_act_grad_sums(xr, gr, scale.numpy(), shift.numpy(), ctx.lo, ctx.hi, mean.numpy(), sums, threads)
        grad_bias = torch.from_numpy(sums[0].copy())
        grad_weight = torch.from_numpy(sums[1].copy()) * invstd
        grad_x = None
        if ctx.needs_input_grad[0]:
            b = (-scale * grad_bias / rows).contiguous()
            k = (-scale * invstd * grad_weight / rows).contiguous()
            grad_x = _empty_channels_last(x.shape)
            _C.bn_act_grad_input(xr, gr, scale.numpy(), shift.numpy(), ctx.lo, ctx.hi, mean.numpy(), b.numpy(),
                                 k.numpy(), _rows(grad_x), threads)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


def batch_norm_act(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float, eps: float,
                   act: nn.Module) -> torch.Tensor:
    """`act(F.batch_norm(x, ...))`. In training mode, for a float32 channels-last CPU input and a ReLU, ReLU6 or
    identity `act`, the kernel library's fused pass runs it (statistics, normalise + clamp; two passes back),
    running statistics updated as PyTorch does; anything else runs PyTorch's ops."""
    clamp = _CLAMPS.get(type(act))
    n, _, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    if (clamp is None or not training or x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu"
            or n * h * w < 2 or not x.is_contiguous(memory_format=torch.channels_last)
            or weight is None or bias is None or weight.dtype != torch.float32 or bias.dtype != torch.float32):
        return act(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    return _BatchNormAct.apply(x, weight, bias, running_mean, running_var, momentum, eps, *clamp)


def batch_norm_module_act(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module) -> torch.Tensor:
    """`act(bn(x))` through `batch_norm_act`, with `nn.BatchNorm2d`'s own momentum / batch-count rules."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return batch_norm_act(x, bn.running_mean if keep else None, bn.running_var if keep else None, bn.weight,
                          bn.bias, batch_stats, factor, bn.eps, act)


class FastConvBNAct(ConvBNAct):
    """A `ConvBNAct` (same parameters and state dict) whose batch norm + activation train with `batch_norm_act`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm_module_act(self.conv(x), self.bn, self.act)


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


@contextlib.contextmanager
def fast_training(model: nn.Module) -> Iterator[nn.Module]:
    """`fast_depthwise`, and `model`'s `ConvBNAct` layers run batch norm + activation with `batch_norm_act`;
    afterwards they are plain layers again (same parameter objects throughout)."""
    swapped = [m for m in model.modules() if type(m) is ConvBNAct]
    for m in swapped:
        m.__class__ = FastConvBNAct
    try:
        with fast_depthwise(model):
            yield model
    finally:
        for m in swapped:
            m.__class__ = ConvBNAct
