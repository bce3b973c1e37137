"""Speed of the stem fused into the first block (issue #33) against the steps it replaces, as the executor runs them.

For each network: A = the stem-fused step (`FusedBlockSpec` with a stem, on its arena-sized band buffers); B = the
stem convolution, then the first block as the executor would run it without the stem (its own fused step where
`block_fuses` says so, else its depthwise and project layers; before a squeeze-excite its depthwise alone). Both on
the lowered network's own weights, one image, the same thread count; A and B alternate in rounds (interleaved A/B),
and each side's time is the 10th percentile of all its samples. Prints the ratio A / B (below 1: fused is faster)
and the load average.

    python benchmarks/bench_fused_stem.py [--threads 1] [--rounds 20] [--reps 30]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import search_spaces as ss
from latency_models.kernel_runner import kernel_network
from nas.kernels import memory
from nas.kernels.ops import FusedBlockSpec, compile_op, out_shape

NETWORKS = {
    "MobileNetV2-1.0@224": lambda: ss.preset("mobilenetv2"),
    "MobileNetV2-0.35@144": lambda: ss.scale(ss.preset("mobilenetv2"), width=0.35, resolution=144),
    "MobileNetV3-Small@224": lambda: ss.preset("mobilenetv3-small"),
}


def sides(arch: ss.Arch, threads: int):
    """(A, B) callables for `arch`'s first stage, and the stem-fused spec (None where the stem does not fuse)."""
    net = kernel_network(arch)
    shape = (1, arch.resolution, arch.resolution, arch.in_channels)
    steps = net.steps(shape, threads)
    g, spec = steps[0]
    if len(g) == 1:
        return None
    assert isinstance(spec, FusedBlockSpec) and spec.stem is not None
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    fused = compile_op(spec)._op
    out = np.empty(out_shape(spec, shape), np.uint8)
    scratch = np.empty(memory.fused_step_scratch(spec, shape, threads), np.uint8)

    def a() -> None:
        fused.run(x, out, threads, scratch)

    stem = compile_op(spec.stem)
    s_out = np.empty(out_shape(spec.stem, shape), np.uint8)
    rest = FusedBlockSpec(None, spec.dw, spec.project)
    if spec.project is not None and memory.block_fuses(1, *s_out.shape[1:3], s_out.shape[3], s_out.shape[3],
                                                       spec.project.weight.shape[0], spec.dw.weight.shape[1],
                                                       spec.dw.stride, False, False, threads):
        block = compile_op(rest)._op
        b_scr = np.empty(memory.fused_step_scratch(rest, s_out.shape, threads), np.uint8)
        b_out = np.empty(out_shape(rest, s_out.shape), np.uint8)

        def after() -> None:
            block.run(s_out, b_out, threads, b_scr)
    else:
        dw = compile_op(spec.dw)
        d_out = np.empty(out_shape(spec.dw, s_out.shape), np.uint8)
        project = None if spec.project is None else compile_op(spec.project)
        p_out = None if project is None else np.empty(out_shape(spec.project, d_out.shape), np.uint8)

        def after() -> None:
            dw.run(s_out, out=d_out, threads=threads)
            if project is not None:
                project.run(d_out, out=p_out, threads=threads)

    def b() -> None:
        stem.run(x, out=s_out, threads=threads)
        after()

    a()
    b()
    return a, b, spec


def p10(samples: list[float]) -> float:
    return float(np.percentile(samples, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=30, help="calls per side per round")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    print("| network | fused step (p10 us) | stem + first block as layers/block (p10 us) | fused / not |")
    print("|---|---:|---:|---:|")
    for name, make in NETWORKS.items():
        got = sides(make(), args.threads)
        if got is None:
            print(f"| {name} | not fused | | |")
            continue
        a, b, _ = got
        ta, tb = [], []
        for _ in range(args.rounds):
            for fn, ts in ((a, ta), (b, tb)):
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
        print(f"| {name} | {p10(ta) * 1e6:.1f} | {p10(tb) * 1e6:.1f} | {p10(ta) / p10(tb):.3f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
