"""`nas latency predict | fit | validate | info`: use, calibrate and check latency tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import search_spaces as ss
from latency_models.validation import MIN_FIT_SAMPLES
from nas.checks import arg, output_dir, positive_int
from nas.commands.profile import add_device_args, device_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="predict latency from a device table; fit and validate the predictor")
    lsub = p.add_subparsers(dest="latency_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        add_device_args(q)
        q.add_argument("--table", default=None, help="table path (default results/latency/<device>.csv)")
        q.add_argument("--strict", action="store_true", help="fail (not warn) on a fingerprint mismatch")

    q = lsub.add_parser("predict", help="predicted latency of architectures")
    common(q)
    q.add_argument("arch", nargs="+", help="compact string, JSON, .json path or preset name")
    q.add_argument("--breakdown", action="store_true", help="per-op table")
    q.set_defaults(func=cmd_predict)

    for name, helptext in (("fit", "fit the per-network overhead on measured random architectures"),
                           ("validate", "measure random architectures end to end and score the predictor")):
        q = lsub.add_parser(name, help=helptext)
        common(q)
        q.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
        q.add_argument("--reps", type=arg(positive_int), default=9, help="timed runs per architecture and pass")
        q.add_argument("--passes", type=arg(positive_int), default=10,
                       help="round-robin passes over the architectures; each keeps its lowest statistic (many "
                            "short passes: a burst of load lasting seconds then slows few of an arch's passes)")
        q.add_argument("--fit-samples", type=arg(positive_int, None, MIN_FIT_SAMPLES), default=60,
                       help="architectures for the overhead fit")
        q.add_argument("--stat", default=None, choices=("median_ms", "p10_ms", "min_ms"),
                       help="statistic of op and network times to predict (default p10_ms: stable under load)")
        q.add_argument("--no-progress", action="store_true")
        if name == "validate":
            q.add_argument("--samples", type=arg(positive_int), default=100, help="validation architectures")
            q.add_argument("--refit", action="store_true", help="refit the overhead even if the table has one")
            q.add_argument("--out", default=None, type=arg(output_dir),
                           help="report folder (default results/latency/validate-<id>)")
        q.set_defaults(func=cmd_fit if name == "fit" else cmd_validate)

    q = lsub.add_parser("info", help="summary and fingerprint check of a table")
    common(q)
    q.set_defaults(func=cmd_info)


def _load(args: argparse.Namespace):  # -> tuple[DeviceSpec, LatencyTable, Device]
    from latency_models import LatencyTable, default_table_path, get_device

    spec = device_spec(args)
    table = LatencyTable.load(args.table or default_table_path(spec.table_id), spec.table_id)
    device = get_device(spec)
    table.check_fingerprint(device.fingerprint(), strict=args.strict)
    return spec, table, device


def cmd_predict(args: argparse.Namespace) -> int:
    from latency_models import Predictor

    _, table, _ = _load(args)
    pred = Predictor(table)
    for text in args.arch:
        arch = ss.parse_arch(text)
        steps = pred.breakdown(arch)  # the ops the device runs (a fused block is one)
        if args.breakdown:
            for op, ms, measured in steps:
                print(f"  {op.describe():<58}{ms * 1000:>10.1f} us  {'table' if measured else 'interpolated'}")
        interpolated = sum(not measured for _, _, measured in steps)
        note = f"  ({interpolated} of {len(steps)} ops interpolated)" if interpolated else ""
        print(f"{pred.predict_ms(arch):.4f} ms  {arch}{note}")
    if table.overhead is None:
        print("(no fitted overhead: raw sum of ops; run `nas latency fit` for end-to-end predictions)")
    return 0


def _fit(args: argparse.Namespace, table, device) -> tuple:  # -> (Overhead, fitting data)
    from latency_models import Predictor
    from latency_models.validation import fit_overhead

    space = ss.get_space(args.space)
    t = time.time()
    overhead, data = fit_overhead(Predictor(table, stat=args.stat), device, space, args.fit_samples, args.reps,
                                  args.passes, not args.no_progress)
    print(f"overhead fitted on {overhead.fitted_on} architectures of {space.name} in {time.time() - t:.0f}s: "
          f"{overhead.describe()}")
    return overhead, data


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the overhead and store it in the table: the one command that changes a table's overhead."""
    _, table, device = _load(args)
    overhead, data = _fit(args, table, device)
    table.overhead = {**overhead.to_dict(), **data}
    table.save(table.path)
    print(f"stored in {table.path.with_suffix('.json')}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Score the predictor on measured architectures; reads the table and never changes it."""
    from latency_models import Overhead, Predictor
    from latency_models.validation import fit_and_validate, plot, save_report, validate

    if args.samples < 2:
        raise ValueError(f"--samples: expected at least 2, got {args.samples}")
    spec, table, device = _load(args)
    fit = table.overhead
    stale = (not fit or fit.get("space") != args.space or "archs" not in fit
             or (args.stat is not None and fit.get("stat") != args.stat))
    if args.refit or stale:
        why = "--refit" if args.refit else (f"the table's overhead was fitted on {fit.get('space')!r}" if fit
                                            else "the table has no fitted overhead")
        print(f"{why}: fitting an overhead on {args.space} for this validation only (the table is not changed; "
              f"`nas latency fit --space {args.space}` stores one); the fitting and validation networks are "
              f"measured in the same passes")
    else:
        print(f"using the overhead fitted on {len(fit['archs'])} architectures stored in the table")
    space = ss.get_space(args.space)
    t = time.time()
    if args.refit or stale:
        overhead, data, report, df = fit_and_validate(Predictor(table, stat=args.stat), device, space,
                                                      args.fit_samples, args.samples, args.reps, args.passes,
                                                      not args.no_progress)
        print(f"overhead fitted on {overhead.fitted_on} architectures: {overhead.describe()}")
        fit = {**overhead.to_dict(), **data}
        pred = Predictor(table, overhead=overhead, stat=data["stat"])
    else:
        pred = Predictor(table, overhead=Overhead.from_dict(fit))
        report, df = validate(pred, device, space, args.samples, fit, args.reps, args.passes, not args.no_progress)
    print(f"validated on {report.n} architectures of {space.name} (disjoint from the {len(fit['archs'])} used "
          f"to fit the overhead) on {spec.table_id} in {time.time() - t:.0f}s; statistic {pred.stat} of "
          f"{args.reps} runs, lowest of {args.passes} round-robin passes")
    for line in report.lines():
        print(line)
    outdir = Path(args.out) if args.out else Path(table.path).parent / f"validate-{spec.table_id}"
    title = f"{spec.table_id} on {table.fingerprint.get('cpu_model', '?')} ({report.n} archs of {space.name})"
    png = plot(df, report, title, outdir / "predicted_vs_measured.png")
    save_report(report, df, outdir, {"device": spec.table_id, "space": space.name, "stat": pred.stat,
                                     "reps": args.reps, "passes": args.passes, "fit_archs": fit["archs"],
                                     "overhead": Overhead.from_dict(fit).to_dict(),
                                     "overhead_stored_in_table": fit is table.overhead,
                                     "fingerprint": table.fingerprint})
    print(f"plot: {png}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from latency_models import Overhead

    spec, table, device = _load(args)
    f = table.frame
    print(f"{table.path}: {len(f)} ops, measured on {table.fingerprint.get('cpu_model')} "
          f"({table.fingerprint.get('isa')}, {table.fingerprint.get('threads')} thread(s), "
          f"{table.fingerprint.get('library')} {table.fingerprint.get('library_version')})")
    print(f.groupby("op").median_ms.agg(["count", "median", "max"]).to_string())
    print(f"median relative spread (MAD/median): {(f.mad_ms / f.median_ms).median() * 100:.2f}%")
    print("overhead: " + ("not fitted" if not table.overhead else
                          f"{Overhead.from_dict(table.overhead).describe()} (fitted on "
                          f"{table.overhead['fitted_on']})"))
    return 0
