"""`Predictor`: an architecture's latency = sum of its ops from the table + a fitted per-network overhead.

Ops missing from the table (a pruned channel count, an unseen resolution) are interpolated: a per-op-type
non-negative least-squares model on MACs, bytes moved and channels (fitted for relative error), corrected by the
measured/model ratio of the nearest measured ops of the same family (op, kernel, stride, activation, residual).
The ops are the fused ops the kernel executor runs (activation in the conv, residual add in the project conv, SE
as one op), one per `search_spaces.Layer`. Block results are cached by (input width, input size, block), so a
search evaluating many architectures mostly does dict look-ups.

Fused blocks (issue #33): a table with fused-block rows (`mbconv` / `mbconv1`, see `latency_models.ops`; only
`kernels` tables profiled with them have any) prices each block its executor fuses at the table's thread count
(`latency_models.ops.fuses`, the executor's own rule) as that ONE op: its row, or the `OpModel` of its op type where
the exact key is missing (the sum of its layers' times where the table has no row of that type at all), counted
as one op with the block's weights and output in `OpSums`. Every other block, and every block of a table without
fused rows (tables profiled before, ONNX Runtime and PyTorch tables), is the sum of its layers as before. The stem
fused into the first block has no rows: it is priced as the steps it replaces (see `latency_models.ops`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from latency_models.ops import FUSED_OPS, OpKey, arch_ops, executor_block_ops, fused_layers, head_ops, stem_op
from latency_models.table import LatencyTable
from search_spaces import Arch


def op_features(op: OpKey) -> list[float]:
    """Cost features of an op: [1, MACs, input elements, output elements, weight elements, channels]. A fused block
    counts its own input and output (its expanded and depthwise tensors never exist) and its layers' weights."""
    inp = op.in_hw * op.in_hw * op.in_channels
    out = op.out_hw * op.out_hw * op.out_channels
    if op.op in FUSED_OPS:
        w = (op.in_channels * op.hidden if op.op == "mbconv" else 0) + op.hidden * (op.kernel ** 2 + op.out_channels)
    elif op.op == "dw":
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


class OpSums(NamedTuple):
    """What a network's ops add up to, the inputs of `Overhead`: the table's time (ms), the number of ops, the
    weight and output elements over all ops (int8 or fp32 alike: each device's fit prices its own bytes), and
    the ops' 1-thread times (ms; equal to `ms` for a 1-thread table)."""

    ms: float
    ops: int
    weights: float
    outputs: float
    serial: float


def op_sums(ops: list[OpKey], ms: list[float], serial: list[float] | None = None) -> OpSums:
    """`OpSums` of `ops` whose table times are `ms` and 1-thread times `serial` (default: `ms`)."""
    feats = [op_features(o) for o in ops]
    return OpSums(sum(ms), len(ops), sum(f[4] for f in feats), sum(f[3] for f in feats),
                  sum(ms if serial is None else serial))


@dataclass
class Overhead:
    """Per-network correction of the summed op times (ms):

    measured = scale * sum(ops) + per_op * n_ops + per_input * input elements + per_weight * weight elements
               + per_output * output elements + per_serial * sum(ops on 1 thread) + const

    `per_op` is the executor's dispatch cost per op call, `per_input` its float-to-int8 input conversion,
    `const` the fixed cost of a call; `scale` absorbs cache effects of running ops back to back. `per_weight`:
    an op timed alone, over and over, finds its weights in cache; in a network each layer's weights come from
    memory or the last-level cache once per run. `per_output`: likewise for activations, which one op writes and
    the next reads (warm in a network, where a lone op's repeated runs keep rewriting the same buffer). Both were
    the largest error left on every device (e.g. ONNX Runtime fp32 on `small32`: 55% -> 80% of networks within
    +-5%, torch-fp32 63% -> 98%; benchmarks/RESULTS_latency.md).
    `per_serial` (tables of N > 1 threads only): an op timed alone on N threads, over and over, keeps its
    worker threads spinning and its data where they last left it; in a network part of each op's split across
    threads is not recovered, and how much follows what the op gains from threads (its 1-thread time against
    its N-thread one), not its size.
    """

    scale: float = 1.0
    per_op: float = 0.0
    per_input: float = 0.0
    const: float = 0.0
    fitted_on: int = 0  # number of architectures the fit used
    per_weight: float = 0.0
    per_output: float = 0.0
    per_serial: float = 0.0

    def apply(self, sums: OpSums, input_elems: int) -> float:
        linear = (self.scale * sums.ms + self.per_op * sums.ops + self.per_input * input_elems
                  + self.per_weight * sums.weights + self.per_output * sums.outputs + self.per_serial * sums.serial
                  + self.const)
        # A fit on few, noisy networks can extrapolate below zero for networks smaller than any it saw; a
        # network never runs faster than half the sum of its separately timed ops.
        return max(linear, 0.5 * sums.ms)

    def describe(self) -> str:
        """The fitted formula in words (ms terms shown in us and ns)."""
        return (f"{self.scale:.4f} x sum(ops) + {self.per_op * 1e3:.2f} us/op + {self.per_input * 1e6:.3f} ns/input "
                f"element + {self.per_weight * 1e6:.3f} ns/weight + {self.per_output * 1e6:.3f} ns/output element "
                + (f"+ {self.per_serial:.4f} x sum(ops on 1 thread) " if self.per_serial else "")
                + f"+ {self.const * 1e3:.1f} us")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "per_op": self.per_op, "per_input": self.per_input,
                "per_weight": self.per_weight, "per_output": self.per_output, "per_serial": self.per_serial,
                "const": self.const, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Overhead:
        """An overhead stored by `to_dict` (terms fitted before they existed: zero)."""
        if not d:
            return cls()
        return cls(float(d["scale"]), float(d["per_op"]), float(d.get("per_input", 0.0)), float(d["const"]),
                   int(d.get("fitted_on", 0)), float(d.get("per_weight", 0.0)), float(d.get("per_output", 0.0)),
                   float(d.get("per_serial", 0.0)))

    @classmethod
    def fit(cls, sums: list[OpSums], input_elems: list[int], measured_ms: list[float]) -> Overhead:
        """Least squares for relative error on (table sum, op count, input size, weights, outputs) -> measured
        time. A feature that does not vary over the networks (one input size) is left out (its cost is part of
        the constant), and so are the 1-thread sums of a 1-thread table (the same numbers as the sums)."""
        y = np.asarray(measured_ms, dtype=float)
        s = np.asarray(sums, dtype=float).reshape(len(y), 5)
        x = np.column_stack([s[:, 0], s[:, 1], input_elems, s[:, 2], s[:, 3], s[:, 4], np.ones(len(y))]
                            ).astype(float)
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        a = (x / scale) / y[:, None]
        varies = np.array([True, *(np.ptp(x[:, j]) > 0 for j in range(1, 5)),
                           not np.allclose(s[:, 4], s[:, 0], rtol=1e-9, atol=0), True])
        c = np.zeros(x.shape[1])
        c[varies], *_ = np.linalg.lstsq(a[:, varies], np.ones(len(y)), rcond=None)
        c = c / scale
        return cls(float(c[0]), float(c[1]), float(c[2]), float(c[6]), len(y), float(c[3]), float(c[4]),
                   float(c[5]))


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
        # 1-thread times, for a table of N > 1 threads that has them for every op it measured; else None (the
        # sums then use the table's own times). An op outside the table gets its estimate times the table's
        # median 1-thread / N-thread ratio.
        serial = table.serial() if int(table.fingerprint.get("threads", 1)) > 1 else {}
        self._serial: dict[OpKey, float] | None = None
        if serial and len(serial) == len(self._ms):
            self._serial = serial
            self._serial_ratio = float(np.median([serial[o] / self._ms[o] for o in serial]))
        # the thread count whose fusing decisions the table's fused rows price; None: no fused rows, every block
        # is the sum of its layers (as for every table profiled before fused rows existed)
        self.fused_threads: int | None = (int(table.fingerprint.get("threads", 1))
                                          if any(k.op in FUSED_OPS for k in self._ms) else None)
        self._blocks: dict[tuple, tuple[float, int, float, float, float, int]] = {}  # OpSums + output size
        self._ends: dict[tuple, OpSums] = {}

    def op_ms(self, op: OpKey) -> float:
        """Latency of one op: the table's median, or the interpolation model's estimate (cached). A fused block
        whose op type has no row in the table at all is estimated as the sum of its layers."""
        ms = self._ms.get(op)
        if ms is None:
            if self._model is None:
                raise ValueError(f"latency table {self.table.path} is empty; profile it first")
            if op.op in FUSED_OPS and op.op not in self._model.coef:
                ms = sum(self.op_ms(x) for x in fused_layers(op))
            else:
                ms = self._model.predict(op)
            self._ms[op] = ms
        return ms

    def serial_ms(self, op: OpKey) -> float:
        """The op's 1-thread time (the table's own time when the table has none)."""
        if self._serial is None:
            return self.op_ms(op)
        ms = self._serial.get(op)
        if ms is None:
            ms = self._serial[op] = self.op_ms(op) * self._serial_ratio
        return ms

    def _sums(self, ops: list[OpKey]) -> OpSums:
        return op_sums(ops, [self.op_ms(x) for x in ops],
                       None if self._serial is None else [self.serial_ms(x) for x in ops])

    def in_table(self, op: OpKey) -> bool:
        return op in self._measured

    def ops_ms(self, arch: Arch) -> OpSums:
        """The table times of `arch`'s ops summed (no overhead), with its op count, weights and outputs."""
        se = arch.se_base
        c, hw = arch.stem_channels, (arch.resolution - 1) // arch.stem_stride + 1
        key = (arch.resolution, arch.in_channels, c, arch.stem_stride, arch.stem_act)
        ms, n, w, o, t1 = self._end(key, lambda: [stem_op(arch, arch.resolution)])
        blocks = self._blocks
        for b in arch.blocks():  # plain float sums: this loop is most of a search's prediction time
            k = (se, c, hw, b)
            hit = blocks.get(k)
            if hit is None:  # the executor's ops for this block: its fused op or its layers
                ops = executor_block_ops(arch, c, hw, b, self.fused_threads)
                hit = blocks[k] = (*self._sums(ops), (hw - 1) // b.stride + 1)
            ms += hit[0]
            n += hit[1]
            w += hit[2]
            o += hit[3]
            t1 += hit[4]
            c, hw = b.out_channels, hit[5]
        key = (c, hw, arch.head_channels, arch.head_act, arch.head_hidden, arch.num_classes)
        end = self._end(key, lambda: head_ops(arch, c, hw))
        return OpSums(ms + end[0], n + end[1], w + end[2], o + end[3], t1 + end[4])

    def _end(self, key: tuple, ops: Any) -> OpSums:
        hit = self._ends.get(key)
        if hit is None:
            x = ops()
            hit = self._ends[key] = self._sums(x)
        return hit

    def predict_ms(self, arch: Arch) -> float:
        """Predicted end-to-end latency of `arch` in milliseconds."""
        return self.overhead.apply(self.ops_ms(arch), arch.resolution * arch.resolution * arch.in_channels)

    __call__ = predict_ms

    def breakdown(self, arch: Arch) -> list[tuple[OpKey, float, bool]]:
        """(op, ms, measured?) for every op the executor runs for `arch`, in execution order: with fused rows in
        the table, each block it fuses is one fused op."""
        return [(o, self.op_ms(o), o in self._measured) for o in arch_ops(arch, self.fused_threads)]
