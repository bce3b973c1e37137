"""Train the supernet a `nas search` request uses and store it with the package (`nas/supernet/weights/`).

    python tools/pretrain_supernet.py                      # the default search: --budget 100MFLOPs, digits

It trains with `nas` itself (space, data, recipe and seed exactly as `nas search` builds them, the supernet cached
under `--out`/supernets, so a finished search's cache is reused), checks that the stored float16 copy scores its
probe sub-networks as the trained one does, and writes `<key>.safetensors` + `<key>.json`. Re-run it whenever
`tests/supernet/test_pretrained.py` says the packaged supernet no longer matches the default search's key.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import search_spaces as ss
from nas.search.plan import plan
from nas.search.prepare import prepare
from nas.search.request import SearchRequest
from nas.supernet import SubnetEvaluator, Supernet, train_supernet
from nas.supernet import pretrained as pt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="100MFLOPs")
    ap.add_argument("--space", default=ss.DEFAULT_SPACE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results", help="run folder root (its supernets/ cache is reused)")
    ap.add_argument("--dest", default=str(pt.PACKAGED), help="where the pretrained files go")
    args = ap.parse_args()

    request = SearchRequest(budget=args.budget, space=args.space, seed=args.seed, out=args.out)
    budget = ss.parse_budget(args.budget)
    if budget.kind != "macs":
        ap.error(f"--budget: expected a FLOPs/MACs budget such as 100MFLOPs, got {args.budget!r}")
    search = plan(request)
    prepared = prepare(search.data, search.space, search.budgets, print)
    data, space = prepared.data, prepared.space
    recipe = search.supernet.recipe
    t0 = time.perf_counter()
    run = train_supernet(space, data, recipe, seed=args.seed, root=Path(args.out) / "supernets", pretrained=None)
    print(f"supernet {run.key}: {run.epochs_done} epochs in {run.path} "
          f"({sum(h['wall_s'] for h in run.history):.0f} s of epochs; {time.perf_counter() - t0:.0f} s this call)")

    meta = {"key": run.key, "epochs": run.epochs_done, "history": run.history, "request": {
        "budget": args.budget, "space": args.space, "data": request.data, "seed": args.seed},
        "recipe": asdict(recipe), "command": "python tools/pretrain_supernet.py"}
    weights = pt.save(run.supernet, meta, args.dest)

    # the stored copy must score as the trained supernet does (float16 weights, same batch-norm recalibration)
    copy = Supernet(run.supernet.space)
    copy.load_state_dict(pt.load_state(weights, copy.state_dict())["model"])
    archs = [space.largest(), space.smallest()] + ss.sample(space, budget, n=6, seed=args.seed)
    for name, net in (("trained", run.supernet), ("stored", copy)):
        ev = SubnetEvaluator(net.eval(), data, "val", calib_images=recipe.calib_images, seed=args.seed)
        print(f"{name:>8}: val accuracy of largest, smallest, 6 sampled: " + " ".join(f"{ev(a):.4f}" for a in archs))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {weights.with_suffix('.json')}")


if __name__ == "__main__":
    main()
