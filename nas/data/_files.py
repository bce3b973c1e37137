"""``.npz`` arrays and image-folder trees (``root/<class>/*.png``)."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nas.data._common import DatasetError, assemble, check_pair, read_upto, to_labels, to_nchw
from nas.data.dataset import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


MAX_IMAGE_PIXELS = 1 << 24  # 4096 x 4096; a few-KB PNG can declare far more, and every image is held in memory


def _npz_array(zf: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    """One ``.npy`` member, allocated only as far as its bytes are really there.

    ``np.load`` allocates the shape a header declares before reading any data: a 600-byte file declaring a
    billion float64 raised MemoryError. Here the data is read in chunks and its length checked against the header.
    """
    with zf.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise DatasetError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{where}: not a readable .npy array ({exc})") from exc
        if dtype.hasobject:
            raise DatasetError(f"{where}: holds Python objects (dtype {dtype}); expected a numeric array")
        count = math.prod(int(d) for d in shape)  # Python ints: np.prod could overflow and wrap to a small size
        nbytes = count * dtype.itemsize
        buf = read_upto(f, nbytes)
        if len(buf) < nbytes:
            raise DatasetError(f"{where}: truncated: header declares shape {shape} ({nbytes} bytes of "
                               f"{dtype}) but only {len(buf)} bytes follow")
    if dtype.itemsize == 0:
        raise DatasetError(f"{where}: zero-size dtype {dtype}; expected a numeric array")
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def load_npz(path: Path) -> Dataset:
    """``.npz`` with ``x``/``y`` or ``x_train``/``y_train`` (+ ``x_test``/``y_test``), ``class_names``."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
            if "x" in members and "y" in members:
                train_keys, test_keys = ("x", "y"), None
            elif "x_train" in members and "y_train" in members:
                train_keys, test_keys = ("x_train", "y_train"), ("x_test", "y_test")
            else:
                raise DatasetError(f"{path}: .npz needs arrays x and y (or x_train and y_train); "
                                   f"found {sorted(members)}")
            wanted = [*train_keys, *(k for k in test_keys or () if k in members)]
            if "class_names" in members:
                wanted.append("class_names")
            arrays = {k: _npz_array(zf, members[k], f"{path}[{k}]") for k in wanted}
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable .npz ({exc})") from exc

    def pair(keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        x = to_nchw(arrays[keys[0]], f"{path}[{keys[0]}]")
        y = to_labels(arrays[keys[1]], f"{path}[{keys[1]}]")
        check_pair(x, y, f"{path}[{keys[0]}]", f"{path}[{keys[1]}]")
        return x, y

    test = None
    if test_keys is not None and (test_keys[0] in arrays or test_keys[1] in arrays):
        if not (test_keys[0] in arrays and test_keys[1] in arrays):
            raise DatasetError(f"{path}: has only one of x_test / y_test")
        test = pair(test_keys)
    names = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1:
            raise DatasetError(f"{path}[class_names]: expected a 1-d array of names, got shape {raw.shape}")
        names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw.tolist())
    return assemble(path.stem, str(path), pair(train_keys), test, names)


def _visible_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def looks_like_image_folder(directory: Path) -> bool:
    return any(_image_files(d) for d in _visible_dirs(directory))


def tree_files(root: Path, class_names: tuple[str, ...] | None) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of root/<class>/* in reading order, their class indices and the class names (``class_names``
    if given, else the sorted folder names)."""
    folders = _visible_dirs(root)
    if not folders:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/*.png)")
    names = class_names or tuple(d.name for d in folders)
    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in names:
            raise DatasetError(f"{folder}: class '{folder.name}' is not among the training classes {names}")
        found = _image_files(folder)
        if not found:
            raise DatasetError(f"{folder}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
        files += found
        labels += [names.index(folder.name)] * len(found)
    return files, labels, names


def check_image_size(file: Path, size: tuple[int, int], first: tuple[Path, tuple[int, int]] | None) -> None:
    """Refuse an image whose header declares too many pixels, or a size other than the ``first`` image's."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{file}: declares {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                           "an image may have here")
    if first is not None and (w, h) != first[1]:
        raise DatasetError(
            f"{file}: size {w}x{h} differs from {first[0]} ({first[1][0]}x{first[1][1]}); "
            "all images must share one size"
        )


def is_gray(mode: str) -> bool:
    """Whether PIL images of ``mode`` are read as one gray channel (else as RGB)."""
    return mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16")


def each_image(files: list[Path], visit: Callable[[Any], None]) -> None:
    """Open each of `files` with PIL, check its size from the header (before `visit` decodes anything: a few-KB PNG
    can declare 50000 x 50000) against the first's, and call `visit` with it; an unreadable image is one
    `DatasetError` naming the file. The in-memory reader and the streaming scan both go through here."""
    from PIL import Image, UnidentifiedImageError

    first: tuple[Path, tuple[int, int]] | None = None
    for file in files:
        try:
            with Image.open(file) as im:
                check_image_size(file, im.size, first)
                if first is None:
                    first = (file, im.size)
                visit(im)
        except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{file}: unreadable image ({exc})") from exc


def _read_image_tree(root: Path, class_names: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read root/<class>/*; class indices follow ``class_names`` if given, else sorted folder names (sizes checked
    from the headers first, `each_image`)."""
    files, labels, names = tree_files(root, class_names)
    arrays: list[np.ndarray] = []

    def decode(im: Any) -> None:
        im.load()
        arrays.append(np.asarray(im.convert("L" if is_gray(im.mode) else "RGB"), dtype=np.uint8))

    each_image(files, decode)
    if any(a.ndim == 3 for a in arrays):
        # PIL's L -> RGB copies the gray value into each channel; so does this, without keeping two decodings
        x = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]).transpose(0, 3, 1, 2)
    else:
        x = to_nchw(np.stack(arrays), str(root))
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), names


def load_image_folder(root: Path) -> Dataset:
    """``root/<class>/*.png|jpg`` or ``root/train/<class>`` with ``root/test/<class>`` (or ``val/``)."""
    sub = {d.name.lower(): d for d in _visible_dirs(root)}
    train_dir = sub.get("train")
    test_dir = sub.get("test") or sub.get("val")
    if train_dir is not None and test_dir is not None and looks_like_image_folder(train_dir):
        x, y, names = _read_image_tree(train_dir, None)
        tx, ty, _ = _read_image_tree(test_dir, names)
        if tx.shape[1:] != x.shape[1:]:
            raise DatasetError(f"{test_dir}: images {tx.shape[1:]} differ from {train_dir} images {x.shape[1:]}")
        return assemble(root.name, str(root), (x, y), (tx, ty), names)
    x, y, names = _read_image_tree(root, None)
    return assemble(root.name, str(root), (x, y), None, names)
