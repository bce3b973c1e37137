"""Readers for the standard image-classification formats and :func:`load_dataset`, which detects them.

Supported: scikit-learn's built-in ``digits``; MNIST / Fashion-MNIST IDX files (gzipped or not); the CIFAR-10
and CIFAR-100 python pickles (extracted directory or the ``.tar.gz``); ``.npz`` with ``x``/``y`` or
``x_train``/``y_train``/``x_test``/``y_test``; and an image-folder tree ``root/<class>/*.png`` (optionally
``root/train/<class>`` + ``root/test/<class>``). Every problem is a :class:`DatasetError` naming the file.
The readers live in ``_idx``, ``_cifar`` and ``_files``; this module detects the format and resolves names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.data import stream
from nas.data._cifar import load_cifar_dir, load_cifar_tar
from nas.data._common import DatasetError, digit_names
from nas.data._files import IMAGE_SUFFIXES, load_image_folder, load_npz, looks_like_image_folder
from nas.data._idx import IDX_NAME, find_idx, load_idx_dir, read_idx
from nas.data.dataset import Dataset
from nas.data.stream import StreamDataset

__all__ = ["DatasetError", "load_dataset", "load_digits", "read_idx", "data_roots"]

_LOOKED_FOR = (
    "MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-*), "
    "CIFAR-10 pickles (data_batch_1..5, test_batch), CIFAR-100 pickles (train, test, meta), "
    "a cifar-*-python.tar.gz, an .npz with x/y or x_train/y_train, "
    "or an image folder root/<class>/*" + "|".join(IMAGE_SUFFIXES)
)


def load_digits() -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, values 0..16, shape (1797, 1, 8, 8) uint8."""
    data = _read_sklearn_digits_csv()
    if data is None:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        data = np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    x = data[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8)
    y = data[:, -1].astype(np.int64)
    return Dataset("digits", x, y, 10, digit_names(10), "sklearn.datasets.load_digits")


def _read_sklearn_digits_csv() -> np.ndarray | None:
    """The (1797, 65) rows of the `digits.csv.gz` scikit-learn ships (64 pixels, then the label), read without
    importing `sklearn.datasets` (2 s of imports, a third of `nas search --quick`'s start-up); None when this
    scikit-learn keeps the file elsewhere."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data if data.shape == (1797, 65) else None


@dataclass(frozen=True)
class _Readers:
    """What each detected format is read with: one detection (`_load_directory`, `_load_file`) serves the
    in-memory readers, the size probes that choose between memory and streaming, and the streaming readers.
    A reader of None: the format has no such reader (CIFAR pickles always load into memory)."""

    idx_dir: Callable[[Path], Any]
    npz: Callable[[Path], Any]
    image_folder: Callable[[Path], Any]
    cifar_dir: Callable[[Path, bool], Any] | None
    cifar_tar: Callable[[Path], Any] | None


_IN_MEMORY = _Readers(load_idx_dir, load_npz, load_image_folder, lambda d, c100: load_cifar_dir(d, cifar100=c100),
                      load_cifar_tar)
_PROBE = _Readers(stream.idx_dir_bytes, stream.npz_bytes, stream.image_folder_bytes, None, None)


def _cifar_dir(readers: _Readers, directory: Path, cifar100: bool) -> Any:
    return None if readers.cifar_dir is None else readers.cifar_dir(directory, cifar100)


def _load_directory(directory: Path, depth: int = 0, readers: _Readers = _IN_MEMORY) -> Any:
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(f"{directory}: cannot list ({exc.strerror or exc})") from exc
    names = {p.name for p in entries}
    if find_idx(directory):
        return readers.idx_dir(directory)
    if "data_batch_1" in names or "test_batch" in names:
        return _cifar_dir(readers, directory, False)
    if all((directory / member).is_file() for member in ("train", "test", "meta")):
        return _cifar_dir(readers, directory, True)
    data_files = [p for p in entries if p.is_file() and (p.suffix == ".npz" or _is_tar(p))]
    if len(data_files) == 1:
        return _load_file(data_files[0], readers)
    if looks_like_image_folder(directory) or (
        {"train", "test"} <= {n.lower() for n in names} and looks_like_image_folder(directory / "train")
    ):
        return readers.image_folder(directory)
    subdirs = [p for p in entries if p.is_dir()]
    if depth < 2 and len(subdirs) == 1 and not data_files:
        return _load_directory(subdirs[0], depth + 1, readers)
    if depth < 2 and (directory / "raw").is_dir():
        return _load_directory(directory / "raw", depth + 1, readers)
    found = f" ({len(data_files)} candidate files: {sorted(p.name for p in data_files)})" if data_files else ""
    raise DatasetError(f"{directory}: no recognisable dataset format{found}; looked for {_LOOKED_FOR}")


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _load_file(path: Path, readers: _Readers = _IN_MEMORY) -> Any:
    name = path.name.lower()
    if name.endswith(".npz"):
        return readers.npz(path)
    if _is_tar(path):
        return None if readers.cifar_tar is None else readers.cifar_tar(path)
    if IDX_NAME.match(path.name):
        return readers.idx_dir(path.parent)
    if path.parent.is_dir() and name in (
        "data_batch_1",
        "test_batch",
        "batches.meta",
        "train",
        "test",
        "meta",
    ):
        return _load_directory(path.parent, 0, readers)
    raise DatasetError(f"{path}: unrecognised file; looked for {_LOOKED_FOR}")


def data_roots() -> list[Path]:
    """Folders searched for a dataset given by name: ``$NAS_DATA_DIR`` entries, then ../shared/datasets."""
    roots = [Path(p) for p in os.environ.get("NAS_DATA_DIR", "").split(os.pathsep) if p]
    roots.append(Path(__file__).resolve().parents[2].parent / "shared" / "datasets")
    return roots


def _normalise(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar", ".npz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("python").removesuffix("batchespy")


def _find_named(name: str) -> Path | None:
    wanted = _normalise(name)
    for root in data_roots():
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if _normalise(child.name) == wanted:
                    return child
    return None


def load_dataset(path_or_name: str | os.PathLike[str] = "digits", memory_limit: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> Dataset | StreamDataset:
    """Load a dataset from a path (format detected) or by name (``digits`` built in; others under
    :func:`data_roots`, e.g. ``fashion-mnist``, ``cifar10``). Raises :class:`DatasetError` naming the file.

    ``memory_limit`` (bytes; see :func:`nas.data.stream.parse_memory_limit` and ``default_memory_limit``): when
    the in-memory path would hold more (:func:`nas.data.stream.in_memory_bytes`), IDX, ``.npz`` and image-folder
    data is returned as a :class:`StreamDataset` that reads its images from disk, with decompressed copies of
    gzipped sources kept under ``cache_dir`` (default ``results/data-cache``). None: always in memory.
    """
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if not (path.is_dir() or path.is_file()) and text.lower() != "digits":
        found = _find_named(text) if os.sep not in text else None
        if found is None:
            roots = ", ".join(str(r) for r in data_roots())
            raise DatasetError(
                f"{text}: no such file or directory, and not a known dataset (built in: digits; "
                f"named datasets are looked up under {roots})"
            )
        path = found
    elif not (path.is_dir() or path.is_file()):
        return load_digits()
    read = _load_directory if path.is_dir() else _load_file
    if memory_limit is not None and (read(path, readers=_PROBE) or 0) > memory_limit:
        cache = Path(cache_dir) if cache_dir is not None else None
        streamed = _Readers(lambda d: stream.open_idx_dir(d, cache), lambda f: stream.open_npz(f, cache),
                            stream.open_image_folder, None, None)
        return read(path, readers=streamed)
    return read(path)
