"""`nas search`: hardware-aware architecture search under a budget."""

from __future__ import annotations

import argparse

import search_spaces as ss


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search the most accurate architecture that fits a budget")
    p.add_argument("--budget", required=True, help="e.g. 100MFLOPs, 0.1GFLOPs, 2.5Mparams")
    p.add_argument("--space", default=ss.DEFAULT_SPACE, choices=sorted(ss.SPACES))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    space = ss.get_space(args.space)
    budget = ss.parse_budget(args.budget)
    archs = ss.sample(space, budget, n=args.trials, seed=args.seed)
    print(f"{len(archs)} architectures of space {space.name!r} under {budget}:")
    for arch in archs:
        c = ss.count(arch)
        print(f"{c.mmacs:8.2f} MMACs {c.mparams:7.3f} Mparams  {arch}")
    return 0
