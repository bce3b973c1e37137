"""The search's latency stage: the predictor the trials are priced with, and measured latencies of chosen networks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import latency_models as lm
import search_spaces as ss
from latency_models.validation import fit_overhead, measure_archs
from nas.cores import fair_threads

if TYPE_CHECKING:
    from nas.search.plan import LatencyPlan


def latency_predictor(plan: LatencyPlan, space: ss.SearchSpace, log: Callable[[str], None]) -> lm.Predictor:
    """The latency predictor of the plan's device.

    Without a table at the default path, this space's ops are profiled first and the per-network overhead is
    fitted on a few measured networks, so a fresh machine needs no set-up.
    """
    path = Path(plan.table) if plan.table else lm.default_table_path(plan.device, root=plan.root)
    if plan.table and not path.exists():
        raise FileNotFoundError(f"table: {path} does not exist")
    spec = lm.DeviceSpec.make(plan.device)
    if path.exists() and not plan.table:
        # the default table must describe this machine and this kernel build; a stale one is kept aside
        diffs = lm.LatencyTable.load(path, plan.device).fingerprint_diffs(lm.get_device(spec).fingerprint())
        if diffs:
            stale = f"{path.stem}-stale-{time.strftime('%Y%m%d-%H%M%S')}"
            for f in (path, path.with_suffix(".json")):
                if f.exists():
                    f.rename(f.with_name(stale + f.suffix))
            log(f"latency table {path} was measured on another machine or kernel build ({'; '.join(diffs)}): "
                f"kept as {path.with_name(stale)}.*, profiling again")
    if not path.exists():
        log(f"no latency table for {plan.device} at {path}: profiling the ops of space {space.name} first")
        # several passes: shared machines slow down for seconds at a time, and one pass left such bursts in the
        # table (benchmarks/RESULTS_latency.md)
        with fair_threads(plan.threads):  # see `measure_all`
            lm.profile(spec, lm.enumerate_ops([space], device=spec), path, reps=plan.profile_reps,
                       passes=plan.profile_passes)
    table = lm.LatencyTable.load(path, plan.device)
    if plan.table:  # a table of another device, bit width or thread count would predict the wrong latency
        diffs = table.fingerprint_diffs({"device": spec.name, "bits": spec.bits, "threads": spec.threads})
        if diffs:
            raise ValueError(f"--table: {path} was not measured on --device {plan.device} ({'; '.join(diffs)}); "
                             f"pass the --device it was profiled for")
    if table.overhead is None and not plan.table:
        log(f"fitting the per-network latency overhead on {plan.overhead_networks} measured networks")
        with fair_threads(plan.threads):  # see `measure_all`
            overhead, data = fit_overhead(lm.Predictor(table), lm.get_device(spec), space, n=plan.overhead_networks,
                                          reps=5, passes=plan.overhead_passes, progress=False)
        table.overhead = {**overhead.to_dict(), **data}
        table.save(table.path)
    return lm.load_predictor(plan.device, str(path))


def measure_all(archs: list[ss.Arch], device: str, threads: int, reps: int = 9, passes: int = 5) -> list[float]:
    """Measured end-to-end latency (ms) of each of `archs` on `device` (random weights; speed only), as the latency
    table predicts it: the lowest 10th percentile over `passes` round-robin passes of `reps` runs (see
    `latency_models.validation.measure_archs`)."""
    timer = lm.get_device(lm.DeviceSpec.make(device))
    # building the networks runs torch ops, sized by nas.cores like training (a spinning OpenMP team builds them
    # several times slower while another run is busy); the timed runs use the device's fixed thread count anyway
    with fair_threads(threads):
        return measure_archs(timer, archs, reps=reps, passes=passes, progress=False, stat="p10_ms")


def measure_ms(arch: ss.Arch, device: str, threads: int, reps: int = 20) -> float:
    """Median measured end-to-end latency of `arch` on `device` (random weights; speed only)."""
    timer = lm.get_device(lm.DeviceSpec.make(device))
    with fair_threads(threads):  # see `measure_all`
        return float(statistics.median(timer.time_arch(arch, reps)))
