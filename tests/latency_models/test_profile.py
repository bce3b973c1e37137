import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import search_spaces as ss
from latency_models import DeviceSpec, LatencyTable, OpKey, enumerate_ops, profile
from latency_models.ops import FUSED_OPS, KEY_COLUMNS
from nas.cores import CpuSample, read_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch) -> None:
    """Profiling logs a warning when the machine is busy (the test suite itself may be): tests of the other log
    lines see an idle machine."""
    monkeypatch.setattr("latency_models.profiling.other_load", lambda before: 0.0)


def _ops(n: int):
    ops = enumerate_ops([ss.get_space("small32")], [24])
    return ops[:: max(1, len(ops) // n)][:n]


def test_resume_skips_measured_ops(tmp_path) -> None:
    ops = _ops(12)
    out = tmp_path / "t.csv"
    logs: list[str] = []
    spec = DeviceSpec.make("torch-fp32")
    first = profile(spec, ops, out, reps=5, chunk=2, max_ops=5, passes=1, progress=False, log=logs.append)
    assert len(first) == 5 and set(first.keys()) == set(ops[:5])
    before = pd.read_csv(out)
    second = profile(spec, ops, out, reps=5, chunk=4, passes=1, progress=False, log=logs.append)
    assert "5 already measured, 7 to measure" in logs[-1]
    assert second.keys() == set(ops)
    after = pd.read_csv(out)
    pd.testing.assert_frame_equal(after.iloc[:5], before)  # measured rows are kept, not re-timed
    third = profile(spec, ops, out, reps=5, passes=1, progress=False, log=logs.append)
    assert "12 already measured, 0 to measure" in logs[-1] and len(third) == 12


def test_kill_during_profiling_keeps_saved_chunks(tmp_path) -> None:
    """A profiler killed with SIGKILL mid-run leaves a valid table; rerunning measures only the rest."""
    out = tmp_path / "k.csv"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import search_spaces as ss; "
            "from latency_models import DeviceSpec, enumerate_ops, profile; "
            "ops = enumerate_ops([ss.get_space('small32')], [24]); "
            f"profile(DeviceSpec.make('torch-fp32'), ops, {str(out)!r}, reps=5, chunk=3, passes=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if out.exists() and len(pd.read_csv(out)) >= 6:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    table = LatencyTable.load(out)
    n = len(table)
    ops = enumerate_ops([ss.get_space("small32")], [24])
    assert 6 <= n < len(ops) and n % 3 == 0  # whole chunks only
    logs: list[str] = []
    profile(DeviceSpec.make("torch-fp32"), ops[: n + 3], out, reps=5, passes=1, progress=False, log=logs.append)
    assert f"{n} already measured, 3 to measure" in logs[-1]


def test_table_of_other_device_is_not_mixed(tmp_path, fp32_table: LatencyTable) -> None:
    out = tmp_path / "x.csv"
    LatencyTable(fp32_table.frame, {**fp32_table.fingerprint, "cpu_model": "Other CPU"}).save(out)
    try:
        profile(DeviceSpec.make("torch-fp32"), _ops(3), out, reps=3, progress=False, log=lambda s: None)
    except ValueError as exc:
        assert "another device" in str(exc) and str(out) in str(exc)
    else:
        raise AssertionError("profiling into a table of another CPU must fail")


def test_default_profile_measures_every_op_in_three_passes_keeping_the_lowest(tmp_path) -> None:
    """Three passes by default (bursts of load on shared machines last seconds); each statistic keeps its lowest
    value over the passes, the sample counts add up."""
    ops = _ops(4)
    out = tmp_path / "p.csv"
    one = profile(DeviceSpec.make("torch-fp32"), ops, tmp_path / "one.csv", reps=5, passes=1, progress=False,
                  log=lambda s: None)
    logs: list[str] = []
    table = profile(DeviceSpec.make("torch-fp32"), ops, out, reps=5, progress=False, log=logs.append, retries=0)
    assert "x 3 pass(es)" in logs[0]
    assert set(table.passes().values()) == {3}
    f = pd.read_csv(out)
    assert (f["n"] + f["rejected"] == 15).all()
    assert (f["min_ms"] <= f["p10_ms"]).all() and (f["p10_ms"] <= f["max_ms"]).all()
    assert set(one.passes().values()) == {1}
    logs.clear()
    profile(DeviceSpec.make("torch-fp32"), ops, out, reps=5, progress=False, log=logs.append)
    assert "12 already measured, 0 to measure" in logs[-1]
    row = table.frame.iloc[0].to_dict()
    table.add([{**row, "p10_ms": row["p10_ms"] * 2, "median_ms": row["median_ms"] / 2, "passes": 1}])
    g = table.frame.iloc[0]
    assert g["p10_ms"] == row["p10_ms"] and g["median_ms"] == row["median_ms"] / 2 and g["passes"] == 4


def _slow_canary(slow_calls: set[int]):
    """A chunk measurement on this machine (`measure_ops`) whose canary (the chunk's first and last op) reports its
    first time on every call, 1.5x that on the calls numbered in `slow_calls`: a machine steady but for those
    chunks (the real canary's jitter on a machine busy with the test suite would add retries of its own)."""
    from latency_models.profiling import measure_ops

    spec, calls, first = DeviceSpec.make("torch-fp32"), [], []

    def measure(chunk_ops):
        fp, rows = measure_ops(spec, chunk_ops, 3)
        first.append(rows[0]["p10_ms"])
        for r in (rows[0], rows[-1]):
            r["p10_ms"] = first[0] * (1.5 if len(calls) in slow_calls else 1.0)
        calls.append([OpKey(*[r[c] for c in KEY_COLUMNS]) for r in rows[1:-1]])
        return fp, rows

    return measure, calls


def test_a_chunk_measured_while_the_canary_ran_slow_is_measured_again(tmp_path) -> None:
    """The canary op is timed before and after every chunk; a chunk whose canary ran more than CANARY_TOL slower
    than the run's fastest is measured again at the end (also a first chunk, judged once a faster one is seen),
    and a chunk slow on every try is named in the log."""
    from latency_models.profiling import CANARY_RETRIES, canary_op

    spec, ops = DeviceSpec.make("torch-fp32"), _ops(6)
    measure, calls = _slow_canary({0})
    logs: list[str] = []
    table = profile(spec, ops, tmp_path / "a.csv", reps=3, chunk=2, passes=1, progress=False, measure=measure,
                    log=logs.append)
    assert calls[0] == ops[:2] and calls[1:3] == [ops[2:4], ops[4:6]] and calls[3] == ops[:2] and len(calls) == 4
    assert table.passes() == {**{o: 2 for o in ops[:2]}, **{o: 1 for o in ops[2:]}}
    assert not any("slower than at its fastest" in line for line in logs)
    assert canary_op(ops) in ops and canary_op(ops).op not in FUSED_OPS

    measure, calls = _slow_canary({1, 3, 4})  # the second chunk, and both of its retries
    logs.clear()
    table = profile(spec, ops, tmp_path / "b.csv", reps=3, chunk=2, passes=1, progress=False, measure=measure,
                    log=logs.append)
    assert calls == [ops[:2], ops[2:4], ops[4:6], ops[2:4], ops[2:4]] and CANARY_RETRIES == 2
    assert table.passes()[ops[2]] == 3 and table.passes()[ops[0]] == 1
    warnings = [line for line in logs if "slower than at its fastest" in line]
    assert len(warnings) == 1 and warnings[0].split(": ")[1].startswith("2 op measurement(s)")


def test_profiling_under_load_warns_once_with_the_fix(tmp_path, monkeypatch) -> None:
    import latency_models.profiling as profiling

    spec, ops = DeviceSpec.make("torch-fp32"), _ops(4)
    logs: list[str] = []
    profile(spec, ops, tmp_path / "a.csv", reps=3, chunk=2, passes=1, progress=False, log=logs.append)
    assert not any("CPUs busy" in line for line in logs)
    monkeypatch.setattr(profiling, "other_load", lambda before: 1.6)
    logs.clear()
    profile(spec, ops, tmp_path / "b.csv", reps=3, chunk=2, passes=1, progress=False, log=logs.append)
    warnings = [line for line in logs if "CPUs busy" in line]
    assert len(warnings) == 1 and "1.6 CPUs" in warnings[0] and "--passes" in warnings[0]
    monkeypatch.undo()
    assert profiling.other_load(read_sample()) >= 0.0  # the real reading: never negative


def test_the_load_reading_counts_other_processes_not_this_ones_threads(monkeypatch) -> None:
    """Over a chunk, the warning's reading is the CPU time of other processes (all CPUs' busy time less this
    process's), not the load average, which trails by a minute and counted a 2-thread row as other load."""
    import latency_models.profiling as profiling

    monkeypatch.undo()  # the real reading, not `idle_machine`'s
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    start = CpuSample(busy=1000, total=2000, own=300, cpus=2)
    samples = iter([CpuSample(busy=1200, total=2200, own=500, cpus=2),  # 100 ticks of 2 CPUs, all this process's
                    CpuSample(busy=1200, total=2200, own=300, cpus=2),  # all another process's: 2 cores' worth
                    None])  # /proc unreadable
    monkeypatch.setattr(profiling, "read_sample", lambda: next(samples))
    assert profiling.other_load(start) == 0.0
    assert profiling.other_load(start) == pytest.approx(2.0)
    assert profiling.other_load(start) == 0.0 and profiling.other_load(None) == 0.0


def test_a_multi_thread_profile_also_times_each_op_on_one_thread(tmp_path) -> None:
    """`serial_ms`: a 2-thread table holds each op's 1-thread time beside its own (what the overhead fit prices
    the thread hand-off from); a 1-thread table's equals its p10. A table written before the column existed
    loads with 0 (not measured), and a later pass fills it in."""
    ops = _ops(6)
    one = profile(DeviceSpec.make("kernels"), ops, tmp_path / "k.csv", reps=5, passes=1, progress=False,
                  log=lambda s: None)
    assert (one.frame["serial_ms"] == one.frame["p10_ms"]).all()
    out = tmp_path / "k2.csv"
    two = profile(DeviceSpec.make("kernels", threads=2), ops, out, reps=5, passes=1, progress=False,
                  log=lambda s: None)
    assert two.fingerprint["threads"] == 2 and (two.frame["serial_ms"] > 0).all()
    assert not (two.frame["serial_ms"] == two.frame["p10_ms"]).all()  # timed separately, on one thread
    assert set(LatencyTable.load(out).serial()) == set(ops)
    pd.read_csv(out).drop(columns="serial_ms").to_csv(out, index=False)
    old = LatencyTable.load(out)
    assert (old.frame["serial_ms"] == 0).all() and old.serial() == {}
    old.add([{**old.frame.iloc[0].to_dict(), "serial_ms": 0.5}])
    old.add([{**old.frame.iloc[0].to_dict(), "serial_ms": 0.0}])  # an unmeasured row never replaces one
    assert old.serial() == {ops[0]: 0.5}


def _kernels_ops(threads: int = 1) -> list:
    """A few cheap kernels ops of small32 at 24 x 24: layer ops and at least two fused blocks."""
    ops = enumerate_ops([ss.get_space("small32")], [24], device=DeviceSpec("kernels", threads=threads))
    fused = [o for o in ops if o.op in FUSED_OPS][:3]
    return [*[o for o in ops if o.op not in FUSED_OPS][::40], *fused]


def test_a_kernels_table_keeps_fused_rows_and_resumes(tmp_path) -> None:
    """Fused-block rows are timed like any op (1-thread `serial_ms` in a 2-thread table), saved, loaded back and
    not timed again; a device that runs layers alone refuses them."""
    ops = _kernels_ops(2)
    assert sum(o.op in FUSED_OPS for o in ops) >= 2
    out = tmp_path / "kernels-t2.csv"
    logs: list[str] = []
    table = profile(DeviceSpec("kernels", threads=2), ops, out, reps=3, chunk=4, passes=1, progress=False,
                    log=logs.append)
    loaded = LatencyTable.load(out)
    assert loaded.keys() == set(ops) and set(loaded.serial()) == set(ops)
    fused = loaded.frame[loaded.frame["op"].isin(FUSED_OPS)]
    assert len(fused) == sum(o.op in FUSED_OPS for o in ops) and (fused["p10_ms"] > 0).all()
    assert (fused["macs"] == [OpKey(*r).macs for r in fused[list(KEY_COLUMNS)].itertuples(index=False)]).all()
    assert table.fingerprint == loaded.fingerprint
    profile(DeviceSpec("kernels", threads=2), ops, out, reps=3, passes=1, progress=False, log=logs.append)
    assert f"{len(ops)} already measured, 0 to measure" in logs[-1]
    for other in ("torch-fp32", "ort-int8"):
        with pytest.raises(ValueError, match=r"ops: .* runs every layer alone; fused blocks such as mbconv"):
            profile(DeviceSpec.make(other), ops, tmp_path / "x.csv", reps=3, progress=False, log=logs.append)
    assert not (tmp_path / "x.csv").exists()


def test_fused_rows_drop_an_overhead_fitted_without_them(tmp_path) -> None:
    """A table whose stored overhead was fitted on layer sums gains fused rows (a resumed `nas profile`): that
    overhead no longer prices what the predictor sums, so it goes (logged); one fitted with fused rows stays, and
    so does any overhead when only layer rows are added."""
    ops = _kernels_ops()
    layers = [o for o in ops if o.op not in FUSED_OPS]
    out = tmp_path / "kernels.csv"
    table = profile(DeviceSpec("kernels"), layers[:3], out, reps=3, passes=1, progress=False, log=lambda s: None)
    table.overhead = {"scale": 1.1, "per_op": 0.001, "const": 0.01, "space": "small32"}
    table.save(out)
    logs: list[str] = []
    profile(DeviceSpec("kernels"), layers, out, reps=3, passes=1, progress=False, log=logs.append)
    assert LatencyTable.load(out).overhead["scale"] == 1.1  # layer rows only: kept
    profile(DeviceSpec("kernels"), ops, out, reps=3, passes=1, progress=False, log=logs.append)
    assert LatencyTable.load(out).overhead is None
    assert any("fitted without fused-block rows: dropped" in line for line in logs)
    table = LatencyTable.load(out)
    table.overhead = {"scale": 1.2, "per_op": 0.001, "const": 0.01, "fused_ops": True}
    table.save(out)
    more = [o for o in enumerate_ops([ss.get_space("small32")], [24], device=DeviceSpec("kernels"))
            if o.op in FUSED_OPS and o not in set(ops)][:1]
    profile(DeviceSpec("kernels"), [*ops, *more], out, reps=3, passes=1, progress=False, log=logs.append)
    assert LatencyTable.load(out).overhead["scale"] == 1.2
