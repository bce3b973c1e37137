"""The `nas` command line. Each command group lives in its own `nas/commands/<name>.py` with `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys

# OpenMP's wait policy is left at libgomp's default (spin briefly, then sleep). PASSIVE (sleep at once) helps only
# when another busy process shares the cores, and costs a run that has them to itself: 2-core AMD VM, 2026-12-03,
# the supernet's largest network forward + backward alone 1153 ms default vs 2031 ms PASSIVE; with a second such
# process running, 4196 vs 1864 ms. Set OMP_WAIT_POLICY=PASSIVE yourself on a shared machine.

# Modules under nas.commands that each define `register(subparsers)`; add one line per command group.
COMMAND_MODULES = ["space", "search", "profile", "latency", "finalize", "train"]


def build_parser() -> argparse.ArgumentParser:
    from nas import __version__

    parser = argparse.ArgumentParser(prog="nas", description="Hardware-aware neural architecture search.")
    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nas.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nas` console script; user errors print one clear line and exit with status 2."""
    from nas.memory import keep_heap

    keep_heap()  # training steps reuse their activation buffers instead of page-faulting them in each time
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted (completed work is saved; rerun with --resume where supported)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
