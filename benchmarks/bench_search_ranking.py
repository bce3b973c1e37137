"""Does the search's own proxy (its supernet) rank networks of the whole budget as stand-alone training does?

Loads (or trains) the supernet `nas search` and `bench_search.py` use for these arguments, draws --archs
architectures of the space spread evenly over [its smallest network, the budget] in MACs (one seeded draw per
equal-width MAC bin), scores each as a search trial is scored (the sub-network's validation accuracy), trains each
from scratch with bench_search's recipe (the same cache, so networks that benchmark already trained, such as the
baselines, are loaded, not trained again) and reports, per architecture, the trial score next to the stand-alone
accuracy, then:

- Kendall tau / Spearman rho of the trial score against stand-alone validation and test accuracy (the proxy),
- of MACs against stand-alone test accuracy (does spending the budget pay at this recipe?) and against the score,
- of training seed 0 against seed 1 (the ceiling: how well stand-alone training agrees with itself),
- the MobileNetV2/V3 baselines at the budget, and the best drawn architecture against them (sign test + Welch).

    python benchmarks/bench_search_ranking.py --budget 100MFLOPs --epochs 6 --train-images 5000 \
        --val-images 1000 --data PATH --space small32-v3 [--archs 8] [--train-seeds 2] [--shard 0/2 --threads 1]
        [--write]

`--shard K/N` trains only every N-th (architecture, seed) job starting at K, so N processes share the cores and
the cache; the report is printed once every job is in the cache.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_search import cache_path, mean_sd, seed_test, sign_test, store_dir, train_cached
from bench_supernet_ranking import spread_archs
from scipy import stats

import search_spaces as ss
from nas.io import results_dir
from nas.search.latency import latency_predictor
from nas.search.plan import plan
from nas.search.prepare import prepare
from nas.search.request import SearchRequest
from nas.search.scoring import build_scorer
from nas.supernet import dataset_fingerprint
from nas.train import TrainRecipe
from search_spaces.presets import width_scaled_baselines


def tau_rho(x, y) -> str:
    tau, p_tau = stats.kendalltau(x, y)
    rho, _ = stats.spearmanr(x, y)
    return f"{tau:+.2f} (p = {p_tau:.2g}) | {rho:+.2f}"


def main() -> None:
    from nas.memory import keep_heap

    keep_heap()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="100MFLOPs")
    ap.add_argument("--trials", type=int, default=60,
                    help="trials per sampler and seed of the bench_search run whose stand-alone cache is shared")
    ap.add_argument("--epochs", type=int, default=10, help="stand-alone training epochs (bench_search's --epochs)")
    ap.add_argument("--train-seeds", type=int, default=2, help="stand-alone training seeds per architecture")
    ap.add_argument("--archs", type=int, default=8, help="architectures to draw, one per equal MAC bin")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    ap.add_argument("--train-images", type=int, default=None, metavar="N")
    ap.add_argument("--val-images", type=int, default=None, metavar="N")
    ap.add_argument("--seed", type=int, default=0, help="supernet seed, first training seed and the draw's seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shard", default="0/1", metavar="K/N", help="train only jobs K, K+N, K+2N, ... (default all)")
    ap.add_argument("--extra", action="append", default=[], metavar="ARCH",
                    help="also train this architecture (string; repeatable), e.g. a search's pick, shown with the "
                         "baselines and left out of the rank correlations")
    ap.add_argument("--out", default=str(results_dir()))
    ap.add_argument("--write", action="store_true", help="write benchmarks/RESULTS_search_ranking_<data>.md")
    args = ap.parse_args()
    try:
        k_shard, n_shard = (int(v) for v in args.shard.split("/"))
        if not 0 <= k_shard < n_shard:
            raise ValueError
    except ValueError:
        ap.error(f"--shard: expected K/N with 0 <= K < N, got {args.shard!r}")
    if args.archs < 3:
        ap.error(f"--archs: expected at least 3 (rank correlations), got {args.archs}")
    if args.train_seeds < 1:
        ap.error(f"--train-seeds: expected at least 1, got {args.train_seeds}")
    try:  # before the supernet loads, so a typo costs nothing
        extra = {f"extra {a.hash()[:8]}": a for a in map(ss.decode, args.extra)}
    except ValueError as e:
        ap.error(f"--extra: not an architecture string ({e})")

    request = SearchRequest(budget=args.budget, data=args.data, space=args.space, seed=args.seed, out=args.out,
                            threads=args.threads, train_images=args.train_images, val_images=args.val_images)
    search = plan(request)
    limits = search.study.limits
    prepared = prepare(search.data, search.space, search.budgets, print)
    space = prepared.space
    predictor = latency_predictor(search.latency, space, print)
    evaluator = build_scorer(search.supernet, prepared.data, space, predictor.predict_ms, search.backend, print)
    data = evaluator.subnet.data
    # bench_search's folder for these arguments, so both benchmarks share one cache of trained networks
    cache = store_dir(args, space, evaluator.supernet_key) / "standalone" / dataset_fingerprint(data.splits)["sha256"]
    lo, hi = ss.count_macs(space.smallest()), limits.macs
    # one draw per MAC bin, each with its own bias toward the largest choices
    drawn = spread_archs(space, args.archs, lo, hi, args.seed,
                         lambda rng: space.random_arch(rng, toward_largest=rng.random()))
    rows = []
    for arch in drawn:
        score = evaluator(arch)
        rows.append({"name": f"{arch.hash()[:8]}", "arch": str(arch), "macs": ss.count_macs(arch),
                     "latency_ms": score["latency_ms"], "score": score["val_acc"]})
    chosen = pd.DataFrame(rows)
    baselines = width_scaled_baselines(limits.macs, space.largest())
    references = baselines | extra
    archs = dict(zip(chosen["name"], drawn, strict=True)) | references

    seeds = [args.seed + k for k in range(args.train_seeds)]
    jobs = [(name, sd) for name in archs for sd in seeds]
    done: dict = {}
    for i, (name, sd) in enumerate(jobs):
        recipe = TrainRecipe(epochs=args.epochs, seed=sd, threads=args.threads)
        cached = cache_path(archs[name], recipe, cache).exists()
        if cached or i % n_shard == k_shard:
            t = time.perf_counter()
            done[name, sd] = train_cached(archs[name], recipe, data, cache)
            print(f"[{i + 1}/{len(jobs)}] {name} seed {sd}: test {done[name, sd]['test_acc']:.4f}"
                  + (" (cached)" if cached else f" ({time.perf_counter() - t:.0f} s)"), flush=True)
    if len(done) < len(jobs):
        print(f"shard {args.shard} done; {len(jobs) - len(done)} jobs belong to other shards: run again without "
              "--shard when they have finished, for the report")
        return

    def accs(name: str, field: str) -> list[float]:
        return [done[name, sd][field] for sd in seeds]

    def right(name: str) -> np.ndarray:
        return np.concatenate([done[name, sd]["test_right"] for sd in seeds])

    chosen["sa_val"] = [statistics.mean(accs(n, "val_acc")) for n in chosen["name"]]
    chosen["sa_test"] = [statistics.mean(accs(n, "test_acc")) for n in chosen["name"]]
    lines = ["# Does the search's supernet rank networks of the whole budget as stand-alone training does?", "",
             f"`python benchmarks/bench_search_ranking.py --budget {args.budget} --epochs {args.epochs} "
             f"--train-seeds {args.train_seeds} --archs {args.archs}"
             + (f" --train-images {args.train_images}" if args.train_images else "")
             + (f" --val-images {args.val_images}" if args.val_images else "")
             + f" --data {args.data} --space {args.space}"
             + "".join(f" --extra '{a}'" for a in args.extra) + "`", "",
             f"Supernet {evaluator.supernet_key} (the one `nas search` and bench_search use for these arguments). "
             f"{len(chosen)} architectures of {space.name} drawn over {lo / 1e6:.1f}..{hi / 1e6:.1f}M MACs, one per "
             f"equal MAC bin (seed {args.seed}; each choice at its maximum with a probability drawn uniformly per "
             "architecture); trial score = the sub-network's accuracy on the "
             f"{len(data.splits.val)} val images, as in a search. Stand-alone: {args.epochs} epochs from scratch "
             f"(bench_search's recipe), seeds {seeds}, mean ± sd; {len(data.splits.test)} test images.", "",
             "| architecture | MMACs | predicted ms | trial score (supernet val acc) | stand-alone val acc | "
             "stand-alone test acc | per-seed test |", "|---|---|---|---|---|---|---|"]
    for _, r in chosen.sort_values("macs").iterrows():
        lines.append(f"| {r['name']} | {r['macs'] / 1e6:.1f} | {r['latency_ms']:.3f} | {r['score']:.4f} | "
                     f"{mean_sd(accs(r['name'], 'val_acc'))} | {mean_sd(accs(r['name'], 'test_acc'))} | "
                     + " ".join(f"{v:.4f}" for v in accs(r["name"], "test_acc")) + " |")
    for name, arch in references.items():
        score = f"{evaluator(arch)['val_acc']:.4f}" if space.contains(arch) else "-"
        lines.append(f"| {name}{' (baseline)' * (name in baselines)} | {ss.count_macs(arch) / 1e6:.1f} | "
                     f"{predictor.predict_ms(arch):.3f} | {score} | {mean_sd(accs(name, 'val_acc'))} | "
                     f"{mean_sd(accs(name, 'test_acc'))} | "
                     + " ".join(f"{v:.4f}" for v in accs(name, "test_acc")) + " |")
    lines += ["", "| rank correlation over the drawn architectures | Kendall tau (p) | Spearman rho |", "|---|---|---|",
              f"| trial score vs stand-alone val acc | {tau_rho(chosen['score'], chosen['sa_val'])} |",
              f"| trial score vs stand-alone test acc | {tau_rho(chosen['score'], chosen['sa_test'])} |",
              f"| MACs vs stand-alone test acc | {tau_rho(chosen['macs'], chosen['sa_test'])} |",
              f"| MACs vs trial score | {tau_rho(chosen['macs'], chosen['score'])} |"]
    if len(seeds) > 1:
        first, second = ([done[n, sd]["test_acc"] for n in chosen["name"]] for sd in seeds[:2])
        lines.append(f"| stand-alone test acc, seed {seeds[0]} vs seed {seeds[1]} (the ceiling) | "
                     f"{tau_rho(first, second)} |")
        sd_mean = statistics.mean(statistics.stdev(accs(n, "test_acc")) for n in chosen["name"])
        lines += ["", f"Stand-alone test accuracy spans {chosen['sa_test'].max() - chosen['sa_test'].min():.4f} over "
                  f"the drawn architectures; the mean seed-to-seed sd is {sd_mean:.4f}."]
    best = chosen.loc[chosen["sa_test"].idxmax(), "name"]
    lines += ["", f"The best drawn architecture by stand-alone test accuracy ({best}; picked after seeing the test "
              "set, so what a perfect proxy could have found among these, not a search result) against each "
              "baseline (test images only it gets right / only the baseline gets right, pooled over seeds, sign "
              "test; difference of mean test accuracy, Welch):", ""]
    lines += [f"- vs {name}: {sign_test(right(best), right(name))}; "
              f"{seed_test(accs(best, 'test_acc'), accs(name, 'test_acc'))}" for name in baselines]
    lines += ["", "Architectures:", ""] + [f"- {r['name']}: `{r['arch']}`" for _, r in chosen.iterrows()]
    lines += [f"- {name}: `{arch}`" for name, arch in extra.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        name = Path(args.data).name.replace("-", "_")
        Path(__file__).with_name(f"RESULTS_search_ranking_{name}.md").write_text(report)


if __name__ == "__main__":
    main()
