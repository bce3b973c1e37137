"""Search quality and scaling: TPE vs random search (hypervolume), the searched network vs MobileNetV2/V3
width-scaled to the same budget (stand-alone training, same recipe, measured latency on our kernels), and Ray
trials per minute with 1 and 2 workers.

    python benchmarks/bench_search.py [--budget 40MFLOPs] [--trials 30] [--epochs 15] [--data PATH] [--no-ray]

Prints a Markdown report and writes it to benchmarks/RESULTS_search.md (with --write).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import search_spaces as ss
from nas.search.evaluate import build_evaluator, load_latency, measure_ms
from nas.search.main import SearchRequest, _limits
from nas.search.pareto import hypervolume
from nas.search.report import choose, trials_frame
from nas.search.runner import SearchSettings, run_optuna, run_ray
from search_spaces.presets import fit_width, small_input


def search_once(space, limits, evaluator, predictor, sampler, trials, seed, tmp) -> tuple:
    s = SearchSettings(space=space, limits=limits, trials=trials, sampler=sampler, seed=seed,
                       study_name=f"bench-{sampler}", storage=f"sqlite:///{tmp}/{sampler}.db")
    t0 = time.perf_counter()
    study = run_optuna(s, evaluator, predictor.predict_ms)
    return trials_frame(study, s, predictor.predict_ms), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="40MFLOPs")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=15, help="stand-alone training epochs (same for every network)")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-trials", type=int, default=8)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", default="results")
    ap.add_argument("--write", action="store_true", help="write benchmarks/RESULTS_search.md")
    args = ap.parse_args()

    from nas.train import TrainRecipe, train_standalone

    request = SearchRequest(budget=args.budget, data=args.data, seed=args.seed, out=args.out)
    limits, _ = _limits(request)
    lines = [f"# Search benchmark ({args.data}, budget {args.budget}, {args.trials} trials per sampler)", ""]
    t0 = time.perf_counter()
    evaluator, space = build_evaluator(request, limits.macs, print)
    supernet_s = time.perf_counter() - t0
    predictor = load_latency(request, space, print)
    evaluator.latency_ms = predictor.predict_ms
    lines += [f"Supernet (trained or loaded from cache) and data: {supernet_s:.0f} s. Space after trimming to the "
              f"budget: {space.name}, resolutions {space.resolutions}, "
              f"{ss.count_macs(space.smallest()) / 1e6:.1f}..{ss.count_macs(space.largest()) / 1e6:.1f}M MACs.", ""]

    # 1. TPE vs random vs evolution, same evaluator, same number of trials
    tmp = tempfile.mkdtemp(prefix="bench-search-")
    frames = {}
    for sampler in ("tpe", "random", "evolution"):
        frames[sampler] = search_once(space, limits, evaluator, predictor, sampler, args.trials, args.seed, tmp)
    lat_ref = 1.1 * max(f["latency_ms"].max() for f, _ in frames.values())
    lines += ["## Hypervolume of the Pareto front (validation accuracy x predicted latency)", "",
              f"Reference point: accuracy 0, latency {lat_ref:.3f} ms.", "",
              "| sampler | trials | hypervolume | best val acc | Pareto size | search wall time |",
              "|---|---|---|---|---|---|"]
    for sampler, (df, secs) in frames.items():
        hv = hypervolume(df["val_acc"].tolist(), df["latency_ms"].tolist(), 0.0, lat_ref)
        lines.append(f"| {sampler} | {len(df)} | {hv:.4f} | {df['val_acc'].max():.4f} | {int(df['pareto'].sum())} "
                     f"| {secs:.0f} s |")

    # 2. The searched network vs MobileNetV2/V3 width-scaled to the budget, trained the same way
    best = ss.decode(choose(frames["tpe"][0])["arch"])
    data = evaluator.subnet.data
    train = data.splits.train
    contenders = {"searched (TPE)": best}
    for name in ("mobilenetv2", "mobilenetv3-large"):
        base = small_input(ss.preset(name), best.resolution, train.in_channels, train.num_classes)
        contenders[f"{name} x{fit_width(base, limits.macs)[1]:.2f}"] = fit_width(base, limits.macs)[0]
    recipe = TrainRecipe(epochs=args.epochs, seed=args.seed)
    lines += ["", f"## Stand-alone training, same recipe ({args.epochs} epochs from scratch, SGD, cosine)", "",
              "| network | MMACs | Mparams | val acc | test acc | measured int8 latency (kernels, 1 thread) | "
              "train time |", "|---|---|---|---|---|---|---|"]
    for name, arch in contenders.items():
        t = time.perf_counter()
        _, m = train_standalone(arch, data, recipe)
        c = ss.count(arch)
        lines.append(f"| {name} | {c.mmacs:.1f} | {c.mparams:.3f} | {m['val_acc']:.4f} | {m.get('test_acc', 0):.4f} "
                     f"| {measure_ms(arch, request):.3f} ms | {time.perf_counter() - t:.0f} s |")
        print(lines[-1], flush=True)
    lines += ["", f"Searched architecture: `{best}`"]

    # 3. Ray Tune: trials per minute with 1 and 2 workers on the embedded local cluster
    if not args.no_ray:
        lines += ["", "## Ray Tune trials per minute (embedded local Ray, 2 cores)", "",
                  "| workers | trials | wall time | trials/min |", "|---|---|---|---|"]
        for workers in (1, 2):
            s = SearchSettings(space=space, limits=limits, trials=args.ray_trials, sampler="random",
                               seed=args.seed + workers, study_name=f"ray-{workers}",
                               storage=f"sqlite:///{tmp}/ray{workers}.db")
            t = time.perf_counter()
            run_ray(s, evaluator, predictor.predict_ms, workers=workers, storage_path=f"{tmp}/ray{workers}")
            wall = time.perf_counter() - t
            lines.append(f"| {workers} | {args.ray_trials} | {wall:.0f} s | {args.ray_trials / wall * 60:.1f} |")
            import ray

            ray.shutdown()
    lat = [measure_ms(best, request) for _ in range(3)]
    lines += ["", f"Measured latency of the searched network, 3 repeats: {statistics.median(lat):.3f} ms median."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        Path(__file__).with_name("RESULTS_search.md").write_text(report)


if __name__ == "__main__":
    main()
