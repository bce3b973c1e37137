"""`LatencyTable`: measured per-op latencies of one device, a CSV/Parquet file plus a JSON fingerprint sidecar.

Files: `<stem>.csv` (or `.parquet`) with one row per `OpKey` and its timing summary, and `<stem>.json` with the
device fingerprint (CPU, ISA, threads, bits, library version, kernel build hash) and, once fitted, the
per-network overhead model. Column `source` says whether a row was `measured` or `transferred` (predicted from
another device's table by `latency_models.transfer`; such rows have `passes` 0, so profiling measures them).
Rows of op `mbconv` / `mbconv1` (kernels tables profiled with `enumerate_ops(..., device=spec)`) are fused
inverted-residual blocks, timed as the one op the executor runs (`latency_models.ops`); `hidden` is their
expanded width.
Writes are atomic (temporary file + rename), so a crash never leaves half a table.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from latency_models.devices import MATCH_FIELDS, DeviceSpec
from latency_models.ops import FUSED_OPS, KEY_COLUMNS, OpKey
from nas.io import results_dir, write_atomic

FORMAT = "nas-latency-table/1"
STAT_COLUMNS = ("median_ms", "p10_ms", "mad_ms", "min_ms", "max_ms", "n", "rejected", "passes", "serial_ms")
STATS = ("median_ms", "p10_ms", "min_ms")  # what a predictor may sum
SOURCES = ("measured", "transferred")  # values of the `source` column
# `serial_ms`: the op's 10th-percentile time on one thread of the same device (equal to `p10_ms` in a 1-thread
# table; 0 where it was not measured, in tables written before the column existed). A network on N threads
# keeps part of each op's hand-off cost that the op timed alone hides; the overhead fit prices it from this.
COLUMNS = KEY_COLUMNS + ("bits", "macs") + STAT_COLUMNS + ("source",)
OP_TYPES = ("conv", "pw", "dw", "se", "pool", "linear", *FUSED_OPS)  # fused blocks: kernels tables only
ACTS = ("none", "relu", "relu6", "hswish", "swish")


class LatencyTableError(ValueError):
    """A latency table is missing, unreadable or corrupt; the message names the file (and row)."""


class FingerprintMismatch(UserWarning):
    """A table was measured on another machine, ISA, thread count or library build than the current one."""


def default_table_path(device: str = "kernels", root: str | os.PathLike | None = None) -> Path:
    """Where `nas profile --device <device>` writes its table: `<results>/latency/<table id>.csv`.

    `device` is a device name or table id (`kernels`, `kernels-int4`, `torch-int8-t2`); `root` is the results
    folder, resolved by `nas.io.results_dir` (`root`, else $NAS_RESULTS, else `results/`).
    """
    table_id = DeviceSpec.make(device).table_id
    return results_dir(root) / "latency" / f"{table_id}.csv"


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def profile_command(device: str) -> str:
    spec = DeviceSpec.make(device)
    cmd = f"nas profile --device {spec.name}"
    natural = 32 if spec.name == "torch-fp32" else 8
    if spec.bits != natural:
        cmd += f" --bits {spec.bits}"
    if spec.threads != 1:
        cmd += f" --threads {spec.threads}"
    if spec.isa:
        cmd += f" --isa {spec.isa}"
    return cmd


@dataclass
class LatencyTable:
    """Per-op median latencies (ms) of one device spec, with the fingerprint of where they were measured."""

    frame: pd.DataFrame
    fingerprint: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, Any] | None = None  # fitted per-network overhead model (see `predictor.Overhead`)
    path: Path | None = None

    @classmethod
    def empty(cls, fingerprint: dict[str, Any]) -> LatencyTable:
        return cls(pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS}), dict(fingerprint))

    def __len__(self) -> int:
        return len(self.frame)

    def keys(self) -> set[OpKey]:
        return set(self.lookup())

    def lookup(self, stat: str = "median_ms") -> dict[OpKey, float]:
        """OpKey -> latency in ms (`stat`: median_ms, p10_ms or min_ms)."""
        if stat not in STATS:
            raise ValueError(f"stat: expected one of {STATS}, got {stat!r}")
        f = self.frame
        cols = [f[c].tolist() for c in KEY_COLUMNS]
        return {OpKey(*row): ms for *row, ms in zip(*cols, f[stat].tolist(), strict=True)}

    def serial(self) -> dict[OpKey, float]:
        """OpKey -> the op's 1-thread time (ms), for the rows where it was measured (`serial_ms` > 0)."""
        f = self.frame[self.frame["serial_ms"] > 0]
        cols = [f[c].tolist() for c in KEY_COLUMNS]
        return {OpKey(*row): ms for *row, ms in zip(*cols, f["serial_ms"].tolist(), strict=True)}

    def passes(self) -> dict[OpKey, int]:
        """OpKey -> number of measurement passes merged into its row."""
        f = self.frame
        cols = [f[c].tolist() for c in KEY_COLUMNS]
        return {OpKey(*row): p for *row, p in zip(*cols, f["passes"].tolist(), strict=True)}

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Merge measured rows (dicts with every column) into the table.

        A key measured again keeps, per statistic, the lowest value over its passes (a later, quieter pass
        replaces one slowed by other processes on the machine); `passes` counts the passes, `n` the samples.
        A measurement replaces a transferred row of the same key.
        """
        if not rows:
            return
        new = pd.DataFrame([{"source": "measured", "serial_ms": 0.0, **r} for r in rows], columns=list(COLUMNS))
        new = new.astype({c: _dtype(c) for c in COLUMNS})
        old = self.frame
        if len(old):
            remeasured = old.set_index(list(KEY_COLUMNS)).index.isin(new.set_index(list(KEY_COLUMNS)).index)
            old = old[~(remeasured & (old["source"] == "transferred").to_numpy())]
        both = pd.concat([old, new], ignore_index=True) if len(old) else new
        how = {c: "min" for c in ("bits", "macs", "median_ms", "p10_ms", "mad_ms", "min_ms", "serial_ms")}
        how.update(max_ms="max", n="sum", rejected="sum", passes="sum", source="first")
        both["serial_ms"] = both["serial_ms"].replace(0.0, float("nan"))  # 0 = not measured: the min skips it
        merged = both.groupby(list(KEY_COLUMNS), sort=False, dropna=False).agg(how).reset_index()
        merged["serial_ms"] = merged["serial_ms"].fillna(0.0)
        self.frame = merged[list(COLUMNS)].astype({c: _dtype(c) for c in COLUMNS})

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the table and its sidecar atomically (CSV, or Parquet for a `.parquet` path)."""
        path = Path(path or self.path or "")
        if not path.name:
            raise ValueError("save: no path given")
        frame = self.frame[list(COLUMNS)]
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            def write(tmp: str) -> None:
                t = pa.Table.from_pandas(frame, preserve_index=False)
                meta = {**(t.schema.metadata or {}), b"nas_fingerprint": json.dumps(self.fingerprint).encode()}
                pq.write_table(t.replace_schema_metadata(meta), tmp)
        else:
            def write(tmp: str) -> None:
                frame.to_csv(tmp, index=False, float_format="%.6g")
        write_atomic(path, write)
        side = {"format": FORMAT, "table": path.name, "rows": len(frame), "fingerprint": self.fingerprint,
                "overhead": self.overhead}
        write_atomic(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(side, indent=2) + "\n"))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> LatencyTable:
        """Read and validate a table; a missing file says how to profile one, a bad row is named."""
        path = Path(path)
        if not path.exists():
            dev = device or path.stem
            try:
                hint = profile_command(dev) + ("" if path == default_table_path(dev) else f" --out {path}")
            except ValueError:
                hint = f"nas profile --device DEVICE --out {path}"
            raise LatencyTableError(f"no latency table at {path}; build one with: {hint}")
        try:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a corrupt file
            raise LatencyTableError(f"{path}: cannot be read as a latency table ({exc})") from exc
        frame = _validate(frame, path)
        fingerprint: dict[str, Any] = {}
        overhead = None
        side = sidecar_path(path)
        if side.exists():
            try:
                meta = json.loads(side.read_text())
                fingerprint, overhead = dict(meta["fingerprint"]), meta.get("overhead")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise LatencyTableError(f"{side}: corrupt fingerprint sidecar ({exc})") from exc
        else:
            warnings.warn(f"{path}: no fingerprint sidecar {side.name}; cannot check which machine it describes",
                          FingerprintMismatch, stacklevel=2)
        return cls(frame, fingerprint, overhead, path)

    def fingerprint_diffs(self, current: dict[str, Any]) -> list[str]:
        """The fingerprint fields that differ from `current` (CPU, ISA, threads, bits, library, build)."""
        return [f"{k}: table {self.fingerprint.get(k)!r} vs here {current.get(k)!r}" for k in MATCH_FIELDS
                if k in current and str(self.fingerprint.get(k)) != str(current.get(k))]

    def check_fingerprint(self, current: dict[str, Any], strict: bool = False) -> list[str]:
        """Compare with the current machine/library; warn (or raise if `strict`) naming each difference."""
        diffs = self.fingerprint_diffs(current)
        if diffs:
            msg = (f"latency table {self.path or ''} was measured elsewhere ({'; '.join(diffs)}); predictions may "
                   f"not hold here - re-profile with: {profile_command(current.get('table_id', 'kernels'))}")
            if strict:
                raise LatencyTableError(msg)
            warnings.warn(msg, FingerprintMismatch, stacklevel=2)
        return diffs


def _dtype(col: str) -> str:
    if col in ("op", "act", "source"):
        return "object"
    if col == "residual":
        return "bool"
    if col in ("median_ms", "p10_ms", "mad_ms", "min_ms", "max_ms", "serial_ms"):
        return "float64"
    return "int64"


def _where(path: Path, i: int) -> str:
    return f"{path}: row {i}" + (f" (line {i + 2})" if path.suffix != ".parquet" else "")


def _validate(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "source" not in frame.columns:  # written before the column existed: every row was measured
        frame = frame.assign(source="measured")
    if "serial_ms" not in frame.columns:  # likewise: not measured
        frame = frame.assign(serial_ms=0.0)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LatencyTableError(f"{path}: missing columns {missing} (expected {list(COLUMNS)})")
    out = {}
    for c in COLUMNS:
        col = frame[c]
        dt = _dtype(c)
        if dt == "object":
            out[c] = col.astype(str)
            continue
        if dt == "bool":
            s = col.astype(str).str.strip().str.lower()
            bad = ~s.isin(["true", "false", "1", "0"])
            vals = s.isin(["true", "1"])
        else:
            vals = pd.to_numeric(col, errors="coerce")
            bad = vals.isna() | ~vals.map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))
            if dt == "int64":
                bad |= vals.fillna(0) % 1 != 0
            bad |= vals.fillna(0) < 0
            if c in STATS:
                bad |= vals.fillna(0) <= 0
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise LatencyTableError(f"{_where(path, i)}: column {c!r} has invalid value {frame[c].iloc[i]!r}")
        out[c] = vals.astype(dt)
    frame = pd.DataFrame(out)
    for c, allowed in (("op", OP_TYPES), ("act", ACTS), ("source", SOURCES)):
        bad = ~frame[c].isin(allowed)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise LatencyTableError(f"{_where(path, i)}: column {c!r} has invalid value {frame[c].iloc[i]!r} "
                                    f"(expected one of {list(allowed)})")
    dup = frame.duplicated(list(KEY_COLUMNS))
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise LatencyTableError(f"{_where(path, i)}: duplicate op configuration")
    return frame
