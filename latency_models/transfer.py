"""A new device's latency table from a measured sample of its ops plus a full table of another device.

`choose_sample` picks the ops to measure: every op type, spread over its sizes (strata of the source device's
times, the smallest and largest op of each type included, the rest one seeded random op per stratum).
`transfer_table` fits, for each summable statistic, log(target / source) as a linear function of
log(source ms), log MACs and log bytes moved: one coefficient vector per op type, shrunk towards one shared by
all types (a type with few sampled ops leans on the rest). Ops outside their type's sample (a size beyond
its range, or an activation/kernel/stride it lacks) are extrapolated by that model and counted in the table's
fingerprint and the command's output. The result is a
normal `LatencyTable` of the target device: sampled ops keep their measured rows (`source` = measured), the
others get predicted ones (`source` = transferred, `passes` 0).

Fused blocks (`mbconv` / `mbconv1` rows of a `kernels` target, see `latency_models.ops`): a source table that has
the block's fused row lends it as for any op. A source without it (every ONNX Runtime or PyTorch table, a `kernels`
table profiled before fused rows, or one of another thread count that does not fuse that block) lends the sum of
the block's layer rows instead: what the source device spends on the block layer by layer. Such blocks form their
own group (`<op>~layers`) in the sample and in the ratio model, so the target's sampled fused blocks are measured
and the rest of them are predicted from the source's layer sums; nothing is refused for lacking fused rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latency_models.ops import FUSED_OPS, KEY_COLUMNS, OpKey, fused_layers
from latency_models.predictor import op_features
from latency_models.table import ACTS, COLUMNS, OP_TYPES, STATS, LatencyTable

MIN_PER_TYPE = 2  # the fastest and the slowest op of each type (on the source): its size range is sampled
MAX_MISSING = 0.05  # share of the ops a source table may lack (those ops are measured instead)
_SHARED_RIDGE = 1.0  # penalty on the shared slopes (features are standardised): tames correlated features
_TYPE_RIDGE = 4.0  # pull of each op type's coefficients towards the shared ones, worth about that many ops


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"sample: expected a fraction in (0, 1], got {fraction!r}")
    return float(fraction)


def source_times(source: LatencyTable, ops: Sequence[OpKey]) -> tuple[dict[str, dict[OpKey, float]], set[OpKey]]:
    """Per statistic (`STATS`, `mad_ms`, `max_ms`) the source table's time of each op it has, plus, for each fused
    block of `ops` it lacks but whose layers it has, the sum of its layers' times (the second value: those blocks)."""
    f = source.frame
    keys = [OpKey(*k) for k in zip(*[f[c].tolist() for c in KEY_COLUMNS], strict=True)]
    times = {s: dict(zip(keys, f[s].tolist(), strict=True)) for s in (*STATS, "mad_ms", "max_ms")}
    have = times["median_ms"]
    derived = set()
    for o in ops:
        if o.op in FUSED_OPS and o not in have:
            parts = fused_layers(o)
            if all(p in have for p in parts):
                derived.add(o)
                for t in times.values():
                    t[o] = sum(t[p] for p in parts)
    return times, derived


def _group(op: OpKey, derived: set[OpKey]) -> str:
    """The op's group in the sample and the ratio model: its type, apart for fused blocks timed from layers."""
    return op.op + "~layers" if op in derived else op.op


def missing_ops(source: LatencyTable, ops: Sequence[OpKey]) -> list[OpKey]:
    """The ops a transfer source lacks (a fused block whose layers it has is not lacking: `source_times`); refuses
    a source lacking more than `MAX_MISSING` of them."""
    have = source_times(source, ops)[0]["median_ms"]
    missing = [o for o in ops if o not in have]
    if len(missing) > MAX_MISSING * len(ops):
        raise ValueError(f"from: {source.path} lacks {len(missing)} of the {len(ops)} ops to profile (e.g. "
                         f"{missing[0].describe()}); it must be a table of the same --space/--resolution (or more)")
    if (source.frame["source"] == "transferred").any():
        raise ValueError(f"from: {source.path} has transferred rows; transfer from a fully measured table")
    return missing


def choose_sample(source: LatencyTable, ops: Sequence[OpKey], fraction: float, seed: int = 0) -> list[OpKey]:
    """About `fraction` of `ops` to measure, spread over op types and sizes (seeded), plus any op the source
    table lacks. Raises if the fraction leaves fewer ops than the fit needs."""
    fraction = check_fraction(fraction)
    lacking = missing_ops(source, ops)
    times, derived = source_times(source, ops)
    src = times["median_ms"]
    by_type: dict[str, list[OpKey]] = {}
    for o in sorted(set(ops) - set(lacking)):
        by_type.setdefault(_group(o, derived), []).append(o)
    base = {t: min(len(v), MIN_PER_TYPE) for t, v in by_type.items()}
    total, need = sum(len(v) for v in by_type.values()), sum(base.values())
    budget = math.ceil(fraction * total)
    if budget < need:
        raise ValueError(f"sample: {fraction:g} of {total} ops is {budget} ops; the transfer fit needs at least "
                         f"{need} ({MIN_PER_TYPE} per op type): use a fraction of at least {need / total:.3f}")
    counts = _allocate(budget, {t: len(v) for t, v in by_type.items()}, base)
    rng = np.random.default_rng(seed)
    chosen = list(lacking)
    for t, type_ops in by_type.items():
        ranked = sorted(type_ops, key=lambda o: src[o])
        chosen += [ranked[i] for i in _spread(len(ranked), counts[t], rng)]
    return sorted(chosen, key=lambda k: (k.op, k.macs, k))


def _allocate(budget: int, sizes: dict[str, int], base: dict[str, int]) -> dict[str, int]:
    """`budget` ops over the types: `base` each, the rest in proportion to what is left of each type (largest
    remainders round up)."""
    spare = {t: sizes[t] - base[t] for t in sizes}
    left, pool = budget - sum(base.values()), sum(spare.values())
    share = {t: left * spare[t] / pool if pool else 0.0 for t in sizes}
    counts = {t: base[t] + int(share[t]) for t in sizes}
    for t in sorted(sizes, key=lambda t: int(share[t]) - share[t])[:budget - sum(counts.values())]:
        counts[t] += 1
    return counts


def _spread(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """`k` of the indices 0..n-1: the two ends, and one random index from each of k-2 equal strata between."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [int(rng.integers(n))]
    edges = np.linspace(1, n - 1, k - 1).astype(int)
    inner = [int(rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [0, *inner, n - 1]


def _features(op: OpKey, source_ms: float, from_layers: bool = False) -> np.ndarray:
    """Log sizes (the ratio of two devices' times moves smoothly with them) and indicators of the op type, fused
    activation, kernel, stride and residual add (a kernel's vector code path differs by them), and whether the
    source time is a fused block's layers summed (`source_times`)."""
    _, macs, inp, out, weights, _ = op_features(op)
    logs = np.log([source_ms, macs + 1, inp + out + 1, weights + 1, op.in_hw, op.out_hw, op.in_channels,
                   op.out_channels, op.hidden + 1])
    cats = ([op.op == t for t in OP_TYPES] + [op.act == a for a in ACTS] + [op.kernel == k for k in (1, 3, 5, 7)]
            + [op.stride == 2, op.residual, from_layers])
    return np.concatenate([logs, np.array(cats, dtype=float)])


@dataclass(frozen=True)
class RatioModel:
    """log(target ms / source ms) of one statistic: per op type, linear in standardised `_features`."""

    mean: np.ndarray
    std: np.ndarray
    shared: np.ndarray  # intercept first
    by_type: dict[str, np.ndarray]
    low: dict[str, np.ndarray]  # per type: the feature range of the ops fitted on
    high: dict[str, np.ndarray]

    @classmethod
    def fit(cls, pairs: Sequence[tuple[OpKey, float, float]], derived: set[OpKey] = frozenset()) -> RatioModel:
        """Fit on (op, source ms, target ms) of the measured ops; `derived`: the fused blocks whose source ms is
        their layers' sum (a group of their own)."""
        raw = np.array([_features(o, s, o in derived) for o, s, _ in pairs])
        y = np.log([t / s for _, s, t in pairs])
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std < 1e-9] = 1.0  # a feature constant over the sample
        x = _design((raw - mean) / std)
        prior = np.zeros(x.shape[1])
        shared = _ridge(x, y, prior, _SHARED_RIDGE, free_intercept=True)
        types = np.array([_group(o, derived) for o, _, _ in pairs])
        by_type, low, high = {}, {}, {}
        for t in sorted(set(types)):
            m = types == t
            by_type[t] = _ridge(x[m], y[m], shared, _TYPE_RIDGE, free_intercept=False)
            low[t], high[t] = raw[m].min(axis=0), raw[m].max(axis=0)
        return cls(mean, std, shared, by_type, low, high)

    def predict(self, op: OpKey, source_ms: float, from_layers: bool = False) -> tuple[float, bool]:
        """(predicted target ms, whether the op lies outside the sample of its type: extrapolated);
        `from_layers`: `source_ms` is a fused block's layers summed."""
        raw = _features(op, source_ms, from_layers)
        x = _design((raw[None, :] - self.mean) / self.std)[0]
        group = _group(op, {op} if from_layers else set())
        if group not in self.by_type:
            return source_ms * math.exp(float(x @ self.shared)), True
        outside = bool(((raw < self.low[group]) | (raw > self.high[group])).any())
        return source_ms * math.exp(float(x @ self.by_type[group])), outside


def _design(z: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(z)), z])


def _ridge(x: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float, free_intercept: bool) -> np.ndarray:
    """argmin |x b - y|^2 + lam |b - prior|^2 (the intercept unpenalised when `free_intercept`)."""
    pen = np.full(x.shape[1], lam)
    if free_intercept:
        pen[0] = 0.0
    a = x.T @ x + np.diag(pen)
    return np.linalg.solve(a, x.T @ y + pen * prior)


@dataclass(frozen=True)
class TransferReport:
    """What `transfer_table` did: counts of measured, transferred and out-of-sample ops."""

    measured: int
    transferred: int
    outside: int  # transferred ops outside their type's sample (see `RatioModel.predict`)

    @property
    def fraction(self) -> float:
        return self.measured / max(self.measured + self.transferred, 1)


def transfer_table(source: LatencyTable, target: LatencyTable, ops: Sequence[OpKey]
                   ) -> tuple[LatencyTable, TransferReport]:
    """The target device's table for `ops`: its measured rows, and for the rest of `ops` rows predicted from the
    source table by `RatioModel`s fitted on the ops both tables measured. The fingerprint is the target's, with
    a `transfer` entry (source path and fingerprint, measured fraction, counts)."""
    measured = LatencyTable(target.frame[target.frame["source"] == "measured"])
    have = measured.keys()
    todo = [o for o in ops if o not in have]
    times, derived = source_times(source, ops)
    src = {s: times[s] for s in STATS}
    lacking = [o for o in todo if o not in src["median_ms"]]
    if lacking:
        raise ValueError(f"from: {source.path} lacks {len(lacking)} ops that are not measured either (e.g. "
                         f"{lacking[0].describe()}); measure them first")
    common = sorted(have & set(src["median_ms"]))
    if len(common) < 2 * MIN_PER_TYPE:
        raise ValueError(f"sample: only {len(common)} ops are measured on both devices; the transfer fit needs "
                         f"at least {2 * MIN_PER_TYPE}")
    tgt = {s: measured.lookup(s) for s in STATS}
    models = {s: RatioModel.fit([(o, src[s][o], tgt[s][o]) for o in common], derived) for s in STATS}
    # the 1-thread times of a multi-thread target (`serial_ms`) get their own model from the source's p10 (a
    # 1-thread target's are its p10; a target sampled without them has none)
    threads = int(target.fingerprint.get("threads", 1))
    tgt_serial = measured.serial()
    serial_model = (RatioModel.fit([(o, src["p10_ms"][o], tgt_serial[o]) for o in common], derived)
                    if threads > 1 and all(o in tgt_serial for o in common) else None)
    bits = int(target.fingerprint.get("bits", 8))
    rows, outside = [], 0
    for o in todo:
        lay = o in derived
        median, beyond = models["median_ms"].predict(o, src["median_ms"][o], lay)
        # each statistic has its own model; keep the order min <= p10 <= median <= max of a measured row
        p10 = min(models["p10_ms"].predict(o, src["p10_ms"][o], lay)[0], median)
        low = min(models["min_ms"].predict(o, src["min_ms"][o], lay)[0], p10)
        scale = median / src["median_ms"][o]
        mad, mx = times["mad_ms"][o], times["max_ms"][o]
        serial = (p10 if threads == 1 else serial_model.predict(o, src["p10_ms"][o], lay)[0] if serial_model
                  else 0.0)
        rows.append({**o._asdict(), "bits": bits, "macs": o.macs, "median_ms": median, "p10_ms": p10,
                     "mad_ms": mad * scale, "min_ms": low, "max_ms": max(mx * scale, median), "n": 0,
                     "rejected": 0, "passes": 0, "serial_ms": serial, "source": "transferred"})
        outside += beyond
    frame = measured.frame
    if rows:
        new = pd.DataFrame(rows, columns=list(COLUMNS)).astype(frame.dtypes.to_dict())
        frame = pd.concat([frame, new], ignore_index=True)
    report = TransferReport(len(set(ops) & have), len(todo), outside)
    info = {"from": str(source.path) if source.path else None, "from_fingerprint": source.fingerprint,
            "fraction": round(report.fraction, 6), "measured": report.measured,
            "transferred": report.transferred, "outside_sample": report.outside,
            "fused_from_layers": len(derived)}
    return LatencyTable(frame, {**target.fingerprint, "transfer": info}, target.overhead, target.path), report
