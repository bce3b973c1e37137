"""`Predictor`: an architecture's latency = sum of its ops from the table + a fitted per-network overhead.

Ops missing from the table (a pruned channel count, an unseen resolution) are interpolated: a per-op-type
non-negative least-squares model on MACs, bytes moved and channels (fitted for relative error), corrected by the
measured/model ratio of the nearest measured ops of the same family (op, kernel, stride, activation, residual).
The ops are the fused ops the kernel executor runs (activation in the conv, residual add in the project conv, SE
as one op), one per `search_spaces.Layer`. Block results are cached by (input width, input size, block), so a
search evaluating many architectures mostly does dict look-ups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_models.ops import OpKey, arch_ops, block_ops, head_ops, stem_op
from latency_models.table import LatencyTable
from search_spaces import Arch


def op_features(op: OpKey) -> list[float]:
    """Cost features of an op: [1, MACs, input elements, output elements, weight elements, channels]."""
    inp = op.in_hw * op.in_hw * op.in_channels
    out = op.out_hw * op.out_hw * op.out_channels
    if op.op == "dw":
        w = op.out_channels * op.kernel * op.kernel
    elif op.op == "se":
        w = 2 * op.in_channels * op.hidden
    elif op.op == "pool":
        w = 0
    else:
        w = op.in_channels * op.out_channels * op.kernel * op.kernel
    extra = out if op.residual else 0  # the residual read
    return [1.0, float(op.macs), float(inp + extra), float(out), float(w), float(op.out_channels)]


def _family(op: OpKey) -> tuple:
    """Ops that differ only in channel counts / sizes share a family (the anchor of interpolation)."""
    return (op.op, op.kernel, op.stride, op.act, op.residual)


@dataclass
class OpModel:
    """Per-op-type interpolation of latency from `op_features` (non-negative coefficients: monotone)."""

    coef: dict[str, np.ndarray]
    anchors: dict[tuple, tuple[np.ndarray, np.ndarray]]  # family -> (log2 positions, log measured/model)

    @classmethod
    def fit(cls, lookup: dict[OpKey, float]) -> OpModel:
        by_type: dict[str, list[tuple[OpKey, float]]] = {}
        for k, ms in lookup.items():
            by_type.setdefault(k.op, []).append((k, ms))
        coef = {}
        for t, rows in by_type.items():
            x = np.array([op_features(k) for k, _ in rows])
            y = np.array([ms for _, ms in rows])
            scale = np.maximum(x.max(axis=0), 1e-12)
            # minimise relative error: divide each row by its measured time
            c = _nonneg_lstsq((x / scale) / y[:, None], np.ones(len(y)))
            coef[t] = c / scale
        model = cls(coef, {})
        fams: dict[tuple, list[tuple[np.ndarray, float]]] = {}
        for k, ms in lookup.items():
            fams.setdefault(_family(k), []).append((_position(k), math.log(ms / model.model_ms(k))))
        model.anchors = {f: (np.array([p for p, _ in v]), np.array([r for _, r in v])) for f, v in fams.items()}
        return model

    def model_ms(self, op: OpKey) -> float:
        c = self.coef.get(op.op)
        if c is None:
            c = self.coef.get("pw" if op.op in ("conv", "linear") else "dw", next(iter(self.coef.values())))
        return max(float(np.dot(c, op_features(op))), 1e-6)

    def predict(self, op: OpKey, k: int = 6) -> float:
        """Model estimate times the measured/model ratio of the nearest measured ops of the same family
        (inverse-distance weighted in log size/channel space), so residual errors of the model are local."""
        est = self.model_ms(op)
        fam = self.anchors.get(_family(op))
        if fam is None:
            return est
        pos, ratios = fam
        d = np.sqrt(((pos - _position(op)) ** 2).sum(axis=1))
        idx = np.argsort(d)[:k]
        w = 1.0 / (d[idx] + 0.05) ** 2
        return est * math.exp(float(np.dot(w, ratios[idx]) / w.sum()))


def _nonneg_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with coefficients >= 0: refit without the negative ones until none is left."""
    active = np.ones(a.shape[1], dtype=bool)
    c = np.zeros(a.shape[1])
    while active.any():
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sol >= 0).all():
            c[active] = sol
            break
        idx = np.flatnonzero(active)
        active[idx[np.argmin(sol)]] = False
    return c


def _position(op: OpKey) -> np.ndarray:
    return np.log2([op.in_hw, op.out_hw, op.in_channels, op.out_channels, max(op.hidden, 1)])


@dataclass
class Overhead:
    """Per-network correction of the summed op times (ms):

    measured = scale * sum(ops) + per_op * n_ops + per_input * input elements + const

    `per_op` is the executor's dispatch cost per op call, `per_input` its float-to-int8 input conversion,
    `const` the fixed cost of a call; `scale` absorbs cache effects of running ops back to back.
    """

    scale: float = 1.0
    per_op: float = 0.0
    per_input: float = 0.0
    const: float = 0.0
    fitted_on: int = 0  # number of architectures the fit used

    def apply(self, ops_ms: float, n_ops: int, input_elems: int) -> float:
        linear = self.scale * ops_ms + self.per_op * n_ops + self.per_input * input_elems + self.const
        # A fit on few, noisy networks can extrapolate below zero for networks smaller than any it saw; a
        # network never runs faster than half the sum of its separately timed ops.
        return max(linear, 0.5 * ops_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "per_op": self.per_op, "per_input": self.per_input, "const": self.const,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Overhead:
        if not d:
            return cls()
        return cls(float(d["scale"]), float(d["per_op"]), float(d.get("per_input", 0.0)), float(d["const"]),
                   int(d.get("fitted_on", 0)))

    @classmethod
    def fit(cls, sums_ms: list[float], n_ops: list[int], input_elems: list[int], measured_ms: list[float]
            ) -> Overhead:
        """Least squares for relative error on (table sum, op count, input size) -> measured time."""
        y = np.asarray(measured_ms, dtype=float)
        x = np.column_stack([sums_ms, n_ops, input_elems, np.ones(len(y))]).astype(float)
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        a = (x / scale) / y[:, None]
        if np.ptp(input_elems) == 0:  # one input size: its cost is part of the constant
            a[:, 2] = 0.0
        c, *_ = np.linalg.lstsq(a, np.ones(len(y)), rcond=None)
        c = c / scale
        return cls(float(c[0]), float(c[1]), float(c[2]), float(c[3]), len(y))


# Summed statistic. On a host shared with other jobs the median of a run-time sample moves with their load (the
# 2-vCPU test machine showed medians of one network spread over 0.72-0.86 ms while its 10th percentile stayed at
# 0.65-0.68 ms); the 10th percentile of op and network times is the stable "machine left alone" speed.
DEFAULT_STAT = "p10_ms"


class Predictor:
    """Predicted end-to-end latency (ms) of architectures from a `LatencyTable`."""

    def __init__(self, table: LatencyTable, overhead: Overhead | None = None, stat: str | None = None):
        """`stat`: the table column summed (default: the one the table's overhead was fitted with, else
        `DEFAULT_STAT`); end-to-end times are measured with the same statistic."""
        self.table = table
        self.overhead = overhead if overhead is not None else Overhead.from_dict(table.overhead)
        self.stat = stat or (table.overhead or {}).get("stat") or DEFAULT_STAT
        self._ms: dict[OpKey, float] = table.lookup(self.stat)
        self._measured = frozenset(self._ms)
        self._model = OpModel.fit(self._ms) if self._ms else None
        self._blocks: dict[tuple, tuple[float, int, int]] = {}
        self._ends: dict[tuple, tuple[float, int]] = {}

    def op_ms(self, op: OpKey) -> float:
        """Latency of one op: the table's median, or the interpolation model's estimate (cached)."""
        ms = self._ms.get(op)
        if ms is None:
            if self._model is None:
                raise ValueError(f"latency table {self.table.path} is empty; profile it first")
            ms = self._ms[op] = self._model.predict(op)
        return ms

    def in_table(self, op: OpKey) -> bool:
        return op in self._measured

    def ops_ms(self, arch: Arch) -> tuple[float, int]:
        """Sum of op latencies (no overhead) and the number of ops."""
        se = arch.se_base
        c, hw = arch.stem_channels, (arch.resolution - 1) // arch.stem_stride + 1
        key = (arch.resolution, arch.in_channels, c, arch.stem_stride, arch.stem_act)
        total, n = self._end(key, lambda: [stem_op(arch, arch.resolution)])
        blocks = self._blocks
        for b in arch.blocks():
            k = (se, c, hw, b)
            hit = blocks.get(k)
            if hit is None:
                ops = block_ops(arch, c, hw, b)
                hit = blocks[k] = (sum(self.op_ms(o) for o in ops), len(ops), (hw - 1) // b.stride + 1)
            total += hit[0]
            n += hit[1]
            c, hw = b.out_channels, hit[2]
        key = (c, hw, arch.head_channels, arch.head_act, arch.head_hidden, arch.num_classes)
        t, m = self._end(key, lambda: head_ops(arch, c, hw))
        return total + t, n + m

    def _end(self, key: tuple, ops: Any) -> tuple[float, int]:
        hit = self._ends.get(key)
        if hit is None:
            o = ops()
            hit = self._ends[key] = (sum(self.op_ms(x) for x in o), len(o))
        return hit

    def predict_ms(self, arch: Arch) -> float:
        """Predicted end-to-end latency of `arch` in milliseconds."""
        ms, n = self.ops_ms(arch)
        return self.overhead.apply(ms, n, arch.resolution * arch.resolution * arch.in_channels)

    __call__ = predict_ms

    def breakdown(self, arch: Arch) -> list[tuple[OpKey, float, bool]]:
        """(op, ms, measured?) for every op of `arch`, in execution order."""
        return [(o, self.op_ms(o), o in self._measured) for o in arch_ops(arch)]
