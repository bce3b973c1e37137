"""Peak activation memory of networks on the kernels, in one run (issue #33's memory table).

For each network: the executor's layer-by-layer arena (`run(fused=False)`; `nas.kernels.memory`, input and int32
logits included), one buffer per tensor with no reuse (what the executor allocated before it had a planner), and the
most bytes alive during one layer (no layer-by-layer plan can use less); the arena with fused inverted-residual
blocks (the default `run`, issue #33: blocks without squeeze-excite in bands of rows, the expanded tensor never
materialised; 1 thread, the band buffers included); and its int8 weight bytes. With `--run`, each network is also
lowered with random weights and run on the kernels, fused and not, and the arenas the executor allocates are
checked against the predictions from the architecture alone (and the fused logits against the unfused ones).

    python benchmarks/bench_memory.py [--arch ARCH ...] [--run] [--rss] [--json out.json]

Layer-by-layer execution cannot go below the "most alive" column; fused blocks can.

With `--rss`, the same yardstick for every runtime (Linux only): in a fresh process per network and runtime, the
resident memory one inference adds on top of the loaded model, i.e. the process's peak resident set during the run
(`VmHWM`, reset through `/proc/self/clear_refs` after `malloc_trim`) minus its resident set before it. Ours: the
first run after the weights are packed (the arena, the per-call GEMM and stem buffers, the output); ONNX Runtime
(int8 QDQ and fp32, as `nas profile --device ort-*` builds them, 1 thread): the second run with its CPU memory arena
off, so each run allocates what its own planner (memory patterns, on by default) asks for and frees it. Pages are
4 KiB; the Python-side output array is counted for all.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
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


RSS_RUNTIMES = ("nas", "ort-int8", "ort-fp32")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status: no {key}")


def rss_added(runtime: str, arch: ss.Arch) -> int:
    """Bytes of resident memory one inference of `arch` adds on `runtime` (this process; see the module docstring)."""
    import numpy as np

    r = arch.resolution
    x = np.random.default_rng(0).standard_normal((1, arch.in_channels, r, r), dtype=np.float32)
    if runtime == "nas":
        from latency_models.kernel_runner import kernel_network

        net = kernel_network(arch)
        net.compile()
        run = lambda: net.run(x, threads=1)  # noqa: E731 - the first run allocates the arena: measured
    else:
        import onnxruntime as ort

        from latency_models.ort_runner import network_model

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.enable_cpu_mem_arena = False  # each run allocates and frees what the planner asks for
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = network_model(arch, runtime == "ort-fp32", os.path.join(tempfile.mkdtemp(), "model.onnx"))
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda: sess.run(None, {name: x})  # noqa: E731
        run()  # lazy set-up (pre-packing, the memory pattern) happens in the first run
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the OS, so reuse cannot hide a peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _status_bytes("VmRSS:")
    run()
    return _status_bytes("VmHWM:") - base


def rss_row(arch: ss.Arch) -> dict[str, int | str]:
    """`rss_added` of every runtime in `RSS_RUNTIMES`, each in a fresh interpreter (or why it could not run)."""
    out: dict[str, int | str] = {}
    for runtime in RSS_RUNTIMES:
        proc = subprocess.run([sys.executable, __file__, "--rss-child", runtime, str(arch)], capture_output=True,
                              text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        out[runtime] = int(lines[-1]) if proc.returncode == 0 and lines else (proc.stderr.strip().splitlines()
                                                                              or ["failed"])[-1][:100]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", default=[], help="more networks (compact string, JSON file or preset)")
    ap.add_argument("--run", action="store_true", help="also run each network and check the executor's arena")
    ap.add_argument("--rss", action="store_true",
                    help="also measure the memory one run adds on our kernels and ONNX Runtime (Linux)")
    ap.add_argument("--rss-child", nargs=2, metavar=("RUNTIME", "ARCH"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.rss_child:
        print(rss_added(args.rss_child[0], ss.parse_arch(args.rss_child[1])))
        return 0
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
    if args.rss:
        print("\nMemory one inference adds (peak resident set during the run minus before it, fresh process per "
              "network and runtime, 1 thread; see the docstring):\n")
        print("| network | fused arena (predicted) | nas int8 | ONNX Runtime int8 (QDQ) | ONNX Runtime fp32 |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            r["rss_added"] = rss_row(nets[r["network"]])
            cells = [f"{v / 1e3:,.1f} KB" if isinstance(v, int) else f"failed: {v}" for v in r["rss_added"].values()]
            print(f"| {r['network']} | {r['fused_arena'] / 1e3:,.1f} KB | " + " | ".join(cells) + " |", flush=True)
    if args.run:
        print("\nexecutor arenas (fused and not) = predictions, fused logits = unfused logits, for every network "
              "(checked)")
    if args.json is not None:
        blob = json.dumps(rows, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
