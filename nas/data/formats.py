"""Readers for the standard image-classification formats and :func:`load_dataset`, which detects them.

Supported: scikit-learn's built-in ``digits``; MNIST / Fashion-MNIST IDX files (gzipped or not); the CIFAR-10
and CIFAR-100 python pickles (extracted directory or the ``.tar.gz``); ``.npz`` with ``x``/``y`` or
``x_train``/``y_train``/``x_test``/``y_test``; and an image-folder tree ``root/<class>/*.png`` (optionally
``root/train/<class>`` + ``root/test/<class>``). Every problem is a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nas.data.dataset import Dataset

__all__ = ["DatasetError", "load_dataset", "load_digits", "read_idx", "data_roots"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$", re.IGNORECASE)
_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_LOOKED_FOR = (
    "MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-*), "
    "CIFAR-10 pickles (data_batch_1..5, test_batch), CIFAR-100 pickles (train, test, meta), "
    "a cifar-*-python.tar.gz, an .npz with x/y or x_train/y_train, "
    "or an image folder root/<class>/*" + "|".join(IMAGE_SUFFIXES)
)


class DatasetError(ValueError):
    """A dataset path that is missing, unreadable, inconsistent or in no recognised format."""


# ---------------------------------------------------------------------------------------------- helpers


def _digit_names(n: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(n))


def _to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Images as NCHW uint8 (integers within 0..255) or float32; accepts NHW, NHWC and NCHW."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        channels_last = arr.shape[3] in (1, 3, 4) and arr.shape[3] < arr.shape[1]
        if channels_last:
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1] not in (1, 3, 4):
            raise DatasetError(f"{where}: cannot tell the channel axis of images shaped {arr.shape}")
    else:
        raise DatasetError(f"{where}: images must be 3-d (N,H,W) or 4-d, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "iub":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            return np.ascontiguousarray(arr, dtype=np.float32)
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DatasetError(f"{where}: images contain NaN or infinite values")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise DatasetError(f"{where}: images have unsupported dtype {arr.dtype}")


def _to_labels(arr: np.ndarray, where: str) -> np.ndarray:
    """Labels as a 1-d int64 array of non-negative class indices."""
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise DatasetError(f"{where}: labels must be 1-d, got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DatasetError(f"{where}: negative label {arr.min()}")
    return arr.astype(np.int64)


def _check_pair(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str) -> None:
    if len(x) != len(y):
        raise DatasetError(f"{y_where}: {len(y)} labels but {x_where} holds {len(x)} images")
    if len(x) == 0:
        raise DatasetError(f"{x_where}: no images")


def _assemble(
    name: str,
    source: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    class_names: tuple[str, ...] | None,
) -> Dataset:
    """Build a Dataset (with its official test part), inferring num_classes from the labels if unnamed."""
    top = int(train[1].max()) + 1
    if test is not None:
        top = max(top, int(test[1].max()) + 1)
        if test[0].shape[1:] != train[0].shape[1:]:
            raise DatasetError(f"{source}: test images {test[0].shape[1:]} differ from train {train[0].shape[1:]}")
    if class_names is None:
        class_names = _digit_names(top)
    elif top > len(class_names):
        raise DatasetError(f"{source}: label {top - 1} but only {len(class_names)} class names")
    k = len(class_names)
    test_ds = None
    if test is not None:
        test_ds = Dataset(f"{name}/test", test[0], test[1], k, class_names, source)
    return Dataset(name, train[0], train[1], k, class_names, source, test_ds)


# --------------------------------------------------------------------------------------------- digits


def load_digits() -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, values 0..16, shape (1797, 1, 8, 8) uint8."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.images.astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    return Dataset("digits", x, y, 10, _digit_names(10), "sklearn.datasets.load_digits")


# ------------------------------------------------------------------------------------------------ IDX


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"{path}: truncated or corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the magic number and the exact data length."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} "
            "(expected 0x0000, a type code, and the number of dimensions, e.g. 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated inside the IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    expected, present = count * dtype.itemsize, len(data) - header
    if present < expected:
        raise DatasetError(
            f"{path}: truncated: header declares shape {dims} ({expected} data bytes) but {present} bytes follow"
        )
    if present > expected:
        raise DatasetError(f"{path}: {present - expected} unexpected bytes after the declared shape {dims}")
    return np.frombuffer(data, dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path) -> dict[tuple[str, str], Path]:
    """Map ('train'|'t10k', 'images'|'labels') to files in ``directory``, preferring uncompressed ones."""
    found: dict[tuple[str, str], Path] = {}
    for child in sorted(directory.iterdir(), key=lambda p: p.name.lower().endswith(".gz")):
        match = _IDX_NAME.match(child.name)
        if match and child.is_file():
            found.setdefault((match.group(1).lower(), match.group(2).lower()), child)
    return found


def _idx_pair(files: dict[tuple[str, str], Path], part: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    for kind in ("images", "labels"):
        if (part, kind) not in files:
            raise DatasetError(
                f"{directory}: has {part}-{'labels' if kind == 'images' else 'images'} "
                f"but no {part}-{kind}-idx*-ubyte[.gz]"
            )
    img_path, lab_path = files[(part, "images")], files[(part, "labels")]
    raw = read_idx(img_path)
    if raw.ndim not in (3, 4):
        raise DatasetError(f"{img_path}: image IDX must be 3-d (N,H,W), got shape {raw.shape}")
    x = _to_nchw(raw, str(img_path))
    y = _to_labels(read_idx(lab_path), str(lab_path))
    _check_pair(x, y, str(img_path), str(lab_path))
    return x, y


def load_idx_dir(directory: Path) -> Dataset:
    """MNIST-style directory: train-{images,labels} and optionally t10k-{images,labels} IDX files."""
    files = _find_idx(directory)
    if not files:
        raise DatasetError(f"{directory}: no IDX files (train-images-idx3-ubyte[.gz] ...)")
    if not any(part == "train" for part, _ in files):
        raise DatasetError(f"{directory}: IDX files present but no train-images / train-labels")
    train = _idx_pair(files, "train", directory)
    test = _idx_pair(files, "t10k", directory) if any(p == "t10k" for p, _ in files) else None
    where = str(directory).lower()
    name = directory.name if directory.name.lower() != "raw" else directory.parent.name
    names = None
    if "fashion" in where:
        name, names = "fashion-mnist", FASHION_MNIST_CLASSES
    elif "mnist" in where:
        name = "mnist"
    return _assemble(name, str(directory), train, test, names)


# ---------------------------------------------------------------------------------------------- CIFAR


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
    y = _to_labels(np.asarray(batch[label_key]), f"{where} '{label_key}'")
    _check_pair(x, y, where, f"{where} '{label_key}'")
    return x, y


def _label_names(raw: bytes | None, where: str, key: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = _unpickle(raw, where).get(key)
    if names is None:
        raise DatasetError(f"{where}: meta file has no '{key}'")
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
    return _assemble("cifar100" if cifar100 else "cifar10", where, train, parts[-1], names)


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


# ------------------------------------------------------------------------------------------------ npz


def load_npz(path: Path) -> Dataset:
    """``.npz`` with ``x``/``y`` or ``x_train``/``y_train`` (+ ``x_test``/``y_test``), ``class_names``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable .npz ({exc})") from exc
    if "x" in arrays and "y" in arrays:
        train_keys, test_keys = ("x", "y"), None
    elif "x_train" in arrays and "y_train" in arrays:
        train_keys, test_keys = ("x_train", "y_train"), ("x_test", "y_test")
    else:
        raise DatasetError(f"{path}: .npz needs arrays x and y (or x_train and y_train); found {sorted(arrays)}")

    def pair(keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        x = _to_nchw(arrays[keys[0]], f"{path}[{keys[0]}]")
        y = _to_labels(arrays[keys[1]], f"{path}[{keys[1]}]")
        _check_pair(x, y, f"{path}[{keys[0]}]", f"{path}[{keys[1]}]")
        return x, y

    test = None
    if test_keys is not None and (test_keys[0] in arrays or test_keys[1] in arrays):
        if not (test_keys[0] in arrays and test_keys[1] in arrays):
            raise DatasetError(f"{path}: has only one of x_test / y_test")
        test = pair(test_keys)
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
    return _assemble(path.stem, str(path), pair(train_keys), test, names)


# --------------------------------------------------------------------------------------- image folder


def _visible_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _looks_like_image_folder(directory: Path) -> bool:
    return any(_image_files(d) for d in _visible_dirs(directory))


def _read_image_tree(root: Path, class_names: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read root/<class>/*; class indices follow ``class_names`` if given, else sorted folder names."""
    from PIL import Image, UnidentifiedImageError

    folders = _visible_dirs(root)
    if not folders:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/*.png)")
    names = class_names or tuple(d.name for d in folders)
    images: list[tuple[Path, Image.Image]] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in names:
            raise DatasetError(f"{folder}: class '{folder.name}' is not among the training classes {names}")
        files = _image_files(folder)
        if not files:
            raise DatasetError(f"{folder}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
        for file in files:
            try:
                with Image.open(file) as im:
                    im.load()
                    gray = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
                    images.append((file, im.convert("L" if gray else "RGB")))
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                raise DatasetError(f"{file}: unreadable image ({exc})") from exc
            labels.append(names.index(folder.name))
    first_file, first = images[0]
    mode = "RGB" if any(im.mode == "RGB" for _, im in images) else "L"
    arrays = []
    for file, im in images:
        if im.size != first.size:
            raise DatasetError(
                f"{file}: size {im.size[0]}x{im.size[1]} differs from {first_file} "
                f"({first.size[0]}x{first.size[1]}); all images must share one size"
            )
        arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
    x = _to_nchw(np.stack(arrays), str(root)) if mode == "L" else np.stack(arrays).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), names


def load_image_folder(root: Path) -> Dataset:
    """``root/<class>/*.png|jpg`` or ``root/train/<class>`` with ``root/test/<class>`` (or ``val/``)."""
    sub = {d.name.lower(): d for d in _visible_dirs(root)}
    train_dir = sub.get("train")
    test_dir = sub.get("test") or sub.get("val")
    if train_dir is not None and test_dir is not None and _looks_like_image_folder(train_dir):
        x, y, names = _read_image_tree(train_dir, None)
        tx, ty, _ = _read_image_tree(test_dir, names)
        if tx.shape[1:] != x.shape[1:]:
            raise DatasetError(f"{test_dir}: images {tx.shape[1:]} differ from {train_dir} images {x.shape[1:]}")
        return _assemble(root.name, str(root), (x, y), (tx, ty), names)
    x, y, names = _read_image_tree(root, None)
    return _assemble(root.name, str(root), (x, y), None, names)


# ------------------------------------------------------------------------------------ detection & names


def _load_directory(directory: Path, depth: int = 0) -> Dataset:
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(f"{directory}: cannot list ({exc.strerror or exc})") from exc
    names = {p.name for p in entries}
    if _find_idx(directory):
        return load_idx_dir(directory)
    if "data_batch_1" in names or "test_batch" in names:
        return _load_cifar(_dir_reader(directory), str(directory), cifar100=False)
    if all((directory / member).is_file() for member in ("train", "test", "meta")):
        return _load_cifar(_dir_reader(directory), str(directory), cifar100=True)
    data_files = [p for p in entries if p.is_file() and (p.suffix == ".npz" or _is_tar(p))]
    if len(data_files) == 1:
        return _load_file(data_files[0])
    if _looks_like_image_folder(directory) or (
        {"train", "test"} <= {n.lower() for n in names} and _looks_like_image_folder(directory / "train")
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
    if _IDX_NAME.match(path.name):
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
