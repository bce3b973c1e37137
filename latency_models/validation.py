"""Fit the per-network overhead and validate predictions against end-to-end measurements.

The overhead is fitted on one set of random architectures (`fit_overhead`, seeds from 10_000) and validated on a
disjoint set (`validate`, seeds from 0; any architecture also in the fitting set is dropped), so the reported
error contains no train/test leakage. A FLOPs-proportional baseline (ms = a * MACs + b) is fitted on the same
fitting set and scored on the same validation set.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from latency_models.devices import Device
from latency_models.predictor import Overhead, Predictor
from nas.io import write_atomic
from nas.timing import STATS, round_robin_rounds
from search_spaces import Arch, Budget, SearchSpace, count_macs, sample

FIT_SEED = 10_000
# the overhead has up to four coefficients (scale, per op, per input element, constant); fewer networks than
# twice that fit noise, not the machine
MIN_FIT_SAMPLES = 8
# below this share of networks within +-5% of their own second measurement, a validation warns that the machine's
# noise, not only the predictor, limits its within +-5% figure (the target for that figure is 95%)
NOISY_REPEAT = 95.0


def budget_levels(space: SearchSpace, levels: int = 4) -> list[Budget]:
    """MAC budgets spread evenly between the space's smallest and largest architecture."""
    lo, hi = count_macs(space.smallest()), count_macs(space.largest())
    return [Budget("macs", lo + (hi - lo) * (i + 1) / levels) for i in range(levels)]


def sample_archs(space: SearchSpace, n: int, seed: int, levels: int = 4, exclude: set[str] = frozenset()
                 ) -> list[Arch]:
    """`n` distinct architectures spread over `levels` MAC budgets, none with a hash in `exclude`."""
    out: dict[str, Arch] = {}
    budgets = budget_levels(space, levels)
    rnd = 0
    while len(out) < n and rnd < 50:
        for i, b in enumerate(budgets):
            want = math.ceil((n - len(out)) / (len(budgets) - i)) if len(out) < n else 0
            for a in sample(space, b, n=want, seed=seed + 1000 * rnd + i):
                if a.hash() not in exclude and len(out) < n:
                    out.setdefault(a.hash(), a)
        rnd += 1
    return list(out.values())


def measure_archs(device: Device, archs: list[Arch], reps: int = 9, passes: int = 10, progress: bool = True,
                  desc: str = "measure", stat: str = "p10_ms") -> list[float]:
    """End-to-end latency (ms) of each architecture on `device`: the lowest over `passes` of the statistic
    `stat` (median_ms, p10_ms or min_ms, as the predictor sums) of `reps` runs,
    the passes going round-robin over all architectures so that a burst of load on the machine hits one pass of
    many networks rather than every pass of one."""
    return [min(p) for p in measure_passes(device, archs, reps, passes, progress, desc, stat)]


def measure_passes(device: Device, archs: list[Arch], reps: int = 9, passes: int = 10, progress: bool = True,
                   desc: str = "measure", stat: str = "p10_ms") -> list[list[float]]:
    """`measure_archs`' measurement with every pass kept: per architecture, `stat` (ms) of each pass in order."""
    if stat not in STATS:
        raise ValueError(f"stat: expected one of {list(STATS)}, got {stat!r}")
    it = archs
    if progress:
        from tqdm import tqdm

        it = tqdm(archs, desc=f"{desc}: build", unit="arch", file=sys.stderr, dynamic_ncols=True)
    runners = dict(enumerate(device.prepare_arch(a) for a in it))

    def bar(p: int, keys: Iterable[int]) -> Iterable[int]:
        return tqdm(keys, desc=f"{desc}: pass {p + 1}/{passes}", unit="arch", file=sys.stderr, dynamic_ncols=True)

    every = round_robin_rounds(runners, reps=reps, rounds=passes, warmup=5, max_round_s=2.0,
                               progress=bar if progress else None)
    return [[getattr(t, stat) for t in every[i]] for i in range(len(archs))]


def halves(passes: list[list[float]]) -> tuple[list[float], list[float]] | None:
    """Each architecture measured twice from one measurement: the lowest of its odd passes and of its even ones
    (None with fewer than 2 passes). Each half is the best of half the passes, so the two disagree somewhat more
    than two full measurements would: their agreement bounds what any predictor can show against one."""
    if not passes or len(passes[0]) < 2:
        return None
    return [min(p[0::2]) for p in passes], [min(p[1::2]) for p in passes]


def fit_overhead(predictor: Predictor, device: Device, space: SearchSpace, n: int = 60, reps: int = 9,
                 passes: int = 10, progress: bool = True) -> tuple[Overhead, dict]:
    """Measure `n` fitting architectures and fit the overhead; returns it and the fitting data."""
    if n < MIN_FIT_SAMPLES:
        raise ValueError(f"fit-samples: expected at least {MIN_FIT_SAMPLES} architectures, got {n}")
    archs = sample_archs(space, n, FIT_SEED)
    measured = measure_archs(device, archs, reps, passes, progress, desc="fit overhead", stat=predictor.stat)
    return _fit(predictor, space, archs, measured)


def _fit(predictor: Predictor, space: SearchSpace, archs: list[Arch], measured: list[float]
         ) -> tuple[Overhead, dict]:
    overhead = Overhead.fit([predictor.ops_ms(a) for a in archs], [a.resolution ** 2 * a.in_channels for a in archs],
                            measured)
    macs = [count_macs(a) for a in archs]
    base = np.polyfit(macs, measured, 1, w=1 / np.asarray(measured))
    # `fused_ops`: whether the sums priced fused blocks as one op (a table with fused rows); profiling drops an
    # overhead fitted without them once fused rows join the table
    data = {"space": space.name, "stat": predictor.stat, "archs": [a.hash() for a in archs],
            "measured_ms": measured, "fused_ops": predictor.fused_threads is not None,
            "baseline": {"ms_per_mmac": float(base[0]) * 1e6, "const_ms": float(base[1])}}
    return overhead, data


def fit_and_validate(predictor: Predictor, device: Device, space: SearchSpace, n_fit: int, n: int, reps: int = 9,
                     passes: int = 10, progress: bool = True) -> tuple[Overhead, dict, Report, pd.DataFrame]:
    """`fit_overhead` on `n_fit` architectures and `validate` on `n` others, both sets measured in the same
    round-robin passes: a machine whose speed drifts between two measurement sessions (a VM's second vCPU,
    seen shifting 2-thread ONNX Runtime times by 8% between a fit and a validation run) then moves both sets
    alike, and the score is the model's error, not the drift's."""
    if n_fit < MIN_FIT_SAMPLES:
        raise ValueError(f"fit-samples: expected at least {MIN_FIT_SAMPLES} architectures, got {n_fit}")
    fit_archs = sample_archs(space, n_fit, FIT_SEED)
    archs = sample_archs(space, n, 0, exclude={a.hash() for a in fit_archs})
    every = measure_passes(device, fit_archs + archs, reps, passes, progress, desc="fit + validate",
                           stat=predictor.stat)
    measured = [min(p) for p in every]
    overhead, data = _fit(predictor, space, fit_archs, measured[:n_fit])
    fitted = Predictor(predictor.table, overhead=overhead, stat=predictor.stat)
    report, df = _score(fitted, archs, measured[n_fit:], data, halves(every[n_fit:]))
    return overhead, data, report, df


@dataclass
class Report:
    """Prediction error over a validation set (ms and %)."""

    n: int
    rmse_ms: float
    mape: float
    within_5: float
    within_10: float
    max_abs_pct: float
    baseline_rmse_ms: float
    baseline_mape: float
    baseline_within_5: float
    baseline_within_10: float
    mean_measured_ms: float
    # the measurement's own repeatability (None where not measured): the odd passes' best against the even ones'
    repeat_mape: float | None = None
    repeat_within_5: float | None = None

    def lines(self) -> list[str]:
        repeat = []
        if self.repeat_within_5 is not None:
            repeat.append(f"measurement repeatability (best of odd vs even passes): {self.repeat_within_5:.1f}% of "
                          f"the networks within +-5% of themselves, mean {self.repeat_mape:.2f}% apart")
            if self.repeat_within_5 < NOISY_REPEAT:
                repeat.append("  the measurement itself is not repeatable to +-5% here: other load on this machine "
                              "limits the within +-5% figure as much as the predictor; rerun on an idle machine")
        return [
            f"{'':24}{'predictor':>12}{'FLOPs baseline':>16}",
            f"{'RMSE (ms)':24}{self.rmse_ms:>12.4f}{self.baseline_rmse_ms:>16.4f}",
            f"{'mean abs % error':24}{self.mape:>11.2f}%{self.baseline_mape:>15.2f}%",
            f"{'within +-5%':24}{self.within_5:>11.1f}%{self.baseline_within_5:>15.1f}%",
            f"{'within +-10%':24}{self.within_10:>11.1f}%{self.baseline_within_10:>15.1f}%",
            f"{'max abs % error':24}{self.max_abs_pct:>11.2f}%",
            f"({self.n} architectures, mean measured {self.mean_measured_ms:.3f} ms)",
            *repeat,
        ]


def _errors(pred: np.ndarray, meas: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
    pct = 100 * np.abs(pred - meas) / meas
    rmse = float(np.sqrt(np.mean((pred - meas) ** 2)))
    return rmse, float(pct.mean()), float((pct <= 5).mean() * 100), float((pct <= 10).mean() * 100), pct


def score(pred: list[float], base: list[float], meas: list[float],
          repeat: tuple[list[float], list[float]] | None = None) -> Report:
    """The predictor's and the baseline's errors against `meas`; with `repeat` (two measurements of the same
    networks, `halves`), also how often those agree within 5% of each other (their percent difference is taken
    against the lower of the two, the direction that reads it larger)."""
    p, b, m = np.asarray(pred), np.asarray(base), np.asarray(meas)
    r, mape, w5, w10, pct = _errors(p, m)
    br, bmape, bw5, bw10, _ = _errors(b, m)
    rep_mape = rep_w5 = None
    if repeat is not None:
        odd, even = np.asarray(repeat[0]), np.asarray(repeat[1])
        _, rep_mape, rep_w5, _, _ = _errors(np.maximum(odd, even), np.minimum(odd, even))
    return Report(len(m), r, mape, w5, w10, float(pct.max()), br, bmape, bw5, bw10, float(m.mean()), rep_mape,
                  rep_w5)


def validate(predictor: Predictor, device: Device, space: SearchSpace, n: int, fit: dict, reps: int = 9,
             passes: int = 10, progress: bool = True) -> tuple[Report, pd.DataFrame]:
    """Measure `n` validation architectures (disjoint from the fitting set) and score the predictor."""
    archs = sample_archs(space, n, 0, exclude=set(fit["archs"]))
    every = measure_passes(device, archs, reps, passes, progress, desc="validate", stat=predictor.stat)
    return _score(predictor, archs, [min(p) for p in every], fit, halves(every))


def _score(predictor: Predictor, archs: list[Arch], measured: list[float], fit: dict,
           repeat: tuple[list[float], list[float]] | None = None) -> tuple[Report, pd.DataFrame]:
    assert not {a.hash() for a in archs} & set(fit["archs"])
    bl = fit["baseline"]
    rows = []
    for a, m in zip(archs, measured, strict=True):
        macs = count_macs(a)
        rows.append({"arch": str(a), "hash": a.hash(), "resolution": a.resolution, "mmacs": macs / 1e6,
                     "measured_ms": m, "predicted_ms": predictor.predict_ms(a),
                     "baseline_ms": bl["ms_per_mmac"] * macs / 1e6 + bl["const_ms"]})
    df = pd.DataFrame(rows)
    if repeat is not None:
        df["odd_passes_ms"], df["even_passes_ms"] = repeat
    return score(df.predicted_ms.tolist(), df.baseline_ms.tolist(), df.measured_ms.tolist(), repeat), df


def plot(df: pd.DataFrame, report: Report, title: str, path: Path) -> Path:
    """Predicted-vs-measured scatter with the +-5/10% bands (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    lo, hi = 0.9 * df.measured_ms.min(), 1.1 * df.measured_ms.max()
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=1)
    for f, style in ((0.05, ":"), (0.10, "--")):
        ax.plot(xs, xs * (1 + f), "k" + style, lw=0.7)
        ax.plot(xs, xs * (1 - f), "k" + style, lw=0.7)
    ax.scatter(df.measured_ms, df.baseline_ms, s=10, c="0.7",
               label=f"FLOPs baseline (MAPE {report.baseline_mape:.1f}%)")
    ax.scatter(df.measured_ms, df.predicted_ms, s=12, c="C0",
               label=f"predictor (MAPE {report.mape:.1f}%, {report.within_10:.0f}% in +-10%)")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        # the temporary file keeps path's suffix, so matplotlib picks the same format as for path itself
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)
    return path


def save_report(report: Report, df: pd.DataFrame, outdir: Path, extra: dict,
                log: Callable[[str], None] = print) -> None:
    """Write `outdir`/validation.csv (one row per network) and `outdir`/summary.json (`report` + `extra`)."""
    write_atomic(outdir / "validation.csv", lambda tmp: df.to_csv(tmp, index=False))
    text = json.dumps({**asdict(report), **extra}, indent=2) + "\n"
    write_atomic(outdir / "summary.json", lambda tmp: Path(tmp).write_text(text))
    log(f"wrote {outdir / 'validation.csv'}, {outdir / 'summary.json'}")
