"""Latency-prediction accuracy for every device, thread count and space, in one run (issue #31's table).

For each device (table id) x space: profile the space's ops into `<results>/latency/<space>/<table id>.csv` where
missing (resumable: a killed run continues), fit the per-network overhead on `--fit-samples` random networks and
score it on `--samples` other random networks, both sets measured end to end in the same round-robin passes
(`nas latency validate`'s code: `latency_models.validation.fit_and_validate`). Prints one markdown table: within
+-10%, within +-5%, MAPE, max error, the FLOPs baseline's within +-10%, and how often the measurement agrees with
itself within +-5% (the best of the odd passes against the best of the even ones: where the measurement disagrees
with itself, no predictor can agree with it closer), per row. Then the few-shot curve (`nas profile --sample F
--from TABLE`, `benchmarks/bench_latency_transfer.py`'s measure) between the tables this run profiled: the first
device's 1-thread table to every other device's, and each device's 1-thread table to its N-thread one: network
MAPE of the transferred table against the full one per fraction measured.

    python benchmarks/bench_latency_validation.py [--device kernels --device ort-int8 ...] [--threads 1 --threads 2]
        [--space small32 --space mobilenetv2] [--samples 100] [--fit-samples 60] [--json out.json]

Resumable: a row already validated with the same settings on the same table (its summary.json under
`<results>/latency/<space>/validate-<table id>/`) is read back, not measured again.
Devices a machine cannot run (no ONNX Runtime, an ISA the CPU lacks) are reported as skipped with the reason.
Numbers from a machine that other processes share are not results: run it on a quiet one and name the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency_transfer import run_one  # noqa: E402

import search_spaces as ss  # noqa: E402
from latency_models import DeviceSpec, LatencyTable, Predictor, enumerate_ops, get_device, profile  # noqa: E402
from latency_models.devices import cpu_model  # noqa: E402
from latency_models.validation import fit_and_validate, save_report  # noqa: E402
from nas.io import results_dir, write_atomic  # noqa: E402

DEVICES = ("kernels", "kernels-int4", "ort-int8", "ort-fp32", "torch-fp32", "torch-int8")


def row(name: str, threads: int, space: ss.SearchSpace, args: argparse.Namespace) -> dict:
    """Profile (where missing), fit and validate one device on one space; the scores, or why it was skipped."""
    try:
        spec = DeviceSpec.make(name, threads=threads)
        device = get_device(spec)
        device.fingerprint()  # a runtime that cannot load says so here, before any profiling
    except (ValueError, ImportError) as exc:
        return {"device": name, "threads": threads, "space": space.name, "skipped": str(exc)}
    folder = Path(args.out) / "latency" / space.name
    path = folder / f"{spec.table_id}.csv"
    t0 = time.perf_counter()
    table = profile(spec, enumerate_ops([space], device=spec), path, reps=args.reps, passes=args.profile_passes,
                    progress=not args.no_progress, log=lambda m: print(f"  {m}", file=sys.stderr))
    table = LatencyTable.load(path, spec.table_id)
    profile_s = time.perf_counter() - t0
    out = folder / f"validate-{spec.table_id}"
    settings = {"samples": args.samples, "fit_samples": args.fit_samples, "net_reps": args.net_reps,
                "passes": args.passes, "table_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    done = _finished(out / "summary.json", settings)
    t1 = time.perf_counter()
    if done is None:
        overhead, fit, report, df = fit_and_validate(Predictor(table), device, space, args.fit_samples,
                                                     args.samples, args.net_reps, args.passes, not args.no_progress)
        done = {**asdict(report), "device": spec.table_id, "space": space.name, "fit_archs": fit["archs"],
                "overhead": overhead.to_dict(), "fingerprint": table.fingerprint, "settings": settings}
        save_report(report, df, out, {k: v for k, v in done.items() if k not in asdict(report)}, log=lambda m: None)
    return {"device": spec.table_id, "threads": threads, "space": space.name, "ops": len(table), "path": str(path),
            "profile_s": round(profile_s), "validate_s": round(time.perf_counter() - t1), "n": done["n"],
            "within_10": done["within_10"], "within_5": done["within_5"], "mape": done["mape"],
            "max_abs_pct": done["max_abs_pct"], "mean_ms": done["mean_measured_ms"],
            "flops_within_10": done["baseline_within_10"], "repeat_within_5": done.get("repeat_within_5"),
            "overhead": done["overhead"]}


def transfer_curves(rows: list[dict], fractions: list[float], seeds: int) -> list[dict]:
    """Print and return the few-shot curve between the tables of `rows` (see the module docstring): for each
    pair and fraction, the mean over `seeds` samples of `bench_latency_transfer.run_one`'s errors against the
    full target table (networks: 100 random architectures of the space)."""
    done = [r for r in rows if "skipped" not in r]
    out: list[dict] = []
    if not done:
        return out
    print("\n## A new device's table from a sample (network MAPE against the full table; op MAPE in brackets)\n")
    print("| source -> target | space | " + " | ".join(f"{f:g} measured" for f in fractions) + " |")
    print("|---|---|" + "---:|" * len(fractions))
    for space_name in dict.fromkeys(r["space"] for r in done):
        here = [r for r in done if r["space"] == space_name]
        ones = [r for r in here if r["threads"] == 1]
        pairs = [(ones[0], r) for r in ones[1:]]
        pairs += [(a, b) for a in ones for b in here  # the same device at N > 1 threads (DeviceSpec owns the ids)
                  if b["threads"] > 1 and DeviceSpec.make(a["device"], threads=b["threads"]).table_id == b["device"]]
        space = ss.get_space(space_name)
        rng = random.Random(0)
        archs = [space.random_arch(rng) for _ in range(100)]
        for a, b in pairs:
            source, target = LatencyTable.load(Path(a["path"])), LatencyTable.load(Path(b["path"]))
            ops = enumerate_ops([space], device=DeviceSpec.make(b["device"]))  # what the target device runs
            cells = []
            for f in fractions:
                runs = [run_one(source, target, ops, archs, f, seed) for seed in range(seeds)]
                m = {k: float(np.mean([x[k] for x in runs])) for k in runs[0]}
                out.append({"source": a["device"], "target": b["device"], "space": space_name, "fraction": f, **m})
                cells.append(f"{m['net_mape']:.2f}% ({m['op_mape']:.1f}%)")
            print(f"| {a['device']} -> {b['device']} | {space_name} | " + " | ".join(cells) + " |", flush=True)
    return out


def _finished(summary: Path, settings: dict) -> dict | None:
    """A row this script already measured with the same settings on the same table (a rerun after a crash or
    an interruption continues with the next row), else None."""
    try:
        done = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("settings") == settings else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", action="append", default=None, help=f"repeatable (default: {', '.join(DEVICES)})")
    ap.add_argument("--threads", type=int, action="append", default=None, help="repeatable (default: 1 and 2)")
    ap.add_argument("--space", action="append", default=None, choices=sorted(ss.SPACES),
                    help="repeatable (default: small32 and mobilenetv2)")
    ap.add_argument("--samples", type=int, default=100, help="validation networks per row")
    ap.add_argument("--fit-samples", type=int, default=60, help="networks the overhead is fitted on per row")
    ap.add_argument("--reps", type=int, default=30, help="timed runs per op when profiling")
    ap.add_argument("--profile-passes", type=int, default=3)
    ap.add_argument("--net-reps", type=int, default=9, help="timed runs per network and pass")
    ap.add_argument("--passes", type=int, default=10, help="round-robin passes over the networks")
    ap.add_argument("--out", default=str(results_dir(None)), help="results folder (tables under <out>/latency/)")
    ap.add_argument("--transfer-fractions", default="0.02,0.05,0.1,0.2", help="few-shot curve: fractions measured")
    ap.add_argument("--transfer-seeds", type=int, default=3, help="few-shot curve: samples per fraction")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.samples < 2 or args.fit_samples < 8:
        print("--samples: at least 2; --fit-samples: at least 8", file=sys.stderr)
        return 2
    rows = []
    print(f"# Latency prediction accuracy; CPU: {cpu_model()}\n")
    print("| device | threads | space | ops | within ±10% | within ±5% | MAPE | max error | mean ms | "
          "FLOPs baseline ±10% | measurement repeat ±5% |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for space_name in args.space or ("small32", "mobilenetv2"):
        space = ss.get_space(space_name)
        for name in args.device or DEVICES:
            for threads in args.threads or (1, 2):
                r = row(name, threads, space, args)
                rows.append(r)
                if "skipped" in r:
                    print(f"| {name} | {threads} | {space.name} | - | skipped: {r['skipped']} ||||||", flush=True)
                else:
                    rep = "-" if r["repeat_within_5"] is None else f"{r['repeat_within_5']:.0f}%"
                    print(f"| {r['device']} | {threads} | {space.name} | {r['ops']} | {r['within_10']:.0f}% | "
                          f"{r['within_5']:.0f}% | {r['mape']:.1f}% | {r['max_abs_pct']:.1f}% | "
                          f"{r['mean_ms']:.3f} | {r['flops_within_10']:.0f}% | {rep} |", flush=True)
    curves = transfer_curves(rows, [float(f) for f in args.transfer_fractions.split(",")], args.transfer_seeds)
    if args.json is not None:
        blob = json.dumps({"cpu": cpu_model(), "rows": rows, "transfer": curves}, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(blob, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
