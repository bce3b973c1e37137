"""Shared pieces of the format readers: the error type and array/label checks."""

from __future__ import annotations

import io

import numpy as np

from nas.data.dataset import Dataset, DatasetError

__all__ = ["READ_CHUNK", "DatasetError", "assemble", "channels_last", "check_pair", "digit_names", "read_upto",
           "resolve_classes", "to_labels", "to_nchw"]


READ_CHUNK = 1 << 20  # bytes per read: a read(n) allocates n up front, whatever the file really holds


def read_upto(stream: io.BufferedIOBase, n: int) -> bytearray:
    """Up to `n` bytes of `stream` (fewer at its end), read in chunks so that memory follows the bytes present,
    not a size a file's header declares."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(READ_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def digit_names(n: int) -> tuple[str, ...]:
    """Class names "0".."n-1" for formats that carry none."""
    return tuple(str(i) for i in range(n))


def channels_last(shape: tuple[int, ...], where: str) -> bool:
    """Whether images shaped ``shape`` (NHW, NHWC or NCHW) keep their channels last; refuses other shapes."""
    if len(shape) == 3:
        return False
    if len(shape) != 4:
        raise DatasetError(f"{where}: images must be 3-d (N,H,W) or 4-d, got shape {tuple(shape)}")
    if shape[3] in (1, 3, 4) and shape[3] < shape[1]:
        return True
    if shape[1] not in (1, 3, 4):
        raise DatasetError(f"{where}: cannot tell the channel axis of images shaped {tuple(shape)}")
    return False


def to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Images as NCHW uint8 (integers within 0..255) or float32; accepts NHW, NHWC and NCHW."""
    if channels_last(arr.shape, where):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.ndim == 3:
        arr = arr[:, None]
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


def to_labels(arr: np.ndarray, where: str) -> np.ndarray:
    """Labels as a 1-d int64 array of non-negative class indices; refuses fractions, NaN, infinities,
    negative values and values past int64 (which a cast would silently wrap)."""
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise DatasetError(f"{where}: labels must be 1-d, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DatasetError(f"{where}: labels must be whole class indices, found {arr[bad][0]} "
                               f"at position {int(np.flatnonzero(bad)[0])}")
        frac = arr != np.round(arr)
        if frac.any():
            raise DatasetError(f"{where}: labels must be whole class indices, found {arr[frac][0]} "
                               f"at position {int(np.flatnonzero(frac)[0])}")
    elif arr.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels must be integers (class indices), got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DatasetError(f"{where}: labels must be class indices 0..K-1, found negative label {arr.min()}")
    # checked before the cast: uint64 and float values past int64 would wrap to negatives or garbage
    if arr.size and arr.max() > 2**53:
        raise DatasetError(f"{where}: label {arr.max()} is far too large for a class index")
    return arr.astype(np.int64)


def check_pair(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str) -> None:
    """Refuse images and labels of different lengths, or none at all."""
    if len(x) != len(y):
        raise DatasetError(f"{y_where}: {len(y)} labels but {x_where} holds {len(x)} images")
    if len(x) == 0:
        raise DatasetError(f"{x_where}: no images")


def resolve_classes(source: str, train_y: np.ndarray, test_y: np.ndarray | None,
                    class_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The class names of a dataset with labels `train_y` (and `test_y`): `class_names` checked against the
    labels, or "0".."K-1" inferred from them.

    Classes are bounded by the images: labels past the image count (say a stray 1000000000) would otherwise
    allocate a class name per value and a network head that size, so they are refused before anything scales
    with them.
    """
    top = int(train_y.max()) + 1
    images = len(train_y)
    if test_y is not None:
        top = max(top, int(test_y.max()) + 1)
        images += len(test_y)
    if class_names is None:
        if top > images:
            present = len(np.unique(train_y if test_y is None else np.concatenate([train_y, test_y])))
            raise DatasetError(
                f"{source}: label {top - 1} implies {top} classes but there are only {images} images "
                f"({present} distinct labels); expected class indices 0..K-1 with K at most the number of images "
                "(renumber the labels)"
            )
        return digit_names(top)
    if top > len(class_names):
        raise DatasetError(f"{source}: label {top - 1} but only {len(class_names)} class names")
    if len(class_names) > images:
        raise DatasetError(f"{source}: {len(class_names)} class names but only {images} images; "
                           "expected at most one class per image")
    return class_names


def assemble(
    name: str,
    source: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    class_names: tuple[str, ...] | None,
) -> Dataset:
    """Build a Dataset (with its official test part), inferring num_classes from the labels if unnamed
    (`resolve_classes`)."""
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DatasetError(f"{source}: test images {test[0].shape[1:]} differ from train {train[0].shape[1:]}")
    class_names = resolve_classes(source, train[1], None if test is None else test[1], class_names)
    k = len(class_names)
    test_ds = None
    if test is not None:
        test_ds = Dataset(f"{name}/test", test[0], test[1], k, class_names, source)
    return Dataset(name, train[0], train[1], k, class_names, source, test_ds)
