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
from pathlib import Path

import numpy as np

from nas.data._cifar import load_cifar_dir, load_cifar_tar
from nas.data._common import DatasetError, digit_names
from nas.data._files import IMAGE_SUFFIXES, load_image_folder, load_npz, looks_like_image_folder
from nas.data._idx import IDX_NAME, find_idx, load_idx_dir, read_idx
from nas.data.dataset import Dataset

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


def _load_directory(directory: Path, depth: int = 0) -> Dataset:
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(f"{directory}: cannot list ({exc.strerror or exc})") from exc
    names = {p.name for p in entries}
    if find_idx(directory):
        return load_idx_dir(directory)
    if "data_batch_1" in names or "test_batch" in names:
        return load_cifar_dir(directory, cifar100=False)
    if all((directory / member).is_file() for member in ("train", "test", "meta")):
        return load_cifar_dir(directory, cifar100=True)
    data_files = [p for p in entries if p.is_file() and (p.suffix == ".npz" or _is_tar(p))]
    if len(data_files) == 1:
        return _load_file(data_files[0])
    if looks_like_image_folder(directory) or (
        {"train", "test"} <= {n.lower() for n in names} and looks_like_image_folder(directory / "train")
    ):
        return load_image_folder(directory)
    subdirs = [p for p in entries if p.is_dir()]
    if depth < 2 and len(subdirs) == 1 and not data_files:
        return _load_directory(subdirs[0], depth + 1)
    if depth < 2 and (directory / "raw").is_dir():
        return _load_directory(directory / "raw", depth + 1)
    found = f" ({len(data_files)} candidate files: {sorted(p.name for p in data_files)})" if data_files else ""
    raise DatasetError(f"{directory}: no recognisable dataset format{found}; looked for {_LOOKED_FOR}")


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _load_file(path: Path) -> Dataset:
    name = path.name.lower()
    if name.endswith(".npz"):
        return load_npz(path)
    if _is_tar(path):
        return load_cifar_tar(path)
    if IDX_NAME.match(path.name):
        return load_idx_dir(path.parent)
    if path.parent.is_dir() and name in (
        "data_batch_1",
        "test_batch",
        "batches.meta",
        "train",
        "test",
        "meta",
    ):
        return _load_directory(path.parent)
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


def load_dataset(path_or_name: str | os.PathLike[str] = "digits") -> Dataset:
    """Load a dataset from a path (format detected) or by name (``digits`` built in; others under
    :func:`data_roots`, e.g. ``fashion-mnist``, ``cifar10``). Raises :class:`DatasetError` naming the file."""
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_directory(path)
    if path.is_file():
        return _load_file(path)
    if text.lower() == "digits":
        return load_digits()
    found = _find_named(text) if os.sep not in text else None
    if found is not None:
        return _load_directory(found) if found.is_dir() else _load_file(found)
    roots = ", ".join(str(r) for r in data_roots())
    raise DatasetError(
        f"{text}: no such file or directory, and not a known dataset (built in: digits; "
        f"named datasets are looked up under {roots})"
    )
