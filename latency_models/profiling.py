"""Build a latency table: time every op on a device, incrementally and resumably, locally or over Ray."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import DeviceSpec, get_device
from latency_models.ops import FUSED_OPS, OpKey
from latency_models.table import LatencyTable, LatencyTableError
from nas.cores import CpuSample, others_cores, read_sample
from nas.timing import summarize

# rough per-op set-up cost (s) and throughput (MAC/s) used only for the up-front time estimate
_SETUP_S = {"kernels": 0.002, "torch-fp32": 0.005, "torch-int8": 0.04, "ort-int8": 0.01, "ort-fp32": 0.01}
_RATE = {"kernels": 3e10, "torch-fp32": 3e10, "torch-int8": 1.5e10, "ort-int8": 2e10, "ort-fp32": 2e10}


def estimate_seconds(ops: Sequence[OpKey], spec: DeviceSpec, reps: int) -> float:
    """A rough guess of how long profiling `ops` takes (shown before starting; the progress bar refines it)."""
    per_call = [max(2e-4, 1e-5 + o.macs / _RATE[spec.name]) for o in ops]
    return sum(_SETUP_S[spec.name] + (reps + 6) * t for t in per_call)


def measure_ops(spec: DeviceSpec, ops: Sequence[OpKey], reps: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Time each op on this machine; returns the device fingerprint and one table row per op."""
    device = get_device(spec)
    # On N threads each op is also timed on one (`serial_ms`, right after, so both see the same machine state):
    # the predictor's overhead prices the thread hand-off a network keeps from the difference.
    single = get_device(dataclasses.replace(spec, threads=1)) if spec.threads > 1 else None
    rows = []
    for op in ops:
        t = summarize(device.time_op(op, reps))
        serial = summarize(single.time_op(op, reps)).p10_ms if single is not None else t.p10_ms
        rows.append({**op._asdict(), "bits": spec.bits, "macs": op.macs, "median_ms": t.median_ms, "p10_ms": t.p10_ms,
                     "mad_ms": t.mad_ms, "min_ms": t.min_ms, "max_ms": t.max_ms, "n": t.n,
                     "rejected": t.rejected, "passes": 1, "serial_ms": serial})
    fp = device.fingerprint()
    ray = sys.modules.get("ray")  # imported in a Ray worker (`profile_ray`); a local run need not have Ray at all
    if ray is not None and ray.is_initialized():
        fp["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return fp, rows


def open_table(path: Path, spec: DeviceSpec, fingerprint: dict[str, Any] | None) -> LatencyTable:
    """The table at `path` to resume, or a new empty one; refuses to mix measurements of different devices."""
    if not path.exists():
        return LatencyTable.empty(fingerprint or {})
    table = LatencyTable.load(path)
    if fingerprint is not None:
        diffs = table.fingerprint_diffs(fingerprint) if table.fingerprint else []
        if diffs:
            raise LatencyTableError(f"{path} holds measurements of another device/build ({'; '.join(diffs)}); "
                                    "pass a different --out, or delete the file to start over")
    return table


# The canary: one op of the table timed before and after every chunk. A chunk whose canary ran more than CANARY_TOL
# slower than the fastest canary of the run was measured on a slowed machine and is measured again later in the run
# (up to CANARY_RETRIES times). Host contention on a VM (another guest on the core's sibling or on the memory
# system) slows every op for minutes and shows up in no load reading of this guest: a kernels table of small32
# profiled through such phases had runs of 100-300 ops 25-80% slow in all three passes, and its predictions fell
# from 96-98% to 86% of networks within +-5% (Ice Lake, 2026-12-08; benchmarks/RESULTS_latency.md).
CANARY_TOL = 0.10
CANARY_RETRIES = 2


def canary_op(ops: Sequence[OpKey]) -> OpKey:
    """The op timed around every chunk: the one at the 75th percentile of MACs among `ops` that are not fused
    blocks (big enough that its 10th-percentile time is steady, small enough to add little time)."""
    plain = sorted((o for o in ops if o.op not in FUSED_OPS), key=lambda o: (o.macs, o)) or sorted(ops)
    return plain[min(len(plain) - 1, (3 * len(plain)) // 4)]


def profile(spec: DeviceSpec, ops: Sequence[OpKey], out: str | os.PathLike, reps: int = 30, chunk: int = 32,
            max_ops: int | None = None, progress: bool = True, passes: int = 3,
            measure: Callable[[Sequence[OpKey]], tuple[dict[str, Any], list[dict[str, Any]]]] | None = None,
            log: Callable[[str], None] = print, retries: int = CANARY_RETRIES) -> LatencyTable:
    """Measure every op of `ops` not yet in the table at `out`, saving after each chunk of `chunk` ops.

    `measure` times a chunk (default: on this machine; `profile_ray` passes a remote one). `max_ops` stops
    after that many new measurements (time-boxed profiling; rerun to continue). With `passes` > 1 every op is
    measured again in later passes over the whole table and keeps its lowest median, which filters out
    stretches when other processes slowed the machine. Slow phases that outlast the passes (a VM's host busy for
    minutes) are caught by the canary (`canary_op`, timed before and after each chunk): a chunk measured while it
    ran more than `CANARY_TOL` above its fastest time in this run is measured again later, up to `retries` times,
    and the log says how many ops never got a clean measurement.

    Fused-block ops (`latency_models.ops`, from `enumerate_ops(..., device=spec)`) are timed on the `kernels`
    device only; other devices refuse them. When fused rows join a table whose stored overhead was fitted without
    them (`nas latency fit` before fused rows existed), that overhead no longer matches what the predictor sums, so
    it is dropped (logged): `nas latency fit` fits a new one, and the search fits one itself.
    """
    fused = next((o for o in ops if o.op in FUSED_OPS), None)
    if fused is not None and spec.fused_threads is None:
        raise ValueError(f"ops: {spec.table_id} runs every layer alone; fused blocks such as {fused.describe()} are "
                         f"timed on the kernels device only")
    out = Path(out)
    local = measure is None
    fingerprint = get_device(spec).fingerprint() if local else None
    table = open_table(out, spec, fingerprint)
    if local and not table.fingerprint:
        table.fingerprint = fingerprint or {}
    done = table.passes()
    todo = [(p, o) for p in range(1, passes + 1) for o in ops if done.get(o, 0) < p]
    finished = len(ops) * passes - len(todo)
    if max_ops is not None:
        todo = todo[:max_ops]
    eta = estimate_seconds([o for _, o in todo], spec, reps)
    log(f"profile {spec.table_id}: {len(ops)} distinct ops x {passes} pass(es), {finished} already measured, "
        f"{len(todo)} to measure (estimated {eta / 60:.1f} min) -> {out}")
    if measure is None:
        def measure(chunk_ops: Sequence[OpKey]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return measure_ops(spec, chunk_ops, reps)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(ops) * passes, initial=finished, unit="op", desc=f"profile {spec.table_id}",
                   file=sys.stderr, dynamic_ncols=True)
    busiest = 0.0
    canary = canary_op(ops) if ops else None
    queue = deque(([o for _, o in todo[i:i + chunk]], 0) for i in range(0, len(todo), chunk))
    judged: list[tuple[list[OpKey], int, float]] = []  # measured chunks: ops, retries so far, canary ms
    best = float("inf")

    def slow(canary_ms: float) -> bool:  # against the fastest canary so far
        return canary_ms > best * (1 + CANARY_TOL)

    try:
        while queue:
            part, tries = queue.popleft()
            before = read_sample() if local else None
            fp, rows = measure([canary, *part, canary])
            if local:
                busiest = max(busiest, other_load(before))
            if not table.fingerprint:
                table.fingerprint = fp
            elif not local:
                table.check_fingerprint(fp, strict=True)
            slowest = max(rows[0]["p10_ms"], rows[-1]["p10_ms"])  # the machine's state over the chunk
            rows = rows[1:-1]
            table.add(rows)
            if table.overhead is not None and not table.overhead.get("fused_ops") and any(
                    r["op"] in FUSED_OPS for r in rows):
                log(f"profile {spec.table_id}: the table's overhead was fitted without fused-block rows: dropped "
                    f"(run `nas latency fit` for end-to-end predictions)")
                table.overhead = None
            table.save(out)
            if bar is not None:
                bar.update(len(part))
            # a chunk is judged against the fastest canary seen so far, so chunks measured before a faster one
            # was seen are judged again: a run that starts in a slow phase retries its first chunks too
            best = min(best, slowest)
            judged.append((part, tries, slowest))
            kept = []
            for ops_done, tries_done, ms in judged:
                if slow(ms) and tries_done < retries:
                    queue.append((ops_done, tries_done + 1))
                    if bar is not None:
                        bar.total += len(ops_done)
                else:
                    kept.append((ops_done, tries_done, ms))
            judged = kept
    finally:
        if bar is not None:
            bar.close()
    if not len(table):
        table.save(out)
    still_slow = sum(len(p) for p, _, ms in judged if slow(ms))
    if still_slow:
        log(f"profile {spec.table_id}: {still_slow} op measurement(s) ran while the machine was more than "
            f"{CANARY_TOL:.0%} slower than at its fastest (the canary op {canary.describe()}), also after "
            f"{retries} retries; rerun `nas profile` with --passes one higher when the machine is quiet: each op "
            f"keeps its lowest time")
    if busiest > BUSY_LOAD:
        # every pass of an op can run under the same load: keeping the lowest pass does not repair that
        log(f"profile {spec.table_id}: other processes kept about {busiest:.1f} CPUs busy while it ran, so op "
            f"times may be too slow (a table profiled under load was the largest prediction error measured, "
            f"benchmarks/RESULTS_latency.md); rerun `nas profile` with --passes one higher on an idle machine: each "
            f"op keeps its lowest time")
    return table


# more than this many CPUs' worth of other runnable work (1-minute load average, less the profile's own threads)
# during profiling gets a warning
BUSY_LOAD = 0.75


def other_load(before: CpuSample | None) -> float:
    """Cores' worth of CPU time other processes used on this process's CPUs since `before` (`nas.cores`'
    reading; 0 where /proc cannot be read). Not the load average: it trails by a minute, so a 2-thread run counted
    as other processes' load in the 1-thread profile after it."""
    after = read_sample() if before is not None else None
    if after is None:
        return 0.0
    return others_cores(before, after) or 0.0


def profile_ray(spec: DeviceSpec, ops: Sequence[OpKey], out: str | os.PathLike, address: str, resource: str,
                reps: int = 30, chunk: int = 32, max_ops: int | None = None, progress: bool = True,
                passes: int = 3, log: Callable[[str], None] = print) -> LatencyTable:
    """`profile`, with each chunk timed by a Ray task on the cluster node that holds custom resource
    `resource`; rows come back to the driver, which writes (and resumes) the table locally."""
    import ray

    ray.init(address=address, log_to_driver=False, include_dashboard=False, ignore_reinit_error=True)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource)]
        if not nodes:
            raise ValueError(f"resources: no live node of the Ray cluster at {address} has resource "
                             f"{resource!r}; start one with: ray start --address {address} "
                             f"--resources '{{\"{resource}\": 1}}'")
        task = ray.remote(measure_ops).options(num_cpus=0, resources={resource: 1}, max_retries=2)

        def measure(chunk_ops: Sequence[OpKey]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return ray.get(task.remote(spec, list(chunk_ops), reps))

        return profile(spec, ops, out, reps, chunk, max_ops, progress, passes, measure, log)
    finally:
        ray.shutdown()
