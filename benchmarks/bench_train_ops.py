"""Training speed: the kernel library's depthwise weight gradient against PyTorch's, per layer and per step.

1. Per layer (float32, channels-last, batch 64): PyTorch's `convolution_backward` weight gradient vs
   `nas.kernels.training.depthwise_weight_grad`, for the depthwise shapes of the default search space.
2. Per supernet step (the default search's sandwich step: largest + smallest + 2 random sub-networks, batch 64,
   24 px) and per stand-alone step of the space's largest network, with PyTorch's weight gradient everywhere
   (`MIN_KERNEL` raised past every kernel) and with ours.
3. Fake quantization (QAT): `torch.fake_quantize_per_tensor_affine` vs `nas.kernels.training.fake_quantize`
   (forward + straight-through backward, results checked equal) on activation shapes of the default space, and
   one W4A8 QAT step of the space's largest network with PyTorch's fake quantization and with ours.

    python benchmarks/bench_train_ops.py [--threads 2] [--reps 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import search_spaces as ss
from nas.kernels import active_isa
from nas.kernels import training as kt
from nas.supernet.model import Supernet

# (channels, size, kernel, stride) of depthwise layers in small32 at 24 px (expanded widths)
LAYERS = [(192, 24, 7, 1), (192, 24, 5, 1), (192, 24, 3, 1), (240, 12, 7, 1), (240, 12, 5, 2), (480, 6, 7, 1),
          (720, 6, 5, 1), (1200, 3, 7, 1)]


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def per_layer(reps: int, threads: int) -> None:
    print(f"\n## Depthwise weight gradient, batch 64, float32 channels-last, {threads} threads ({active_isa()})\n")
    print("| channels | size | kernel | stride | PyTorch ms | ours ms | speed-up | max abs diff vs float64 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, h, k, s in LAYERS:
        p = k // 2
        x = torch.randn(64, c, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, k, k)
        ho = (h + 2 * p - k) // s + 1
        g = torch.randn(64, c, ho, ho).contiguous(memory_format=torch.channels_last)
        args = ((s, s), (p, p), (1, 1), False, (0, 0), c, (False, True, False))
        ref = torch.ops.aten.convolution_backward(g.double(), x.double(), w.double(), None, *args)[1]
        theirs = median_ms(lambda: torch.ops.aten.convolution_backward(g, x, w, None, *args), reps)  # noqa: B023
        ours = median_ms(lambda: kt.depthwise_weight_grad(x, g, k, s, p), reps)  # noqa: B023
        err_t = float((torch.ops.aten.convolution_backward(g, x, w, None, *args)[1].double() - ref).abs().max())
        err_o = float((kt.depthwise_weight_grad(x, g, k, s, p).double() - ref).abs().max())
        print(f"| {c} | {h} | {k} | {s} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x | "
              f"PyTorch {err_t:.1e}, ours {err_o:.1e} |")


def per_step(reps: int) -> None:
    space = ss.trim_to_budget(ss.get_space(ss.DEFAULT_SPACE).with_io(1, 10), 100e6)
    net = Supernet(space).train().to(memory_format=torch.channels_last)
    x = torch.randn(64, 1, 24, 24)
    y = torch.randint(0, 10, (64,))
    rng = random.Random(0)
    archs = [space.largest(), space.smallest()] + [space.random_arch(rng) for _ in range(2)]

    def sandwich() -> None:
        for a in archs:
            net.set_active(a)
            F.cross_entropy(net(x), y).backward()

    model = ss.build(space.largest()).train().to(memory_format=torch.channels_last)

    def standalone() -> None:
        with kt.fast_depthwise(model):
            F.cross_entropy(model(x), y).backward()

    print("\n## One training step (forward + backward), batch 64, 24 px\n")
    print("| step | PyTorch weight gradient ms | ours ms | speed-up |")
    print("|---|---:|---:|---:|")
    default = kt.MIN_KERNEL
    for name, fn in (("supernet sandwich (4 sub-networks)", sandwich), ("stand-alone largest network", standalone)):
        kt.MIN_KERNEL = 1 << 30
        theirs = median_ms(fn, reps)
        kt.MIN_KERNEL = default
        ours = median_ms(fn, reps)
        print(f"| {name} | {theirs:.0f} | {ours:.0f} | {theirs / ours:.2f}x |")


def fake_quant(reps: int) -> None:
    print("\n## Fake quantization (uint8 grid), forward + backward, float32 channels-last\n")
    print("| tensor | PyTorch ms | ours ms | speed-up | equal |")
    print("|---|---:|---:|---:|---|")
    for shape in [(64, 192, 24, 24), (64, 96, 24, 24), (64, 240, 12, 12), (64, 480, 6, 6), (64, 1200, 3, 3)]:
        x = (torch.randn(shape) * 2).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(shape).contiguous(memory_format=torch.channels_last)

        def run(f: Callable[..., torch.Tensor], x: torch.Tensor = x, g: torch.Tensor = g) -> torch.Tensor:
            x.grad = None
            y = f(x, 0.02, 100, 0, 255)
            y.backward(g)
            return y

        want, got = run(torch.fake_quantize_per_tensor_affine), run(kt.fake_quantize)
        equal = torch.equal(want, got)
        theirs = median_ms(lambda: run(torch.fake_quantize_per_tensor_affine), reps)  # noqa: B023
        ours = median_ms(lambda: run(kt.fake_quantize), reps)  # noqa: B023
        print(f"| {'x'.join(map(str, shape))} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.1f}x | {equal} |")

    from nas.compress import fakequant as fq

    space = ss.trim_to_budget(ss.get_space(ss.DEFAULT_SPACE).with_io(1, 10), 100e6)
    model = ss.build(space.largest()).eval()
    x = torch.randn(64, 1, 24, 24)
    y = torch.randint(0, 10, (64,))
    sim = fq.QuantSim(model, {n: 4 for n in fq.gemm_layers(model)})
    sim.calibrate([x])
    for o in sim.observers.values():
        o.observe, o.enabled, o.momentum = True, True, 0.01
    sim.train().to(memory_format=torch.channels_last)

    def step() -> None:
        with kt.fast_depthwise(sim):
            F.cross_entropy(sim(x), y).backward()

    ours = median_ms(step, reps)
    fq.fake_quantize = torch.fake_quantize_per_tensor_affine  # the module's name for it: PyTorch's kernel
    try:
        theirs = median_ms(step, reps)
    finally:
        fq.fake_quantize = kt.fake_quantize
    print(f"\nW4A8 QAT step of the largest network (batch 64, observers on): PyTorch's fake quantization "
          f"{theirs:.0f} ms, ours {ours:.0f} ms ({theirs / ours:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    per_layer(args.reps, args.threads)
    per_step(max(3, args.reps // 2))
    fake_quant(args.reps)


if __name__ == "__main__":
    main()
