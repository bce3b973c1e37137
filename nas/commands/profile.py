"""`nas profile`: build a device's latency lookup table from the kernel library (or PyTorch), resumably.

With `--sample FRACTION --from TABLE` only that fraction of the ops is measured; the rest is predicted from
another device's full table (`latency_models.transfer`), which takes minutes instead of hours on a slow device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import search_spaces as ss
from nas.checks import arg, budget, finite_float, output_file, positive_int

SAMPLE_SEED = 0  # which ops --sample measures; fixed, so a rerun resumes the same sample


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device/--bits/--threads/--isa, shared by `nas profile` and `nas latency`."""
    from latency_models import DEVICE_NAMES

    p.add_argument("--device", default="kernels",
                   help=f"one of {', '.join(DEVICE_NAMES)} (or a table id such as kernels-int4-t2)")
    p.add_argument("--bits", type=int, default=None, choices=(4, 8, 32),
                   help="weight bits (kernels: 8 or 4; default: the device's own)")
    p.add_argument("--threads", type=arg(positive_int, 1024), default=1)
    p.add_argument("--isa", default=None, help="force a kernel ISA (kernels only; default: best for this CPU)")


def device_spec(args: argparse.Namespace):  # -> latency_models.DeviceSpec
    """The device the flags name; a bad value is refused naming its flag (`--device`, `--bits`, `--isa`)."""
    return make_device_spec(args.device, args.bits, args.threads, args.isa)


def make_device_spec(device: str, bits: int | None = None, threads: int = 1, isa: str | None = None):
    """`latency_models.DeviceSpec.make`, its one-line errors naming the flag of the field at fault."""
    from latency_models import DeviceSpec

    try:
        return DeviceSpec.make(device, bits, threads, isa)
    except ValueError as exc:
        field, sep, rest = str(exc).partition(": ")
        if not sep or field not in ("device", "bits", "threads", "isa"):
            raise
        raise ValueError(f"--{field}: {rest}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure every op of the search spaces on a device -> latency table")
    add_device_args(p)
    p.add_argument("--space", action="append", choices=sorted(ss.SPACES),
                   help=f"space(s) whose ops to profile, repeatable (default {ss.DEFAULT_SPACE})")
    p.add_argument("--resolution", type=arg(positive_int), action="append",
                   help="only these input resolutions (repeatable; default all of each space)")
    p.add_argument("--budget", default=None, type=arg(budget),
                   help="skip ops that alone cost more than this, e.g. 100MFLOPs")
    p.add_argument("--out", default=None, type=arg(output_file),
                   help="table path (.csv or .parquet; default results/latency/<id>.csv)")
    p.add_argument("--reps", type=arg(positive_int), default=30, help="timed repetitions per op (after warm-up)")
    p.add_argument("--passes", type=arg(positive_int), default=3,
                   help="measure every op this many times over the table, keeping the lowest of each statistic "
                        "(a burst of load on the machine then slows one pass of an op, not all)")
    p.add_argument("--max-ops", type=arg(positive_int), default=None,
                   help="stop after this many new ops (rerun to continue)")
    p.add_argument("--chunk", type=arg(positive_int), default=32, help="ops per save (and per Ray task)")
    p.add_argument("--sample", type=arg(finite_float, 0.0, 1.0, low_open=True), default=None, metavar="FRACTION",
                   help="with --from: measure only this fraction of the ops (every op type, spread over sizes) and "
                        "predict the others from the --from table, e.g. 0.1")
    p.add_argument("--from", dest="from_table", default=None, metavar="TABLE",
                   help="with --sample: a full latency table of another device over the same ops (or more), "
                        "e.g. results/latency/kernels.csv")
    p.add_argument("--dry-run", action="store_true", help="only count the ops and estimate the time")
    p.add_argument("--address", default=None, help="Ray cluster address: profile on a node of that cluster")
    p.add_argument("--resources", default=None,
                   help="with --address: device=NAME runs on the node holding custom resource NAME")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from latency_models import (
        LatencyTable,
        default_table_path,
        enumerate_ops,
        estimate_seconds,
        profile,
        profile_ray,
    )
    from latency_models.transfer import choose_sample, transfer_table

    spec = device_spec(args)
    spaces = [ss.get_space(s) for s in (args.space or [ss.DEFAULT_SPACE])]
    if args.resolution:
        known = {r for s in spaces for r in s.resolutions}
        bad = sorted(set(args.resolution) - known)
        if bad:
            raise ValueError(f"--resolution: {bad} not a resolution of {[s.name for s in spaces]} "
                             f"(choices {sorted(known)})")
    ops = enumerate_ops(spaces, args.resolution, device=spec)
    if args.budget:
        budget = ss.parse_budget(args.budget)
        if budget.kind != "macs":
            raise ValueError(f"--budget: profiling filters on MACs/FLOPs, got {budget}")
        ops = [o for o in ops if o.macs <= budget.value]
    out = args.out or default_table_path(spec.table_id)
    source = _transfer_source(args, out)
    todo = ops if source is None else _named(choose_sample, source, ops, args.sample, SAMPLE_SEED)
    if args.dry_run:
        eta = estimate_seconds(todo, spec, args.reps) * args.passes
        sampled = f" ({len(todo)} sampled)" if source is not None else ""
        print(f"{len(ops)} distinct ops{sampled} in {', '.join(s.name for s in spaces)}; estimated {eta / 60:.1f} "
              f"min on {spec.table_id} -> {out}")
        return 0
    if args.passes < 1:
        raise ValueError(f"--passes: expected >= 1, got {args.passes}")
    kw = dict(reps=args.reps, chunk=args.chunk, max_ops=args.max_ops, progress=not args.no_progress,
              passes=args.passes)
    if args.resources and not args.address:
        raise ValueError("--resources needs --address (a Ray cluster)")
    if args.address:
        key, _, name = (args.resources or "").partition("=")
        if key != "device" or not name:
            raise ValueError(f"--resources: expected device=NAME (a node's custom Ray resource), got "
                             f"{args.resources!r}")
        table = profile_ray(spec, todo, out, args.address, name, **kw)
    else:
        table = profile(spec, todo, out, **kw)
    if source is not None:
        done = table.passes()
        left = sum(done.get(o, 0) < args.passes for o in todo)
        if left:
            print(f"{left} of the {len(todo)} sampled ops still to measure: rerun to continue (the other ops are "
                  f"transferred from {args.from_table} once the sample is complete)")
            return 0
        # fitted on the rows as saved (6 significant digits), so a rerun refits to the same table
        table, report = _named(transfer_table, source, LatencyTable.load(out), ops)
        table.fingerprint["transfer"].update(sample=args.sample, seed=SAMPLE_SEED)
        table.save(out)
        print(f"{report.measured} ops measured, {report.transferred} transferred from {args.from_table} "
              f"({report.outside} of them outside the sampled sizes/kinds of their op type)")
    print(f"{len(table)} ops in {table.path} (fingerprint in {table.path.with_suffix('.json')})")
    return 0


def _transfer_source(args: argparse.Namespace, out: Path):  # -> latency_models.LatencyTable | None
    """The --from table (None without --sample/--from); the two flags go together."""
    from latency_models import LatencyTable, LatencyTableError

    if (args.sample is None) != (args.from_table is None):
        flag = "--from" if args.sample is None else "--sample"
        raise ValueError(f"{flag}: --sample FRACTION and --from TABLE go together (measure a fraction of the ops, "
                         "predict the rest from another device's table)")
    if args.from_table is None:
        return None
    if Path(args.from_table).resolve() == Path(out).resolve():
        raise ValueError(f"--from: {args.from_table} is the --out table itself; name another device's table")
    try:
        return LatencyTable.load(args.from_table)
    except LatencyTableError as exc:
        raise ValueError(f"--from: {exc}") from None


def _named(fn, *fn_args):
    """`fn(*fn_args)`, its `sample: ...` / `from: ...` errors naming the flag (`--sample`, `--from`)."""
    try:
        return fn(*fn_args)
    except ValueError as exc:
        field, sep, rest = str(exc).partition(": ")
        if sep and field in ("sample", "from"):
            raise ValueError(f"--{field}: {rest}") from None
        raise
