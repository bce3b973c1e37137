"""Peak activation memory of networks on the kernels, in one run (issue #33's memory table).

For each network: the executor's arena (`nas.kernels.memory`, input and int32 logits included), one buffer per
tensor with no reuse (what the executor allocated before it had a planner), and the most bytes alive during one
layer (no layer-by-layer plan can use less); and its int8 weight bytes. With `--run`, each network is also lowered
with random weights and run on the kernels, and the arena the executor allocates is checked against the
prediction from the architecture alone.

    python benchmarks/bench_memory.py [--arch ARCH ...] [--run] [--json out.json]

Layer-by-layer execution cannot go below the "most alive" column: the fused inverted-residual blocks of issue #33
(never materialising the expanded tensor) are what would.
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
    mem = activation_plan(arch)
    out = {"network": name, "arch": str(arch), "mmacs": ss.count_macs(arch) / 1e6, "arena": mem.arena_bytes,
           "unplanned": mem.unplanned_bytes, "most_alive": max(mem.live_bytes()), "weights": weight_bytes(arch)}
    if run:
        import numpy as np

        from latency_models.kernel_runner import kernel_network

        net = kernel_network(arch)
        shape = (1, arch.resolution, arch.resolution, arch.in_channels)
        net.run(np.zeros(shape, dtype=np.uint8))
        out["executor_arena"] = net.memory_plan(shape).arena_bytes
        assert out["executor_arena"] == mem.arena_bytes, (name, out["executor_arena"], mem.arena_bytes)
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
          "int8 weights |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {r['mmacs']:.1f} | {r['arena'] / 1e3:,.1f} KB | {r['unplanned'] / 1e3:,.1f} KB | "
              f"{r['arena'] / r['unplanned']:.2f} | {r['most_alive'] / 1e3:,.1f} KB | {r['weights'] / 1e3:,.1f} KB |")
    if args.run:
        print("\nexecutor arena = prediction for every network (checked)")
    if args.json is not None:
        blob = json.dumps(rows, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
