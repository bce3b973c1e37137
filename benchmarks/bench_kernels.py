"""Benchmark the nas int8 / W4A8 kernels against PyTorch and ONNX Runtime on this CPU (batch 1).

Prints markdown tables:
1. machine: CPU, ISA, GEMM ceiling (the best MAC/s of a cache-resident int8 GEMM through the kernels' public API)
   and memory bandwidth (numpy copy);
2. per op: every distinct stem / pointwise / depthwise shape of MobileNetV2-1.0@224, ours (1 and 2 threads,
   W8A8 and W4A8) vs PyTorch fp32, with the fraction of the GEMM ceiling (GEMMs) or of memory bandwidth
   (depthwise);
3. end to end: MobileNetV2-1.0@224 and a ~100M-MAC width-scaled MobileNetV2, ours vs PyTorch fp32 / int8
   (torch.ao FX, engines x86, fbgemm, qnnpack, onednn) and ONNX Runtime fp32 / int8 (QDQ and QOperator,
   per-channel, from ORT's own quantizer; and our export of the same int8 network), 1 and 2 threads. Candidates
   are timed round-robin so background load hits all alike.

Usage: python benchmarks/bench_kernels.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from latency_models.torch_ops import quantized_engine
from nas.cores import torch_threads
from nas.cpuinfo import cpu_model
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import to_onnx
from nas.kernels import _C, active_isa, available_isas, build_hash, compile_op, time_layer
from nas.kernels.lower import lower, minmax_calibration
from nas.kernels.random_specs import random_gemm
from search_spaces import build, count, layers
from search_spaces.presets import fit_width, preset

warnings.filterwarnings("ignore")


GEMM_MKN = (196, 512, 512)  # a 14x14 pointwise layer, 512 -> 512 channels: operands (~0.4 MB) stay in cache


def gemm_ceiling(reps: int = 300) -> float:
    """MAC/s of the fastest of many runs of a cache-resident int8 GEMM (GEMM_MKN) on one thread, on the active ISA,
    through the public API: the compute ceiling the per-op GEMM fractions are quoted against. It is the library's
    own best, not the CPU's instruction peak; background load can only lower a sample, so the maximum is the
    estimate."""
    m, k, n = GEMM_MKN
    rng = np.random.default_rng(0)
    op = compile_op(random_gemm(rng, n, k, act="relu6"))
    x = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    out = np.empty((m, n), np.uint8)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        op.run(x, out=out, threads=1)
        best = min(best, time.perf_counter() - t0)
    return m * k * n / best


def memory_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes/s (read + write) of a large numpy copy, best of several."""
    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(15):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * nbytes / (time.perf_counter() - t0))
    return best


SETTLE_S = 0.1  # idle time before each candidate's turn: ORT's idle workers spin for ~40 ms of CPU after a run


def round_robin(
    cands: dict[str, Callable[[], object]], rounds: int, per_round: int, settle_s: float = 0.0
) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per call of each candidate, measured interleaved.

    With several threads, each turn starts `settle_s` after the previous candidate's last call and with one
    untimed call: a runtime's workers that still spin on the other core (ONNX Runtime's, PyTorch's OpenMP team)
    would otherwise take it from the next candidate, whose time would then be the other's idle spinning."""
    for fn in cands.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for k, fn in cands.items():
            if settle_s:
                time.sleep(settle_s)
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


# ------------------------------------------------------------------ per op
def distinct_conv_layers(arch) -> list:
    seen, out = set(), []
    for layer in layers(arch):
        if layer.op not in ("conv", "pw", "dw"):
            continue
        key = (layer.op, layer.in_hw, layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
               layer.act, layer.residual)
        if key not in seen:
            seen.add(key)
            out.append(layer)
    return out


def torch_conv_time(layer, threads: int, reps: int) -> float:
    groups = layer.in_channels if layer.op == "dw" else 1
    conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.kernel // 2,
                           groups=groups, bias=True).eval()
    x = torch.randn(1, layer.in_channels, layer.in_hw, layer.in_hw)
    with torch_threads(threads), torch.inference_mode():
        for _ in range(3):
            conv(x)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            conv(x)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_ops(arch, peak: float, bw: float, reps: int) -> float:
    """Per-op table; returns the GEMM ceiling used (max of the start and end measurements: load only lowers it)."""
    rows, tot = [], {"ours1": 0.0, "ours2": 0.0, "torch": 0.0}
    for layer in distinct_conv_layers(arch):
        t1 = statistics.median(time_layer(layer, threads=1, reps=reps))
        t2 = statistics.median(time_layer(layer, threads=2, reps=reps))
        t4 = statistics.median(time_layer(layer, bits=4, threads=1, reps=reps)) if layer.op == "pw" else None
        tt = torch_conv_time(layer, 1, reps)
        tot["ours1"] += t1
        tot["ours2"] += t2
        tot["torch"] += tt
        rows.append((layer, t1, t2, t4, tt))
    peak = max(peak, gemm_ceiling())
    print("\n## Per op: distinct conv shapes of MobileNetV2-1.0@224 (batch 1, median us)\n")
    print(f"Limits: GEMM ceiling {peak / 1e9:.0f} GMAC/s ({active_isa()}, 1 thread), memory bandwidth "
          f"{bw / 1e9:.1f} GB/s.\n")
    print("| layer | op | in | cin->cout | k/s | MMAC | ours 1t | ours 2t | ours W4A8 1t | torch fp32 1t "
          "| ours 1t GMAC/s | ours 1t vs limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layer, t1, t2, t4, tt in rows:
        if layer.op == "dw":
            nbytes = (layer.in_hw**2 + layer.out_hw**2) * layer.in_channels + layer.kernel**2 * layer.in_channels
            limit = f"{nbytes / t1 / bw * 100:.0f}% of mem BW"
        else:
            limit = f"{layer.macs / t1 / peak * 100:.0f}% of GEMM ceiling"
        w4 = f"{t4 * 1e6:.1f}" if t4 is not None else "-"
        print(f"| {layer.name} | {layer.op}{'+res' if layer.residual else ''} | {layer.in_hw} | "
              f"{layer.in_channels}->{layer.out_channels} | {layer.kernel}/{layer.stride} | {layer.macs / 1e6:.2f} | "
              f"{t1 * 1e6:.1f} | {t2 * 1e6:.1f} | {w4} | {tt * 1e6:.1f} | {layer.macs / t1 / 1e9:.0f} | {limit} |")
    print(f"\nSum over the distinct shapes: ours {tot['ours1'] * 1e3:.2f} ms (1t), {tot['ours2'] * 1e3:.2f} ms (2t); "
          f"torch fp32 {tot['torch'] * 1e3:.2f} ms (1t)")
    return peak


# ------------------------------------------------------------------ end to end
def torch_int8(model, x: torch.Tensor, calib: torch.Tensor, engine: str):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    m = copy.deepcopy(model).eval()
    with quantized_engine(engine):  # observers, qconfig and weight packing all follow the engine
        prepared = prepare_fx(m, get_default_qconfig_mapping(engine), example_inputs=(x,))
        with torch.inference_mode():
            prepared(calib)
        q = convert_fx(prepared)
        with torch.inference_mode():
            q(x)
    return q


def onnx_sessions(model, x: torch.Tensor, calib: torch.Tensor, tmp: str) -> dict[str, str]:
    """Export fp32 ONNX and statically quantized QDQ / QOperator per-channel models; name -> path."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = os.path.join(tmp, "fp32.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), fp32, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": calib[i : i + 1].numpy()} for i in range(calib.shape[0])])

        def get_next(self):
            return next(self.items, None)

    paths = {"ORT fp32": fp32}
    for fmt, name in [(QuantFormat.QDQ, "ORT int8 QDQ"), (QuantFormat.QOperator, "ORT int8 QOperator")]:
        path = os.path.join(tmp, name.replace(" ", "_") + ".onnx")
        try:
            quantize_static(fp32, path, Reader(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            paths[name] = path
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"  ({name} failed: {type(e).__name__}: {e})")
    return paths


def bench_e2e(label: str, arch, threads_list: list[int], rounds: int, per_round: int) -> None:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    torch.manual_seed(0)
    model = build(arch).eval()
    r = arch.resolution
    calib = torch.randn(8, 3, r, r)
    with torch.no_grad():  # non-trivial BN statistics
        model.train()
        model(calib)
        model.eval()
    x = torch.randn(1, 3, r, r)
    xn = x.numpy()
    low8 = lower(model, arch, minmax_calibration(model, calib, bits=8))
    q8 = low8.network
    q4 = lower(model, arch, minmax_calibration(model, calib, bits=4)).network
    macs = count(arch).macs
    print(f"\n## End to end: {label} ({macs / 1e6:.0f}M MACs), batch 1, median (min) ms\n")
    engines = [e for e in ("x86", "fbgemm", "qnnpack", "onednn") if e in torch.backends.quantized.supported_engines]
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths = onnx_sessions(model, x, calib, tmp)
        # our own export of the same int8 network (weight type `auto`: int8 on CPUs with VNNI, where ORT's
        # u8 x s8 kernels are exact and fastest; uint8 elsewhere, its exact u8 x u8 kernels)
        onnx_paths["ORT int8 (nas export)"] = to_onnx(
            QuantizedModel(q8, arch, low8.act_qparams, low8.weight_scales), os.path.join(tmp, "nas_export.onnx"))
        for t in threads_list:
            cands: dict[str, Callable[[], object]] = {
                f"nas int8 ({active_isa()})": lambda t=t: q8.run(xn, threads=t),
                f"nas W4A8 ({active_isa()})": lambda t=t: q4.run(xn, threads=t),
            }
            for isa in available_isas()[1:-1]:  # the other vector paths (not the scalar reference, not the default)
                cands[f"nas int8 ({isa} path)"] = lambda t=t, isa=isa: q8.run(xn, threads=t, isa=isa)
            for e in engines:
                try:
                    qm = torch_int8(model, x, calib, e)

                    def run_q(qm=qm, e=e):
                        with quantized_engine(e), torch.inference_mode():
                            return qm(x)

                    cands[f"PyTorch int8 FX ({e})"] = run_q
                except Exception as err:  # noqa: BLE001 - engine unavailable for this graph
                    print(f"  (PyTorch int8 {e} failed: {type(err).__name__}: {str(err)[:80]})")
            for name, path in onnx_paths.items():
                so = ort.SessionOptions()
                so.intra_op_num_threads = t
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                cands[name] = lambda sess=sess: sess.run(None, {"x": xn})

            def fp32_inference():
                with torch.inference_mode():
                    return model(x)

            cands["PyTorch fp32"] = fp32_inference
            with torch_threads(t):
                results[t] = round_robin(cands, rounds, per_round, settle_s=SETTLE_S if t > 1 else 0.0)
    names = list(results[threads_list[0]])
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads_list)
    print(f"| runtime | {head} |")
    print("|---|" + "---|" * len(threads_list))
    for n in names:
        print(f"| {n} | " + " | ".join(f"{results[t][n][0] * 1e3:.2f} ({results[t][n][1] * 1e3:.2f})"
                                       for t in threads_list) + " |")
    ours, ours4 = names[0], names[1]
    for t in threads_list:
        for k, stat in ((0, "medians"), (1, "minima")):
            rivals = {n: v[k] for n, v in results[t].items() if ("int8" in n and not n.startswith("nas"))}
            if rivals:
                best = min(rivals, key=rivals.get)
                print(f"\n{t} thread(s), {stat}: nas int8 {results[t][ours][k] * 1e3:.2f} ms vs fastest other int8 "
                      f"({best}) {rivals[best] * 1e3:.2f} ms -> speed-up {rivals[best] / results[t][ours][k]:.2f}x")
        print(f"\n{t} thread(s): nas W4A8 / W8A8 time = {results[t][ours4][0] / results[t][ours][0]:.2f} (medians), "
              f"{results[t][ours4][1] / results[t][ours][1]:.2f} (minima)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    args = ap.parse_args()
    reps = 15 if args.quick else 60
    rounds, per_round = (4, 3) if args.quick else (10, 5)

    peak, bw = gemm_ceiling(), memory_bandwidth()
    print("## Machine\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; kernels ISA: {active_isa()}; "
          f"build {build_hash()} ({_C.compiler}, {_C.build_flags})")
    m, k, n = GEMM_MKN
    print(f"- GEMM ceiling (fastest int8 {m}x{k}x{n} GEMM, 1 thread, {active_isa()}): {peak / 1e9:.0f} GMAC/s")
    print(f"- measured memory bandwidth (numpy copy of 256 MiB, read+write): {bw / 1e9:.1f} GB/s")
    print(f"- load average at start: {os.getloadavg()[0]:.2f}; torch {torch.__version__}")

    mbv2 = preset("mobilenetv2")
    peak = bench_ops(mbv2, peak, bw, reps)
    bench_e2e("MobileNetV2-1.0@224", mbv2, [1, 2], rounds, per_round)
    small, width = fit_width(mbv2, 100e6)
    bench_e2e(f"MobileNetV2-{width:.2f}@224", small, [1, 2], rounds, per_round)
    print(f"\n- GEMM ceiling re-measured at end: {max(peak, gemm_ceiling()) / 1e9:.0f} GMAC/s; "
          f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
