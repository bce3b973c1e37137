"""The `nas` command line. Each command group lives in its own `nas/commands/<name>.py` with `register()`."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from nas import __version__, cores
from nas.memory import keep_heap

# OpenMP keeps libgomp's default wait policy (fast alone); runs side by side share the cores through nas.cores.

# Modules under nas.commands that each define `register(subparsers)`; add one line per command group.
COMMAND_MODULES = ["space", "search", "profile", "latency", "export", "eval", "bench", "train"]

# The top-level modules of pyproject.toml's `search` extra. The core install loads, evaluates and benchmarks exported
# checkpoints and profiles the kernels without them; what needs one says how to install it, in one line.
SEARCH_EXTRA = ("torch", "optuna", "ray", "sklearn", "scipy", "matplotlib", "onnx", "onnxruntime", "pyarrow")
INSTALL_SEARCH = 'pip install "nas[search]"'


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line naming the flag, exit status 2.

    Values such as `--budget -5M` or `--seed -1` are read as values (then refused by the flag's check with a
    message saying what was expected), not mistaken for unknown options.
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nas", description="Hardware-aware neural architecture search.")
    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nas.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nas` console script; user errors print one clear line and exit with status 2."""
    cores.start()  # start-up is the first window, so the first torch work already runs at the fair thread count
    keep_heap()  # training steps reuse their activation buffers instead of page-faulting them in each time
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except ValueError as exc:  # our user errors: one line naming the flag or file and what was expected
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or written (missing, read-only, full disk)
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"nas {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SEARCH_EXTRA:
            raise
        print(f"nas {args.command}: error: this needs {exc.name}, which is not installed (search, training and "
              f"PyTorch devices are an extra): {INSTALL_SEARCH}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted (completed work is saved; rerun with --resume where supported)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
