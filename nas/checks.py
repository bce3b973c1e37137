"""Checks of the values users give us, shared by the CLI (as argparse types) and the Python API.

Each check takes the name to blame (a flag such as ``--seed``, or a field name) and the value, and returns the
value converted, or raises ``ValueError`` with one line: ``--seed: expected a non-negative integer, got '-1'``.
The CLI prints that line and exits with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# a run or study name becomes a folder name: one path component of ordinary characters
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}$")
PRECISIONS = ("fp32", "bf16", "fp16")  # training precisions (`nas.backend`)


def _int(name: str, value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d{1,18}", text):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(text)


def positive_int(name: str, value: Any, maximum: int | None = None, minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (1 by default) and <= `maximum` when given."""
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    what += f" up to {maximum}" if maximum is not None else ""
    v = _int(name, value, what)
    if v < minimum or (maximum is not None and v > maximum):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def non_negative_int(name: str, value: Any, maximum: int | None = None) -> int:
    """`value` as an int >= 0 (and <= `maximum` when given)."""
    what = "a non-negative integer" + (f" up to {maximum}" if maximum is not None else "")
    v = _int(name, value, what)
    if v < 0 or (maximum is not None and v > maximum):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def seed(name: str, value: Any) -> int:
    """A random seed: 0 <= seed < 2**32 (what NumPy and Optuna's samplers accept)."""
    return non_negative_int(name, value, 2**32 - 1)


def finite_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """`value` as a finite float within [low, high] (low excluded with `low_open`)."""
    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        what = "a finite number"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {what}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def plain_name(name: str, value: Any) -> str:
    """A run or study name: one path component (letters, digits and ._+=@-, at most 128 characters)."""
    text = str(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"{name}: expected a plain name (letters, digits and ._+=@-, starting with a letter or "
                         f"digit, at most 128 characters; no '/' or '..'), got {value!r}")
    return text


def output_dir(name: str, value: Any) -> Path:
    """A folder we may create and write into: it is a folder or does not exist yet, and the nearest existing
    folder on its path is writable. Nothing is left behind."""
    path = Path(os.path.expanduser(str(value)))
    if str(value).strip() == "":
        raise ValueError(f"{name}: expected a folder path, got {value!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {str(value)!r} is a file, expected a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{name}: {str(probe)!r} is a file, so {str(value)!r} cannot be a folder")
    try:  # try it: permission bits say nothing for root, nor for read-only or virtual file systems
        os.rmdir(tempfile.mkdtemp(prefix=".nas-write-check-", dir=probe))
    except OSError as exc:
        raise ValueError(f"{name}: cannot write in {str(probe)!r} ({exc.strerror or exc})") from None
    return path


def output_file(name: str, value: Any) -> Path:
    """A file we may (re)write: not a folder, and its folder is (or can be made) writable."""
    path = Path(os.path.expanduser(str(value)))
    if path.is_dir():
        raise ValueError(f"{name}: {str(value)!r} is a folder, expected a file path")
    output_dir(name, path.parent if str(path.parent) else ".")
    return path


def arg(check: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[str], T]:
    """An argparse `type=` from a check: argparse names the flag, the check says what was expected.

    `type=arg(positive_int)` reports `argument --trials: expected a positive integer, got '0'`.
    """

    def parse(text: str) -> T:
        try:
            return check("value", text, *args, **kwargs)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None

    parse.__name__ = check.__name__  # argparse uses it in its own messages
    return parse


def _parsed_by(parse: Callable[[str], Any], name: str, value: Any, prefix: str = "") -> str:
    """`str(value)` if `parse` accepts it; else its error under `name` (less the `prefix` it names the value by)."""
    try:
        parse(str(value))
    except ValueError as exc:
        raise ValueError(f"{name}: {str(exc).removeprefix(prefix)}") from None
    return str(value)


def budget(name: str, value: Any) -> str:
    """A budget such as `100MFLOPs`, `2.5Mparams` or `3ms` (checked by `search_spaces.parse_budget`)."""
    from search_spaces import parse_budget

    return _parsed_by(parse_budget, name, value, "budget: ")


def onnx_weights(name: str, value: Any) -> str:
    """An ONNX weight type (`auto`, `int8` or `uint8`, checked by `nas.export.onnx_qdq.weight_type`)."""
    from nas.export.onnx_qdq import weight_type

    return _parsed_by(weight_type, name, value, "onnx weights: ")


def latency(name: str, value: Any) -> str:
    """A latency target such as `3ms` or `500us`."""
    from search_spaces import parse_budget

    text = budget(name, value)
    if parse_budget(text).kind != "latency_ms":
        raise ValueError(f"{name}: expected a time such as '3ms' or '500us', got {value!r}")
    return text


def byte_size(name: str, value: Any) -> str:
    """A size in bytes such as `256KB`, `1.5MB` or `2MiB` (a memory budget)."""
    from search_spaces import parse_bytes

    return _parsed_by(parse_bytes, name, value)


def phi(name: str, space: str, value: Any) -> float:
    """A compound-scaling coefficient for which `space` can be built (`search_spaces.get_space` checks it)."""
    from search_spaces import get_space

    v = finite_float(name, value, 0.0)
    try:
        get_space(space, v)
    except ValueError as exc:
        raise ValueError(f"{name}: {str(exc).removeprefix('phi: ')}") from None
    return v


def supernet_epochs(name: str, value: Any) -> tuple[int, int, int, int]:
    """Supernet epochs per progressive-shrinking phase: `L,K,D,W` (text or four counts), largest >= 1, the others
    >= 0."""
    what = "four counts L,K,D,W (largest >= 1, the others >= 0), e.g. 2,1,2,6"
    items = str(value).split(",") if isinstance(value, str) else value
    try:
        epochs = tuple(non_negative_int(name, v, 10_000) for v in items)
    except (TypeError, ValueError):
        epochs = ()
    if len(epochs) != 4 or epochs[0] < 1:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return epochs  # type: ignore[return-value]


def device(name: str, value: Any) -> str:
    """A latency device name such as `kernels`, `torch-fp32` or a table id like `kernels-int4-t2`."""
    from latency_models import DeviceSpec

    try:
        DeviceSpec.make(str(value))
    except ValueError as exc:
        raise ValueError(f"{name}: {str(exc).partition(': ')[2] or exc}") from None
    return str(value)


def check_train_device(name: str, value: Any) -> str:
    """A `--train-device` value as spelt (`auto`, `cpu`, `cuda` or `cuda:N`, lower-cased); whether this machine
    has it is `resolve`'s question."""
    text = str(value).strip().lower()
    if text not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d{1,4}", text):
        raise ValueError(f"{name}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    return text


def check_precision(name: str, value: Any) -> str:
    """A `--precision` value (`fp32`, `bf16` or `fp16`, lower-cased); whether this machine runs it is `resolve`'s
    question."""
    text = str(value).strip().lower()
    if text not in PRECISIONS:
        raise ValueError(f"{name}: expected {', '.join(PRECISIONS)}, got {value!r}")
    return text


def check_train_workers(name: str, value: Any) -> int:
    """A `--train-workers` value: a positive whole number (1: train in this process)."""
    text = str(value).strip()
    if not re.fullmatch(r"\d{1,4}", text) or int(text) < 1:
        raise ValueError(f"{name}: expected a positive whole number of training workers (1: in this process), "
                         f"got {value!r}")
    return int(text)
