"""``.npz`` arrays and image-folder trees (``root/<class>/*.png``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from nas.data._common import DatasetError, assemble, check_pair, to_labels, to_nchw
from nas.data.dataset import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
        x = to_nchw(arrays[keys[0]], f"{path}[{keys[0]}]")
        y = to_labels(arrays[keys[1]], f"{path}[{keys[1]}]")
        check_pair(x, y, f"{path}[{keys[0]}]", f"{path}[{keys[1]}]")
        return x, y

    test = None
    if test_keys is not None and (test_keys[0] in arrays or test_keys[1] in arrays):
        if not (test_keys[0] in arrays and test_keys[1] in arrays):
            raise DatasetError(f"{path}: has only one of x_test / y_test")
        test = pair(test_keys)
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
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
    x = to_nchw(np.stack(arrays), str(root)) if mode == "L" else np.stack(arrays).transpose(0, 3, 1, 2)
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
