"""Search quality and scaling: TPE vs random search (hypervolume), the searched network (chosen as `nas search`
chooses: --verify candidates fine-tuned, the best wins) vs MobileNetV2/V3 width-scaled to the same MAC budget and to
the searched network's measured latency (stand-alone training, same recipe, measured latency on our kernels), and
Ray trials per minute with 1 and 2 workers.

    python benchmarks/bench_search.py [--budget 100MFLOPs] [--trials 60] [--seeds 3] [--epochs 10]
        [--train-seeds 3 | --cv 5] [--verify 3] [--data PATH]
        [--no-ray | --ray-only | --equal-latency-only ARCH] [--write]

Prints a Markdown report and writes it to benchmarks/RESULTS_search.md (with --write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import search_spaces as ss
from nas.backend import CPU
from nas.io import results_dir
from nas.search.latency import latency_predictor, measure_all, measure_ms
from nas.search.pareto import hypervolume
from nas.search.plan import plan
from nas.search.prepare import prepare
from nas.search.report import choose, trials_frame
from nas.search.request import SearchRequest
from nas.search.runner import SearchSettings, run_optuna, run_ray, study_exists
from nas.search.scoring import build_scorer
from nas.search.verify import VERIFY_CANDIDATES, pick_candidates, verify
from nas.supernet import dataset_fingerprint
from search_spaces.presets import width_scaled_baselines


def search_once(space, limits, evaluator, predictor, sampler, trials, seed, store: Path) -> tuple:
    """One study, kept in `store` and resumed: a killed benchmark rerun with the same --out repeats no trial.
    The wall time is the study's own, first trial start to last trial end, so a resumed study reports it too."""
    store.mkdir(parents=True, exist_ok=True)
    s = SearchSettings(space=space, limits=limits, trials=trials, sampler=sampler, seed=seed,
                       study_name=f"bench-{sampler}-{seed}", storage=f"sqlite:///{store}/{sampler}-{seed}.db")
    study = run_optuna(s, evaluator, predictor.predict_ms, resume=study_exists(s.storage, s.study_name))
    done = [t for t in study.trials if t.datetime_complete is not None and t.values is not None]
    wall = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return trials_frame(study, s, predictor.predict_ms), wall


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def sign_test(right, first_right) -> str:
    """The test images only `right` gets right / only `first_right` gets right, with an exact two-sided sign
    test over them (the images both or neither get right say nothing about which is better)."""
    from scipy.stats import binomtest

    a, b = int((right & ~first_right).sum()), int((first_right & ~right).sum())
    return f"{a} / {b} (p = {binomtest(a, a + b).pvalue:.2g})" if a + b else "0 / 0"


def seed_test(accs: list[float], first_accs: list[float]) -> str:
    """The difference of mean test accuracy over training seeds, with Welch's two-sided t-test over the per-seed
    accuracies. The sign test pools the images of all seeds and so leaves the seed-to-seed spread out (here often as
    large as the gap between networks); this one counts it, so it is the stricter of the two."""
    import statistics

    from scipy.stats import ttest_ind

    d = statistics.mean(accs) - statistics.mean(first_accs)
    if min(len(accs), len(first_accs)) < 2:
        return f"{d:+.4f} (1 seed)"
    return f"{d:+.4f} (Welch p = {ttest_ind(accs, first_accs, equal_var=False).pvalue:.2g})"


def cross_table(ours: list[str], baselines, right: dict, tests: dict, pooled: str) -> list[str]:
    """Each of `ours` against each baseline: the sign test over the test images (`right`, pooled over `pooled`),
    then the difference of mean test accuracy with Welch's t-test (`tests`, one accuracy per seed or fold)."""
    lines = ["", "Each searched network against each baseline (test images only the searched one gets right / only "
             f"the baseline gets right, {pooled}; exact sign test; then the difference of mean test accuracy over "
             "seeds or folds, Welch's t-test):", "",
             "| searched | " + " | ".join(baselines) + " |", "|---|" + "---|" * len(baselines)]
    for name in ours:
        lines.append(f"| {name} | " + " | ".join(f"{sign_test(right[name], right[b])}; "
                                                f"{seed_test(tests[name], tests[b])}" for b in baselines) + " |")
    return lines


def store_dir(args, space: ss.SearchSpace, supernet_key: str) -> Path:
    """The folder of this benchmark's studies, verify fine-tunes and trained networks, keyed by what changes their
    trials (so a rerun resumes them, and bench_search_ranking.py shares the trained networks)."""
    key = "-".join([space.name, Path(args.data).name, args.budget, f"tr{args.train_images}", f"va{args.val_images}",
                    f"t{args.trials}", supernet_key])
    return Path(args.out) / "bench-search" / key


def cache_path(arch: ss.Arch, recipe, cache: Path, tag: str = "") -> Path:
    """Where `train_cached` keeps `arch` trained with `recipe` in the folder `cache`."""
    from nas.train import recipe_key

    return cache / f"{tag}{arch.hash()}-{recipe_key(recipe)}.npz"


def train_cached(arch: ss.Arch, recipe, data, cache: Path | None, init=None, tag: str = "", backend=CPU) -> dict:
    """Train `arch` from scratch with `recipe`; its metrics with the per-image test results ("test_right"). With
    a `cache` folder (one per data) the result is kept there (written atomically, keyed by architecture and
    recipe), so a killed benchmark started again trains only what it had not finished, and more seeds can be added
    to a finished one. `init` (a function returning the starting model) trains from given weights instead; `tag`
    then names where they come from in the cache key. `backend` is where it trains (not part of the cache key)."""
    import io
    import json
    from dataclasses import asdict

    import numpy as np

    from nas.io import write_atomic
    from nas.train import predictions, train_standalone

    path = None if cache is None else cache_path(arch, recipe, cache, tag)
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as f:
            metrics = json.loads(str(f["metrics"]))
            metrics["test_right"] = f["test_right"]
        return metrics
    model, metrics = train_standalone(arch, data, recipe, init=None if init is None else init(), backend=backend)
    xs, ys = data.tensors("test", arch.resolution)
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    metrics["test_right"] = (predictions(model, xs) == ys).numpy()
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, test_right=metrics["test_right"], recipe=json.dumps(asdict(recipe)), arch=str(arch),
                 metrics=json.dumps({k: v for k, v in metrics.items() if k != "test_right"}))
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return metrics


def standalone_table(title: str, contenders: dict, measured: dict, args, data, trained: dict) -> list[str]:
    """Train every contender from scratch with one recipe over several seeds; a Markdown table. `trained` keeps
    the metrics and the per-image test results by (architecture, seed), so a network in two tables (the searched
    one) is trained once, and `trained["cache"]` (a folder, optional) keeps them across runs. Against the first
    contender: the test images only one of the two gets right, over all seeds, with an exact two-sided sign test,
    and the difference of mean test accuracy with Welch's t-test over the seeds. `trained["right", name]` keeps each
    contender's per-image results, pooled over the seeds, and `trained["tests", name]` its test accuracy per seed."""
    import numpy as np

    from nas.train import TrainRecipe

    seeds = [args.seed + k for k in range(args.train_seeds)]
    lines = [f"{title} ({args.epochs} epochs from scratch, SGD, cosine; seeds {seeds}; mean ± sd)", "",
             "| network | MMACs | Mparams | val acc | test acc | per-seed val | only this right / only first right "
             "(sign test p) | test acc - first's (over seeds, Welch p) | measured int8 latency (kernels, together: "
             "p10 of 5 round-robin passes x 9) | train time "
             "per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first_right = first_tests = None
    for name, arch in contenders.items():
        vals, tests, secs, right = [], [], [], []
        for sd in seeds:
            if (str(arch), sd) not in trained:
                recipe = TrainRecipe(epochs=args.epochs, seed=sd, threads=args.threads)
                trained[str(arch), sd] = train_cached(arch, recipe, data, trained.get("cache"), backend=args.backend)
            m = trained[str(arch), sd]
            vals.append(m["val_acc"])
            tests.append(m["test_acc"])
            secs.append(m["wall_s"])
            right.append(m["test_right"])
        right = np.concatenate(right)
        trained["right", name], trained["tests", name] = right, tests
        if first_right is None:
            first_right, first_tests, versus, by_seed = right, tests, "-", "-"
        else:
            versus, by_seed = sign_test(right, first_right), seed_test(tests, first_tests)
        c = ss.count(arch)
        lines.append(f"| {name} | {c.mmacs:.1f} | {c.mparams:.3f} | {mean_sd(vals)} | {mean_sd(tests)} | "
                     + " ".join(f"{v:.4f}" for v in vals)
                     + f" | {versus} | {by_seed} | {measured[name]:.3f} ms | {statistics.mean(secs):.0f} s |")
        print(lines[-1], flush=True)
    return lines


def cv_table(title: str, contenders: dict, measured: dict, args, data, trained: dict) -> list[str]:
    """K-fold cross-validation over the whole (non-official-test) dataset: every contender is trained with one
    recipe on the same stratified folds (10% of the rest for validation), so each image is a test image exactly
    once. Reports the pooled test accuracy over all images and, against the first contender, the images only one
    of the two gets right with an exact two-sided sign test. `trained` caches per-image results by network."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from nas.data import Splits, TensorSplits, load_dataset, split_indices
    from nas.train import TrainRecipe, predictions, train_standalone

    dataset = load_dataset(args.data)
    n = len(dataset.y)
    seed = args.seed if args.cv_seed is None else args.cv_seed
    folds = list(StratifiedKFold(args.cv, shuffle=True, random_state=seed).split(np.zeros(n), dataset.y))
    lines = [f"{title} ({args.cv}-fold cross-validation over all {n} images, {args.epochs} epochs from scratch, SGD, "
             f"cosine, fold and training seed {seed}; pooled test accuracy)", "",
             "| network | MMACs | Mparams | pooled test acc (errors) | per-fold test acc | only this right / only "
             "first right (sign test p) | measured int8 latency | train time per fold |",
             "|---|---|---|---|---|---|---|---|"]
    fold_data = []  # (test indices, the fold's splits), shared by every contender
    for f, (rest, test) in enumerate(folds):
        tr, va, _ = split_indices(dataset.y[rest], seed + f, 0.1, 0.0)
        fold_data.append((test, TensorSplits(Splits(train=dataset.subset(rest[tr]), val=dataset.subset(rest[va]),
                                                    test=dataset.subset(test), seed=seed + f, official_test=False))))
    results = {}
    for name, arch in contenders.items():
        key = ("cv", str(arch))
        if key not in trained:
            right, per_fold, secs = np.zeros(n, bool), [], []
            for test, data_f in fold_data:
                model, m = train_standalone(arch, data_f, TrainRecipe(epochs=args.epochs, seed=seed,
                                                                      threads=args.threads), backend=args.backend)
                xs, ys = data_f.tensors("test", arch.resolution)
                right[test] = (predictions(model, xs) == ys).numpy()
                per_fold.append(m["test_acc"])
                secs.append(m["wall_s"])
            trained[key] = (right, per_fold, statistics.mean(secs))
        results[name] = trained[key]
    first = next(iter(results))
    for name, (right, per_fold, secs) in results.items():
        c = ss.count(contenders[name])
        trained["right", name], trained["tests", name] = right, per_fold
        versus = "-" if name == first else sign_test(right, results[first][0])
        lines.append(f"| {name} | {c.mmacs:.1f} | {c.mparams:.3f} | {right.mean():.4f} ({int((~right).sum())}) | "
                     + " ".join(f"{v:.4f}" for v in per_fold) + f" | {versus} | {measured[name]:.3f} ms | "
                     f"{secs:.0f} s |")
        print(lines[-1], flush=True)
    return lines


def delivered_table(searched: dict, costs: dict, baselines: dict, measured: dict, args, request, evaluator,
                    trained: dict) -> list[str]:
    """Section 2b: the searched networks as `nas search` delivers them (fine-tuned from their supernet weights by
    the verify/finalize recipe) against the baselines trained from scratch for --matched-epochs epochs. `costs`
    holds what each searched network cost to make, in training MACs per training image (`pipeline_macs`), so
    the report shows whether the baselines got at least as much. Fine-tune seed k is paired with baseline seed k;
    the supernet itself is the one trained with --seed."""
    from dataclasses import replace

    import numpy as np

    from nas.train import TrainRecipe

    seeds = [args.seed + k for k in range(args.matched_seeds)]
    data, cache = evaluator.subnet.data, trained.get("cache")
    ft = plan(request).finetune
    enough = all(ss.count_macs(b) * args.matched_epochs >= max(costs.values()) for b in baselines.values())
    lines = ["", f"## The delivered network vs baselines given at least its training compute (seeds {seeds}; "
             "mean ± sd)", "",
             f"The searched networks as `nas search` delivers them: their supernet weights (the supernet trained "
             f"once, seed {args.seed}), fine-tuned {ft.epochs} epochs (the verify/finalize recipe, fine-tune seeds "
             f"{seeds}). The baselines" + (f" (and the first {args.matched_standalone} searched network(s), "
             "\"from scratch\")" if args.matched_standalone else "") + " from scratch by the stand-alone recipe "
             f"for {args.matched_epochs} epochs instead of {args.epochs}. Compute in forward MACs per training "
             "image, a training pass counted once and an inference-only pass a third (no backward): for a "
             "searched network, its whole making "
             "(the supernet's training, every sub-network of every sandwich step, expected; the search's trials, "
             "each scoring the val split after recalibrating batch norm; every verify candidate's fine-tune), all "
             "charged to it; for a baseline, its MACs x epochs. "
             + ("Every baseline gets at least the most any searched network cost." if enough else
                "**Some baseline gets less than a searched network cost: raise --matched-epochs.**")
             + " Test images only one of two gets right, seed paired with seed, exact sign test.", "",
             "| network | training | training GMACs per image | val acc | test acc | per-seed test | only this right "
             "/ only first right (sign test p) | test acc - first's (over seeds, Welch p) | measured int8 latency |",
             "|---|---|---|---|---|---|---|---|---|"]

    def scratch(arch: ss.Arch) -> list[dict]:
        return [train_cached(arch, TrainRecipe(epochs=args.matched_epochs, seed=sd, threads=args.threads), data,
                             cache, backend=args.backend) for sd in seeds]

    rows = {}  # name: (how it was trained, training MACs per image, metrics per seed, measured latency)
    for name, arch in searched.items():
        rows[name] = (f"supernet + search + verify ({ft.epochs}-epoch fine-tunes)", costs[name],
                      [train_cached(arch, replace(ft, seed=sd), data, cache, tag=f"ft-{evaluator.supernet_key}-",
                                    init=lambda arch=arch: evaluator.subnet.model(arch), backend=args.backend)
                       for sd in seeds],
                      measured[name])
    # the first --matched-standalone searched networks also by the baselines' own recipe: the same-recipe
    # comparison of the architectures, with training long enough that it is not a race to learn fastest
    for name, arch in list(searched.items())[:args.matched_standalone]:
        rows[f"{name}, from scratch"] = (f"{args.matched_epochs} epochs from scratch",
                                         ss.count_macs(arch) * args.matched_epochs, scratch(arch), measured[name])
    for name, arch in baselines.items():
        rows[name] = (f"{args.matched_epochs} epochs from scratch", ss.count_macs(arch) * args.matched_epochs,
                      scratch(arch), measured[name])
    right = {name: np.concatenate([m["test_right"] for m in ms]) for name, (_, _, ms, _) in rows.items()}
    tests = {name: [m["test_acc"] for m in ms] for name, (_, _, ms, _) in rows.items()}
    first = next(iter(rows))
    for name, (how, macs, ms, ms_lat) in rows.items():
        versus, by_seed = (("-", "-") if name == first else
                           (sign_test(right[name], right[first]), seed_test(tests[name], tests[first])))
        lines.append(f"| {name} | {how} | {macs / 1e9:.2f} | {mean_sd([m['val_acc'] for m in ms])} | "
                     f"{mean_sd(tests[name])} | " + " ".join(f"{t:.4f}" for t in tests[name])
                     + f" | {versus} | {by_seed} | {ms_lat:.3f} ms |")
        print(lines[-1], flush=True)
    ours = [name for name in rows if name not in baselines]
    if len(ours) > 1:
        lines += cross_table(ours, baselines, right, tests, "paired seeds pooled")
    return lines


def pipeline_macs(evaluator, request, trials, verified) -> float:
    """What one `nas search` run cost to deliver its network, in forward MACs per training image, a training pass
    counted once and an inference-only pass (no backward) a third. The supernet's training: per epoch of each
    progressive-shrinking phase its largest network, then (after the first phase) the smallest and the random
    ones of that phase's space (their expected cost, from 300 seeded draws); its per-epoch probes (at most the
    largest, the smallest and two random sub-networks, each recalibrating batch norm and scoring the val split);
    the trials (`trials_frame`; each recalibrates and scores likewise) and the fine-tunes of every verify
    candidate (`verified`)."""
    import random

    from nas.supernet.training import PHASES, phase_space

    sub = evaluator.subnet
    scored = (len(sub.data.splits.val) + len(sub.calib_index)) / len(sub.data.splits.train) / 3
    recipe = plan(request).supernet.recipe
    total = 0.0
    for phase, epochs in zip(PHASES, recipe.epochs, strict=True):
        ps = phase_space(sub.supernet.space, phase)
        rng = random.Random(0)
        rand = statistics.mean(ss.count_macs(ps.random_arch(rng)) for _ in range(300))
        largest, smallest = ss.count_macs(ps.largest()), ss.count_macs(ps.smallest())
        per_step = largest if phase == PHASES[0] else largest + smallest + recipe.random_in(phase) * rand
        total += epochs * (per_step + (largest + smallest + 2 * rand) * scored)
    total += float(trials["macs"].sum()) * scored
    return total + float(verified["macs"].sum()) * plan(request).finetune.epochs


def table(title: str, contenders: dict, measured: dict, args, data, trained: dict) -> list[str]:
    """The stand-alone comparison the flags ask for: K-fold cross-validation (--cv K) or seeds on one split."""
    fn = cv_table if args.cv else standalone_table
    return fn(title, contenders, measured, args, data, trained)


def together(contenders: dict, request) -> dict:
    """Measured int8 latency of every network of a table in one round-robin measurement (the lowest 10th
    percentile over 5 passes of 9 runs, as `nas search` reports the front), so drift on a shared machine moves all
    of them alike. Measured one after the other, one network read 2.34 ms in one table and 1.80 ms in the next;
    measured together, the ratios within a table hold, while the same network can still read 15% apart in two
    tables minutes apart (2.35 vs 2.05 ms, AMD EPYC VM, 2026-12-03)."""
    return dict(zip(contenders, measure_all(list(contenders.values()), request.device, request.threads), strict=True))


def equal_latency(best: ss.Arch, args, request, space, data, trained: dict, name: str = "searched") -> list[str]:
    """Section 3: MobileNetV2/V3 width-scaled to the searched network's measured latency, trained the same way."""
    def ms(arch: ss.Arch) -> float:
        return statistics.median(measure_ms(arch, request.device, request.threads) for _ in range(3))

    searched_ms = statistics.median(measure_ms(best, request.device, request.threads) for _ in range(5))
    baselines = width_scaled_baselines(searched_ms, space.largest(), cost=ms)
    contenders = {name: best, **baselines}
    measured = together(contenders, request)
    return ["", f"Baselines width-scaled (bisection on the width, measured latency) to the measured latency of "
            f"{name}, {searched_ms:.3f} ms (medians of 20 runs; the table's figures are measured together).",
            ""] + table(f"## Stand-alone training, same recipe, baselines at the latency of {name}", contenders,
                        measured, args, data, trained)


def compare(args, request, space, limits, evaluator, predictor, store: Path) -> list[str]:
    """Sections 1 and 2: samplers by hypervolume, then the searched network vs the width-scaled baselines."""
    lines: list[str] = []
    # 1. TPE vs random vs evolution, same evaluator, same number of trials, several seeds
    frames: dict[tuple[str, int], tuple] = {}
    samplers = ("tpe", "random", "evolution")
    for k in range(args.seeds):
        for sampler in samplers:
            frames[sampler, k] = search_once(space, limits, evaluator, predictor, sampler, args.trials,
                                             args.seed + k, store)
    lat_ref = 1.1 * max(f["latency_ms"].max() for f, _ in frames.values())
    hv = {key: hypervolume(df["val_acc"].tolist(), df["latency_ms"].tolist(), 0.0, lat_ref)
          for key, (df, _) in frames.items()}
    lines += ["## Hypervolume of the Pareto front (validation accuracy x predicted latency)", "",
              f"Reference point: accuracy 0, latency {lat_ref:.3f} ms (1.1 x the slowest trial of any run). "
              "Per seed, then mean ± sd.", "",
              "| sampler | " + " | ".join(f"seed {args.seed + k}" for k in range(args.seeds))
              + " | mean ± sd | best val acc (mean) | search wall time (mean) |",
              "|---|" + "---|" * (args.seeds + 3)]
    for sampler in samplers:
        vals = [hv[sampler, k] for k in range(args.seeds)]
        best = statistics.mean(frames[sampler, k][0]["val_acc"].max() for k in range(args.seeds))
        secs = statistics.mean(frames[sampler, k][1] for k in range(args.seeds))
        lines.append(f"| {sampler} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | {mean_sd(vals)} | {best:.4f} | {secs:.0f} s |")
    wins = sum(hv["tpe", k] > hv["random", k] for k in range(args.seeds))
    lines += ["", f"TPE's hypervolume beats random search's in {wins} of {args.seeds} seeds.", ""]

    # 2. The searched network vs MobileNetV2/V3 width-scaled to the budget, trained the same way. The searched
    # network is chosen as `nas search` chooses it, among the TPE trials whose predicted latency is within the
    # fastest baseline's measured latency (equal or lower latency by construction of the pick, checked by
    # measurement below): --verify candidates fine-tuned from the supernet, the best fine-tuned val accuracy wins.
    # --compare-seeds K does this for the first K search seeds, so the claim covers the search's own variance
    data = evaluator.subnet.data
    baselines = width_scaled_baselines(limits.macs, space.largest())
    target = min(together(baselines, request).values())
    searched, supernet_picks, candidates, costs = {}, {}, [], {}
    for k in range(args.compare_seeds):
        df = frames["tpe", k][0]
        feasible = df[df["latency_ms"] <= target]
        pool = feasible if len(feasible) else df
        verified, _, _ = verify(pick_candidates(pool, args.verify), evaluator, plan(request).finetune,
                                plan(request).backend, store / f"verify-tpe-{k}", print)
        pick = pool[pool["trial"] == int(verified.loc[verified["chosen"], "trial"].iloc[0])].iloc[0]
        name = f"searched (TPE, seed {args.seed + k})"
        searched[name] = ss.decode(pick["arch"])
        if args.matched_epochs:  # only that section reports it
            costs[name] = pipeline_macs(evaluator, request, df, verified)
        supernet_pick = ss.decode(choose(pool)["arch"])
        if supernet_pick != searched[name] and args.supernet_pick:
            # what the search would have chosen without verification
            supernet_picks[f"supernet's pick (TPE, seed {args.seed + k}, no verify)"] = supernet_pick
        candidates.append((args.seed + k, len(feasible), len(df), verified))
    contenders = {**searched, **baselines, **supernet_picks}
    measured = together(contenders, request)
    lines += [f"Baselines measured first; the searched network is chosen among the TPE trials with predicted "
              f"latency <= {target:.3f} ms (the fastest baseline's measured latency) as `nas search` chooses: the "
              f"most accurate trial of each of {args.verify} equal bands of predicted latency fine-tuned from the "
              "supernet (the finalize recipe), the best fine-tuned val accuracy wins. The latencies in the table "
              f"are measured again, all {len(contenders)} networks together.", "",
              "| search seed | trial | MMACs | predicted ms | supernet val acc | fine-tuned val acc ± se | "
              "fine-tune time | chosen |", "|---|---|---|---|---|---|---|---|"]
    for seed, n_feasible, n, verified in candidates:
        for _, r in verified.iterrows():
            lines.append(f"| {seed} ({n_feasible} of {n} trials qualified) | {r['trial']} | {r['macs'] / 1e6:.1f} | "
                         f"{r['latency_ms']:.3f} | {r['supernet_val_acc']:.4f} | {r['verified_val_acc']:.4f} ± "
                         f"{r['val_se']:.4f} | "
                         f"{r['finetune_seconds']:.0f} s | {'yes' * bool(r['chosen'])} |")
    lines.append("")
    # one folder per training and validation data (the splits also depend on --seed, which the store's key leaves
    # out: its studies are named by seed)
    fingerprint = dataset_fingerprint(data.splits)["sha256"]
    trained: dict = {"cache": None if args.cv else store / "standalone" / fingerprint}
    lines += table(f"## Stand-alone training, same recipe, baselines at the {args.budget} budget",
                   contenders, measured, args, data, trained)
    if len(searched) > 1:  # every searched network against every baseline, not only the first
        names = [*searched, *baselines]
        lines += cross_table(list(searched), baselines, {n: trained["right", n] for n in names},
                             {n: trained["tests", n] for n in names}, "pooled over the seeds or folds")
    if args.matched_epochs:
        lines += delivered_table(searched, costs, baselines, measured, args, request, evaluator, trained)
    lines += [""] + [f"Searched architecture, {name}: `{arch}`" for name, arch in searched.items()]
    if args.equal_latency:  # each searched network against the baselines scaled to its own latency
        for name, arch in searched.items():
            lines += equal_latency(arch, args, request, space, data, trained, name)
    return lines


def main() -> None:
    from nas.memory import keep_heap

    keep_heap()  # as the nas command does: training buffers stay in the heap
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="100MFLOPs")
    ap.add_argument("--trials", type=int, default=60, help="trials per sampler and seed (the default run's count)")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per sampler (same supernet)")
    ap.add_argument("--epochs", type=int, default=10, help="stand-alone training epochs (same for every network)")
    ap.add_argument("--train-seeds", type=int, default=3, help="stand-alone training seeds per network")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="compare the networks by K-fold cross-validation over the whole dataset (every image tested "
                         "once, paired sign test) instead of --train-seeds runs on one split")
    ap.add_argument("--cv-seed", type=int, default=None,
                    help="seed of the folds and of training with --cv (default --seed): a replicate with the same "
                         "search and supernet")
    ap.add_argument("--verify", type=int, default=VERIFY_CANDIDATES, metavar="K",
                    help="candidates fine-tuned before choosing the searched network, as `nas search --verify K`")
    ap.add_argument("--compare-seeds", type=int, default=1, metavar="K",
                    help="train the searched networks of the first K TPE search seeds stand-alone (default 1: seed "
                         "--seed only), each compared with every baseline")
    ap.add_argument("--no-supernet-pick", dest="supernet_pick", action="store_false",
                    help="do not train the supernet's own pick (the network chosen without --verify) stand-alone")
    ap.add_argument("--no-equal-latency", dest="equal_latency", action="store_false",
                    help="skip the baselines width-scaled to each searched network's latency (section 3)")
    ap.add_argument("--matched-epochs", type=int, default=0, metavar="E",
                    help="also compare the searched networks as delivered (fine-tuned from the supernet) with the "
                         "baselines trained E epochs from scratch; the report says whether E covers what the "
                         "search cost (supernet, trials, verify fine-tunes)")
    ap.add_argument("--matched-seeds", type=int, default=2, metavar="N",
                    help="fine-tune and baseline training seeds of the --matched-epochs section")
    ap.add_argument("--matched-standalone", type=int, default=0, metavar="K",
                    help="in the --matched-epochs section, also train the first K searched networks from scratch for "
                         "E epochs, the baselines' recipe")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    ap.add_argument("--train-images", type=int, default=None, metavar="N",
                    help="a stratified subset of N training images (as `nas search --train-images`)")
    ap.add_argument("--val-images", type=int, default=None, metavar="N",
                    help="a stratified subset of N validation images that score the trials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-trials", type=int, default=8)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--ray-only", action="store_true", help="only the Ray trials-per-minute section")
    ap.add_argument("--equal-latency-only", metavar="ARCH",
                    help="only section 3, for this searched architecture (string), e.g. from an earlier report")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (1 on shared cores)")
    ap.add_argument("--train-device", default="cpu", metavar="auto|cpu|cuda|cuda:N",
                    help="where the supernet, fine-tunes and stand-alone training run (default cpu)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--supernet-epochs", default=None, metavar="A,B,C,D",
                    help="supernet epochs per phase (default: the default run's recipe)")
    ap.add_argument("--out", default=str(results_dir()))
    ap.add_argument("--write", action="store_true",
                    help="write benchmarks/RESULTS_search.md (RESULTS_search_<data>.md for other data than digits)")
    args = ap.parse_args()
    if args.cv and (args.train_images or args.val_images):
        ap.error("--cv folds the whole dataset: --train-images / --val-images do not apply")
    if args.cv == 1 or args.cv < 0:
        ap.error(f"--cv: expected 0 (off) or at least 2 folds, got {args.cv}")
    if args.cv_seed is not None and not args.cv:
        ap.error("--cv-seed: only meaningful with --cv K")
    if args.matched_epochs < 0:
        ap.error(f"--matched-epochs: expected 0 (off) or a number of epochs, got {args.matched_epochs}")
    if args.matched_seeds < 1:
        ap.error(f"--matched-seeds: expected at least 1, got {args.matched_seeds}")
    if args.matched_standalone and not args.matched_epochs:
        ap.error("--matched-standalone: only meaningful with --matched-epochs E")
    if not 0 <= args.matched_standalone <= args.compare_seeds:
        ap.error(f"--matched-standalone: expected 0..--compare-seeds ({args.compare_seeds}), got "
                 f"{args.matched_standalone}")
    if not 1 <= args.compare_seeds <= args.seeds:
        ap.error(f"--compare-seeds: expected 1..--seeds ({args.seeds}), got {args.compare_seeds}")

    request = SearchRequest(budget=args.budget, data=args.data, space=args.space, seed=args.seed, out=args.out,
                            threads=args.threads, train_images=args.train_images, val_images=args.val_images,
                            train_device=args.train_device, precision=args.precision,
                            supernet_epochs=None if args.supernet_epochs is None else
                            tuple(int(e) for e in args.supernet_epochs.split(",")))
    search = plan(request)
    args.backend = search.backend
    limits = search.study.limits
    lines = [f"# Search benchmark ({args.data}, budget {args.budget}, {args.trials} trials per sampler and seed)",
             "", f"`python benchmarks/bench_search.py --budget {args.budget} --trials {args.trials} --seeds "
             f"{args.seeds} --epochs {args.epochs} --train-seeds {args.train_seeds}"
             + (f" --cv {args.cv}" if args.cv else "") + f" --verify {args.verify}"
             + (f" --compare-seeds {args.compare_seeds}" if args.compare_seeds > 1 else "")
             + (" --no-supernet-pick" if not args.supernet_pick else "")
             + (" --no-equal-latency" if not args.equal_latency else "")
             + (f" --matched-epochs {args.matched_epochs} --matched-seeds {args.matched_seeds}"
                if args.matched_epochs else "")
             + (f" --matched-standalone {args.matched_standalone}" if args.matched_standalone else "")
             + (f" --train-images {args.train_images}" if args.train_images else "")
             + (f" --val-images {args.val_images}" if args.val_images else "")
             + (f" --data {args.data}" if args.data != "digits" else "")
             + (f" --space {args.space}" if args.space != ss.DEFAULT_SPACE else "")
             + (" --no-ray" if args.no_ray else "")
             + (f" --train-device {args.train_device}" if args.train_device != "cpu" else "")
             + (f" --precision {args.precision}" if args.precision != "fp32" else "")
             + (f" --supernet-epochs {args.supernet_epochs}" if args.supernet_epochs else "")
             + f"`; training on {search.backend.to_dict()}; load average at start "
             f"{os.getloadavg()[0]:.1f}.", ""]
    prepared = prepare(search.data, search.space, search.budgets, print)
    data, space = prepared.data, prepared.space
    predictor = latency_predictor(search.latency, space, print)  # profiled before training, as `nas search` does
    t0 = time.perf_counter()
    evaluator = build_scorer(search.supernet, data, space, predictor.predict_ms, search.backend, print)
    supernet_s = time.perf_counter() - t0
    lines += [f"Supernet (the default run's recipe; trained or loaded from cache): {supernet_s:.0f} s. "
              f"Space after trimming to the budget: {space.name}, resolutions {space.resolutions}, "
              f"{ss.count_macs(space.smallest()) / 1e6:.1f}..{ss.count_macs(space.largest()) / 1e6:.1f}M MACs.", ""]

    tmp = tempfile.mkdtemp(prefix="bench-search-")
    if args.equal_latency_only:
        lines += equal_latency(ss.decode(args.equal_latency_only), args, request, space, evaluator.subnet.data, {})
    elif not args.ray_only:
        lines += compare(args, request, space, limits, evaluator, predictor,
                         store_dir(args, space, evaluator.supernet_key))

    # 4. Ray Tune: trials per minute with 1 and 2 workers on the embedded local cluster
    if not args.no_ray and not args.equal_latency_only:
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
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        name = "" if args.data == "digits" else "_" + Path(args.data).name.replace("-", "_")
        Path(__file__).with_name(f"RESULTS_search{name}.md").write_text(report)


if __name__ == "__main__":
    main()
