"""Peak activation memory of networks on the kernels, in one run (issue #33's memory table).

For each network: the executor's layer-by-layer arena (`run(fused=False)`; `nas.kernels.memory`, input and int32
logits included), one buffer per tensor with no reuse (what the executor allocated before it had a planner), and the
most bytes alive during one layer (no layer-by-layer plan can use less); the arena with fused inverted-residual
blocks (the default `run`, issue #33: blocks without squeeze-excite in bands of rows, the expanded tensor never
materialised; 1 thread, the band buffers included); and its int8 weight bytes. With `--run`, each network is also
lowered with random weights and run on the kernels, fused and not, and the arenas the executor allocates are
checked against the predictions from the architecture alone (and the fused logits against the unfused ones).

    python benchmarks/bench_memory.py [--arch ARCH ...] [--run] [--json out.json]

Layer-by-layer execution cannot go below the "most alive" column; fused blocks can.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import search_spaces as ss
from nas.io import write_atomic
from nas.kernels.memory import activation_plan, weight_bytes

NETWORKS = {
    "MobileNetV2-0.35@144": lambda: ss.scale(ss.preset("mobilenetv2"), width=0.35, resolution=144),
    "MobileNetV2-1.0@224": lambda: ss.preset("mobilenetv2"),
    "MobileNetV3-Small@224": lambda: ss.preset("mobilenetv3-small"),
    "MobileNetV3-Large@224": lambda: ss.preset("mobilenetv3-large"),
    "small32 smallest (digits)": lambda: ss.get_space("small32").with_io(1, 10).smallest(),
    "small32 largest (digits)": lambda: ss.get_space("small32").with_io(1, 10).largest(),
}


def row(name: str, arch: ss.Arch, run: bool) -> dict:
    mem, fused = activation_plan(arch, fused=False), activation_plan(arch, fused=True)
    out = {"network": name, "arch": str(arch), "mmacs": ss.count_macs(arch) / 1e6, "arena": mem.arena_bytes,
           "unplanned": mem.unplanned_bytes, "most_alive": max(mem.live_bytes()), "fused_arena": fused.arena_bytes,
           "weights": weight_bytes(arch)}
    if run:
        import numpy as np

        from latency_models.kernel_runner import kernel_network

        net = kernel_network(arch)
        shape = (1, arch.resolution, arch.resolution, arch.in_channels)
        x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        assert np.array_equal(net.run(x, fused=False), net.run(x, fused=True)), name
        out["executor_arena"] = net.memory_plan(shape, fused=False).arena_bytes
        assert out["executor_arena"] == mem.arena_bytes, (name, out["executor_arena"], mem.arena_bytes)
        out["executor_fused_arena"] = net.memory_plan(shape, fused=True).arena_bytes
        assert out["executor_fused_arena"] == fused.arena_bytes, (name, out["executor_fused_arena"], fused.arena_bytes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", default=[], help="more networks (compact string, JSON file or preset)")
    ap.add_argument("--run", action="store_true", help="also run each network and check the executor's arena")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    nets = {name: make() for name, make in NETWORKS.items()}
    nets.update({text: ss.parse_arch(text) for text in args.arch})
    rows = [row(name, arch, args.run) for name, arch in nets.items()]
    print("| network | MMACs | arena (ours) | a buffer per tensor | arena / that | most alive at one layer | "
          "fused arena | fused / arena | int8 weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {r['mmacs']:.1f} | {r['arena'] / 1e3:,.1f} KB | {r['unplanned'] / 1e3:,.1f} KB | "
              f"{r['arena'] / r['unplanned']:.2f} | {r['most_alive'] / 1e3:,.1f} KB | "
              f"{r['fused_arena'] / 1e3:,.1f} KB | {r['fused_arena'] / r['arena']:.2f} | "
              f"{r['weights'] / 1e3:,.1f} KB |")
    if args.run:
        print("\nexecutor arenas (fused and not) = predictions, fused logits = unfused logits, for every network "
              "(checked)")
    if args.json is not None:
        blob = json.dumps(rows, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
