"""Search outputs: trials.csv, pareto.csv, pareto.png and the printed summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

import search_spaces as ss
from nas.io import write_atomic
from nas.kernels import memory
from nas.search.pareto import pareto_mask
from nas.search.runner import SearchSettings, arch_for, trial_scores


def trials_frame(study: optuna.Study, s: SearchSettings,
                 latency_ms: Callable[[ss.Arch], float] | None) -> pd.DataFrame:
    """One row per completed trial, in trial order. The architecture is re-derived from the parameters (the repair
    is deterministic), so trials run by Ray workers, whose user attributes Optuna never saw, report the same.

    `duplicate_of` is the number of the first trial of the same architecture (empty for that first one): such a
    trial repeats its scores and is left out of the Pareto front (`pareto` False) and the choice (`ranked`).
    """
    rows = []
    first: dict[str, int] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        arch = arch_for(s, t.params, latency_ms)
        cost = ss.count(arch)
        acc, lat = trial_scores(s, t, arch, latency_ms)
        repeats = first.setdefault(arch.hash(), t.number)
        rows.append({
            "trial": t.number, "val_acc": acc, "latency_ms": lat, "macs": cost.macs, "params": cost.params,
            "peak_bytes": memory.peak_activation_bytes(arch), "weight_bytes": memory.weight_bytes(arch),
            "resolution": arch.resolution, "depth": len(arch.blocks()), "arch_hash": arch.hash(), "arch": str(arch),
            "seconds": t.user_attrs.get("seconds", (t.duration.total_seconds() if t.duration else float("nan"))),
            "duplicate_of": repeats if repeats != t.number else None,
        })
    df = pd.DataFrame(rows)
    if len(df):
        df["duplicate_of"] = df["duplicate_of"].astype("Int64")
        firsts = df["duplicate_of"].isna()
        df["pareto"] = False
        df.loc[firsts, "pareto"] = pareto_mask(df.loc[firsts, "val_acc"].tolist(),
                                               df.loc[firsts, "latency_ms"].tolist())
    return df


def ranked(df: pd.DataFrame, acc: str = "val_acc") -> pd.DataFrame:
    """`df` most accurate first by column `acc`; ties go to the lower predicted latency. Trials that repeat an
    earlier trial's architecture (`duplicate_of`) are left out: each architecture appears once."""
    if "duplicate_of" in df:
        df = df[df["duplicate_of"].isna()]
    if df.empty:
        raise ValueError("search: no completed trials to choose from")
    return df.sort_values([acc, "latency_ms"], ascending=[False, True])


def choose(df: pd.DataFrame) -> pd.Series:
    """The chosen network without verification: the most accurate trial; ties go to the faster one."""
    return ranked(df).iloc[0]


def baselines_frame(baselines: dict[str, ss.Arch], latency_ms: Callable[[ss.Arch], float],
                    measured_ms: Callable[[ss.Arch], float]) -> pd.DataFrame:
    """The hand-designed baselines (`search_spaces.presets.width_scaled_baselines`) with their cost and their
    predicted and measured latency (no accuracy: they are not sub-networks of the supernet, and training them is
    the search benchmark's job)."""
    rows = []
    for name, arch in baselines.items():
        cost = ss.count(arch)
        rows.append({"name": name, "macs": cost.macs, "params": cost.params,
                     "peak_bytes": memory.peak_activation_bytes(arch), "weight_bytes": memory.weight_bytes(arch),
                     "latency_ms": latency_ms(arch),
                     "measured_ms": measured_ms(arch), "arch": str(arch)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Front:
    """The report stage's result: the Pareto front (with measured latencies) and the hand-designed baselines."""

    front: pd.DataFrame  # rows of `trials_frame` on the front, fastest first, with `measured_ms`
    baselines: pd.DataFrame  # `baselines_frame` (empty without a MAC budget)


def write_report(trials: pd.DataFrame, baselines: dict[str, ss.Arch], latency_ms: Callable[[ss.Arch], float],
                 measure: Callable[[list[ss.Arch]], list[float]], run_dir: Path, title: str) -> Front:
    """Write trials.csv, pareto.csv, baselines.csv (when there are `baselines`) and pareto.png into `run_dir`.

    The front's networks and the baselines are measured together by one call of `measure`, round-robin, so a
    burst of load slows all alike."""
    write_atomic(run_dir / "trials.csv", lambda tmp: trials.to_csv(tmp, index=False))
    front = trials[trials["pareto"]].sort_values("latency_ms").copy()
    front_archs = [ss.decode(a) for a in front["arch"]]
    to_measure = front_archs + list(baselines.values())
    measured = dict(zip((a.hash() for a in to_measure), measure(to_measure), strict=True))
    front["measured_ms"] = [measured[a.hash()] for a in front_archs]
    write_atomic(run_dir / "pareto.csv", lambda tmp: front.to_csv(tmp, index=False))
    table = baselines_frame(baselines, latency_ms, lambda a: measured[a.hash()])
    if len(table):
        write_atomic(run_dir / "baselines.csv", lambda tmp: table.to_csv(tmp, index=False))
    plot_pareto(trials, run_dir / "pareto.png", title, baselines=table, measured=front)
    return Front(front, table)


def plot_pareto(df: pd.DataFrame, path: Path, title: str, baselines: pd.DataFrame | None = None,
                measured: pd.DataFrame | None = None) -> None:
    """Accuracy vs latency: every trial, the Pareto front, optional measured latencies and baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(df["latency_ms"], df["val_acc"] * 100, s=14, alpha=0.4, label="trials (predicted latency)")
    front = df[df["pareto"]].sort_values("latency_ms")
    ax.plot(front["latency_ms"], front["val_acc"] * 100, "o-", color="C1", label="Pareto front (predicted)")
    if measured is not None and len(measured):
        ax.scatter(measured["measured_ms"], measured["val_acc"] * 100, marker="x", color="C3",
                   label="Pareto front (measured on kernels)")
    if baselines is not None and len(baselines):
        for i, (_, row) in enumerate(baselines.iterrows()):
            lat = row.get("measured_ms", row["latency_ms"])
            if pd.notna(row.get("val_acc", float("nan"))):
                ax.scatter([lat], [row["val_acc"] * 100], marker="*", s=120, color=f"C{i + 4}")
                ax.annotate(row["name"], (lat, row["val_acc"] * 100), fontsize=8, xytext=(4, -10),
                            textcoords="offset points")
            else:  # latency only: a vertical line where the hand-designed network runs
                ax.axvline(lat, linestyle="--", linewidth=1, color=f"C{i + 4}",
                           label=f"{row['name']} (measured, {row['macs'] / 1e6:.0f}M MACs)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
