"""CIFAR-10 / CIFAR-100 python pickles, from the extracted directory or the ``.tar.gz``."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nas.data._common import DatasetError, assemble, check_pair, to_labels
from nas.data.dataset import Dataset

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays and plain containers (CIFAR batches need nothing else)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _unpickle(raw: bytes, where: str) -> dict[str, object]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unreadable batch
        raise DatasetError(f"{where}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a dict in the pickle, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(raw: bytes, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, where)
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{where}: CIFAR batch lacks 'data' or '{label_key}' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    y = to_labels(np.asarray(batch[label_key]), f"{where} '{label_key}'")
    check_pair(x, y, where, f"{where} '{label_key}'")
    return x, y


def _label_names(raw: bytes | None, where: str, key: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = _unpickle(raw, where).get(key)
    if names is None:
        raise DatasetError(f"{where}: meta file has no '{key}'")
    if not isinstance(names, (list, tuple, np.ndarray)):
        raise DatasetError(f"{where}: '{key}' must be a list of class names, found {type(names).__name__}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


Reader = Callable[[str], "bytes | None"]


def _load_cifar(read: Reader, where: str, cifar100: bool) -> Dataset:
    """CIFAR-10 / CIFAR-100 from a reader that returns a member file's bytes (None when absent)."""
    label_key = "fine_labels" if cifar100 else "labels"
    train_names = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
    parts = []
    for member in [*train_names, "test"] if cifar100 else [*train_names, "test_batch"]:
        raw = read(member)
        if raw is None:
            raise DatasetError(f"{where}: missing {member}")
        parts.append(_cifar_batch(raw, f"{where}/{member}", label_key))
    train = (np.concatenate([p[0] for p in parts[:-1]]), np.concatenate([p[1] for p in parts[:-1]]))
    meta = "meta" if cifar100 else "batches.meta"
    names = _label_names(read(meta), f"{where}/{meta}", "fine_label_names" if cifar100 else "label_names")
    if names is None:
        names = None if cifar100 else CIFAR10_CLASSES
    return assemble("cifar100" if cifar100 else "cifar10", where, train, parts[-1], names)


def _dir_reader(directory: Path) -> Reader:
    def read(member: str) -> bytes | None:
        path = directory / member
        if not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc

    return read


def load_cifar_dir(directory: Path, cifar100: bool) -> Dataset:
    """``cifar-10-batches-py`` (data_batch_1..5, test_batch) or ``cifar-100-python`` (train, test, meta)."""
    return _load_cifar(_dir_reader(directory), str(directory), cifar100)


def load_cifar_tar(path: Path) -> Dataset:
    """CIFAR-10 / CIFAR-100 straight from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``."""
    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            cifar100 = "data_batch_1" not in members and "train" in members and "meta" in members
            if not cifar100 and "data_batch_1" not in members:
                raise DatasetError(f"{path}: archive holds no CIFAR batches (looked for data_batch_1 or train)")

            def read(member: str) -> bytes | None:
                info = members.get(member)
                handle = tar.extractfile(info) if info is not None else None
                return handle.read() if handle is not None else None

            return _load_cifar(read, str(path), cifar100)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable or truncated tar archive ({exc})") from exc
