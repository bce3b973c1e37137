"""`nas space list | sample | cost`: look at search spaces, draw architectures under a budget, cost one."""

from __future__ import annotations

import argparse
import json

import search_spaces as ss
from nas.checks import arg, budget, phi, positive_int
from nas.commands import flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="inspect search spaces, sample and cost architectures")
    ssub = p.add_subparsers(dest="space_command", required=True, metavar="ACTION")

    q = ssub.add_parser("list", help="list the named search spaces and reference networks")
    q.set_defaults(func=cmd_list)

    q = ssub.add_parser("sample", help="draw architectures that fit a budget")
    flags.add_space(q)
    q.add_argument("--budget", default=None, type=arg(budget), help="e.g. 100MFLOPs, 0.1GFLOPs, 2.5Mparams")
    q.add_argument("-n", type=arg(positive_int, 100_000), default=5, help="how many architectures")
    flags.add_seed(q, help="sampling seed")
    q.add_argument("--json", action="store_true", help="print JSON lines instead of strings")
    q.set_defaults(func=cmd_sample)

    q = ssub.add_parser("cost", help="per-layer MACs/params table of one architecture")
    q.add_argument("arch", help="compact string, JSON, path to a .json file, or a preset name")
    q.set_defaults(func=cmd_cost)


def cmd_list(args: argparse.Namespace) -> int:
    print(f"{'space':<14}{'MMACs min..max':>18}  description")
    for name, space in ss.SPACES.items():
        lo, hi = ss.count_macs(space.smallest()) / 1e6, ss.count_macs(space.largest()) / 1e6
        print(f"{name:<14}{f'{lo:.1f}..{hi:.1f}':>18}  {space.description}")
    print(f"\n{'preset':<20}{'MMACs':>9}{'Mparams':>9}")
    for name in ss.PRESETS:
        c = ss.count(ss.preset(name))
        print(f"{name:<20}{c.mmacs:>9.1f}{c.mparams:>9.3f}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    space = ss.get_space(args.space, phi("--phi", args.space, args.phi))
    budget = ss.parse_budget(args.budget) if args.budget else None
    for arch in ss.sample(space, budget, n=args.n, seed=args.seed):
        c = ss.count(arch)
        if args.json:
            print(json.dumps({"arch": arch.to_dict(), "string": str(arch), "hash": arch.hash(),
                              "macs": c.macs, "params": c.params}))
        else:
            print(f"{c.mmacs:8.2f} MMACs {c.mparams:7.3f} Mparams  {arch}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from nas.kernels.memory import activation_plan

    arch = ss.parse_arch(args.arch)
    mem, layerwise = activation_plan(arch), activation_plan(arch, fused=False)  # the default run fuses blocks
    live = layerwise.live_bytes()  # per layer, so from the layer-by-layer plan
    print(f"arch {arch.hash()}: {arch}\n")
    print(f"{'layer':<20}{'op':<7}{'in':>9}{'out':>9}{'k':>3}{'s':>3}{'act':>7}{'MACs':>14}{'params':>11}"
          f"{'live bytes':>12}")
    for i, layer in enumerate(ss.layers(arch)):
        print(f"{layer.name:<20}{layer.op:<7}{f'{layer.in_hw}x{layer.in_channels}':>9}"
              f"{f'{layer.out_hw}x{layer.out_channels}':>9}{layer.kernel:>3}{layer.stride:>3}{layer.act:>7}"
              f"{layer.macs:>14,}{layer.params:>11,}{live[i + 1]:>12,}")
    c = ss.count(arch)
    print(f"{'total':<58}{c.macs:>14,}{c.params:>11,}")
    print(f"\n{c.mmacs:.2f}M MACs (1 MAC = 1 FLOP), {c.mparams:.3f}M parameters (incl. BN gamma/beta)")
    print(f"peak activation memory on the kernels: {mem.arena_bytes:,} bytes per image (one arena, input and logits "
          f"included, blocks fused where that needs less; {layerwise.arena_bytes:,} layer by layer, "
          f"{layerwise.unplanned_bytes:,} with a buffer per tensor; live bytes: the buffers in use during the layer "
          f"run alone, {max(live):,} at most)")
    return 0
