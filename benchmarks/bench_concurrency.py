"""Two runs at once: wall time of a command alone and of N copies started together, with and without `nas.cores`.

    python benchmarks/bench_concurrency.py [--command "nas search --budget 100MFLOPs --quick --no-finalize"]
        [--runs 2] [--modes off,on] [--repeat 1] [--env KEY=VALUE ...] [--keep] [--write]

Each process runs in a fresh temporary folder as its working directory, so its outputs, latency table and supernet
cache (all under `results/` there) are its own and every copy does the same work as the one alone. Mode `off`
sets NAS_FAIR_THREADS=0 (each process keeps its requested torch threads: the behaviour before `nas.cores`), `on`
sets NAS_FAIR_THREADS=1. Printed per mode: the time alone, each copy's time together, and ratio = together /
alone (fair share on N runs that each fill the machine: N x). "background" is the CPU time other processes used
meanwhile, in cores (machine busy time from /proc/stat minus this benchmark's and its children's), so a noisy
machine shows. `--write` writes benchmarks/RESULTS_concurrency.md (keeping its "## Notes" section).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas import cores  # noqa: E402

DEFAULT_COMMAND = "nas search --budget 100MFLOPs --quick --no-finalize"
RESULTS = Path(__file__).resolve().parent / "RESULTS_concurrency.md"
NOTES = "## Notes"


@dataclass
class Run:
    """One process: its wall and CPU seconds and exit status."""

    wall_s: float
    cpu_s: float
    status: int
    folder: Path


@dataclass
class Phase:
    """Runs started together, with what the rest of the machine did meanwhile."""

    runs: list[Run]
    background_cores: float | None
    load: tuple[float, float, float]


def cpu_model() -> str:
    """The CPU's model name (and family / model numbers) from /proc/cpuinfo; the platform's processor elsewhere."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        info = {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    if "model name" not in info:
        return platform.processor() or platform.machine()
    family = f" (family {info['cpu family']}, model {info.get('model', '?')})" if "cpu family" in info else ""
    return info["model name"] + family


def usable_cores() -> int:
    """CPUs this process may run on."""
    cpus = cores.usable_cpus()
    return len(cpus) if cpus is not None else os.cpu_count() or 1


def run_together(argv: list[str], n: int, env: dict[str, str], keep: bool) -> Phase:
    """Start `n` copies of `argv` at once, each in a fresh folder; wait for all of them."""
    folders = [Path(tempfile.mkdtemp(prefix="bench_concurrency_")) for _ in range(n)]
    before = cores.read_sample(cores.usable_cpus())
    start: dict[int, tuple[float, Path]] = {}
    logs = []
    for folder in folders:
        out, err = open(folder / "stdout.txt", "w"), open(folder / "stderr.txt", "w")  # noqa: SIM115
        logs += [out, err]
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=out, stderr=err)
        start[proc.pid] = (time.perf_counter(), folder)
    runs = []
    while len(runs) < n:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in start:
            continue
        t0, folder = start[pid]
        runs.append(Run(time.perf_counter() - t0, usage.ru_utime + usage.ru_stime,
                        os.waitstatus_to_exitcode(status), folder))
    for f in logs:
        f.close()
    wall = max(r.wall_s for r in runs)
    after = cores.read_sample(cores.usable_cpus())
    background = None
    if before is not None and after is not None and after.total > before.total:
        tick = os.sysconf("SC_CLK_TCK")
        busy_s = (after.busy - before.busy) / tick
        mine_s = sum(r.cpu_s for r in runs) + (after.own - before.own) / tick
        background = max(0.0, busy_s - mine_s) / wall
    failed = [r for r in runs if r.status != 0]
    for r in failed:
        print(f"FAILED (exit {r.status}) in {r.folder}:\n" + (r.folder / "stderr.txt").read_text()[-3000:],
              file=sys.stderr)
    if not keep and not failed:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    if failed:
        raise SystemExit(1)
    runs.sort(key=lambda r: r.wall_s)
    return Phase(runs, background, os.getloadavg())


def fmt_phase(p: Phase) -> str:
    bg = f"{p.background_cores:.2f}" if p.background_cores is not None else "?"
    return " / ".join(f"{r.wall_s:.1f}" for r in p.runs) + f" s (CPU {' / '.join(f'{r.cpu_s:.0f}' for r in p.runs)}" \
        f" s; background {bg} cores)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", default=DEFAULT_COMMAND, help=f"what to run (default: {DEFAULT_COMMAND!r})")
    ap.add_argument("--runs", type=int, default=2, help="copies started together (default 2)")
    ap.add_argument("--modes", default="off,on", help="off (NAS_FAIR_THREADS=0), on, or both in order")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (alone, together) per mode, modes interleaved; "
                                                          "medians reported")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment, every run")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders")
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes) or args.runs < 1 or args.repeat < 1:
        ap.error("--modes: expected off, on or off,on; --runs, --repeat: expected positive counts")
    if any("=" not in kv for kv in args.env):
        ap.error("--env: expected KEY=VALUE")
    argv = shlex.split(args.command)
    extra = dict(kv.split("=", 1) for kv in args.env)
    date = time.strftime("%Y-%m-%d %H:%M")
    header = (f"{date}, {cpu_model()}, {usable_cores()} usable cores, Python {platform.python_version()}; "
              f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(header)
    print(f"command: {args.command}" + (f"  (env {' '.join(args.env)})" if args.env else ""))
    phases: dict[str, list[tuple[Phase, Phase]]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            env = {**os.environ, **extra, cores.ENV_VAR: "1" if mode == "on" else "0"}
            alone = run_together(argv, 1, env, args.keep)
            print(f"[{mode}] alone: {fmt_phase(alone)}", flush=True)
            together = run_together(argv, args.runs, env, args.keep)
            ratios = [r.wall_s / alone.runs[0].wall_s for r in together.runs]
            print(f"[{mode}] {args.runs} together: {fmt_phase(together)}; ratio "
                  f"{' / '.join(f'{x:.2f}' for x in ratios)} (fair share {args.runs}x)", flush=True)
            phases[mode].append((alone, together))
    rows = [summary(mode, phases[mode]) for mode in modes]
    for row in rows:
        print(f"{row['mode']}: alone {row['alone']:.1f} s, together {row['together']:.1f} s (medians), "
              f"ratio {row['ratio']:.2f}")
    if args.write:
        write_results(header, args, rows)
        print(f"wrote {RESULTS}")
    return 0


def summary(mode: str, rounds: list[tuple[Phase, Phase]]) -> dict:
    """Medians over the rounds of one mode: alone, each copy together, and their ratio; plus every value."""
    alone = [a.runs[0].wall_s for a, _ in rounds]
    together = [r.wall_s for _, t in rounds for r in t.runs]
    bg = [p.background_cores for a, t in rounds for p in (a, t) if p.background_cores is not None]
    return {"mode": mode, "alone": statistics.median(alone), "together": statistics.median(together),
            "ratio": statistics.median(together) / statistics.median(alone), "alone_all": alone,
            "together_all": together, "background_max": max(bg) if bg else None}


def write_results(header: str, args: argparse.Namespace, rows: list[dict]) -> None:
    flags = [f"--command {shlex.quote(args.command)}"] if args.command != DEFAULT_COMMAND else []
    flags += [f"--runs {args.runs}"] if args.runs != 2 else []
    flags += [f"--repeat {args.repeat}"] if args.repeat > 1 else []
    flags += [f"--env {shlex.quote(kv)}" for kv in args.env]
    env = f" with `{' '.join(args.env)}`" if args.env else ""
    lines = ["# Two runs at once: measured results", "",
             f"Produced by `{' '.join(['python benchmarks/bench_concurrency.py --write', *flags])}`.", "",
             f"{header}.", "",
             f"Command: `{args.command}`{env}; {args.runs} copies started together, each in its own fresh folder "
             "(own latency table and supernet cache, as the copy alone). `off`: NAS_FAIR_THREADS=0, requested torch "
             "threads throughout (the behaviour before `nas.cores`); `on`: torch threads sized to the cores other "
             "processes leave free. Ratio: median together / median alone (fair share: "
             f"{args.runs}x). Background: the most CPU time other processes used during any phase, in cores.", "",
             "| nas.cores | alone s (median) | together s (median) | ratio | alone s, every run | together s, every "
             "copy | background cores (max) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        bg = f"{r['background_max']:.2f}" if r["background_max"] is not None else "?"
        lines.append(f"| {r['mode']} | {r['alone']:.1f} | {r['together']:.1f} | **{r['ratio']:.2f}** | "
                     f"{', '.join(f'{x:.1f}' for x in r['alone_all'])} | "
                     f"{', '.join(f'{x:.1f}' for x in r['together_all'])} | {bg} |")
    # hand-written notes (other measurements, what was running) under NOTES survive a rerun
    old = RESULTS.read_text() if RESULTS.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    RESULTS.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    sys.exit(main())
