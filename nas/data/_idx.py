"""MNIST / Fashion-MNIST IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from nas.data._common import READ_CHUNK, DatasetError, assemble, check_pair, read_upto, to_labels, to_nchw
from nas.data.dataset import Dataset

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
IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$", re.IGNORECASE)
_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    # decompressed lazily, so a small .gz cannot inflate past what its header declares
    return gzip.GzipFile(fileobj=io.BytesIO(raw)) if raw[:2] == b"\x1f\x8b" else io.BytesIO(raw)


def _take(stream: io.BufferedIOBase, n: int, path: Path) -> bytearray:
    """`read_upto`, a damaged gzip stream named as such."""
    try:
        return read_upto(stream, n)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the magic number and the exact data length.

    The header's dimensions are checked against the data actually present before the array is built, so a
    few-byte file declaring (4294967295, 4294967295) costs nothing.
    """
    path = Path(path)
    with _open_maybe_gzip(path) as stream:
        dtype, dims = read_header(stream, path)
        count = math.prod(dims)  # Python ints: np.prod in int64 can wrap past 2**63 to a small, plausible size
        expected = count * dtype.itemsize
        data = _take(stream, expected, path)
        if len(data) < expected:
            raise truncated(path, dims, expected, len(data))
        extra = 0
        while more := _take(stream, READ_CHUNK, path):
            extra += len(more)
    if extra:
        raise trailing(path, dims, extra)
    return np.frombuffer(data, dtype, count=count).reshape(dims).astype(dtype.newbyteorder("="))


def read_header(stream: io.BufferedIOBase, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and dimensions from the IDX header at the start of ``stream`` (left just past it)."""
    magic = _take(stream, 4, path)
    if len(magic) < 4:
        raise DatasetError(f"{path}: truncated: {len(magic)} bytes, too short for an IDX header")
    code, ndim = magic[2], magic[3]
    if magic[:2] != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{magic.hex()} "
            "(expected 0x0000, a type code, and the number of dimensions, e.g. 0x00000803 for images)"
        )
    head = _take(stream, 4 * ndim, path)
    if len(head) < 4 * ndim:
        raise DatasetError(f"{path}: truncated inside the IDX header ({4 + len(head)} of {4 + 4 * ndim} bytes)")
    return np.dtype(_IDX_TYPES[code]), struct.unpack(f">{ndim}I", head)


def truncated(path: Path, dims: tuple[int, ...], expected: int, present: int) -> DatasetError:
    """The error for an IDX file holding fewer data bytes than its header declares."""
    return DatasetError(
        f"{path}: truncated: header declares shape {dims} ({expected} data bytes) but {present} bytes follow"
    )


def trailing(path: Path, dims: tuple[int, ...], extra: int) -> DatasetError:
    """The error for an IDX file holding more data bytes than its header declares."""
    return DatasetError(f"{path}: {extra} unexpected bytes after the declared shape {dims}")


def open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading from disk as it goes, decompressed on the fly if it is gzipped."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        return gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def take(stream: io.BufferedIOBase, n: int, path: Path) -> bytearray:
    """Up to ``n`` bytes of ``stream``, a damaged gzip stream named as such."""
    return _take(stream, n, path)


def find_idx(directory: Path) -> dict[tuple[str, str], Path]:
    """Map ('train'|'t10k', 'images'|'labels') to files in ``directory``, preferring uncompressed ones."""
    found: dict[tuple[str, str], Path] = {}
    for child in sorted(directory.iterdir(), key=lambda p: p.name.lower().endswith(".gz")):
        match = IDX_NAME.match(child.name)
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
    x = to_nchw(raw, str(img_path))
    y = to_labels(read_idx(lab_path), str(lab_path))
    check_pair(x, y, str(img_path), str(lab_path))
    return x, y


def load_idx_dir(directory: Path) -> Dataset:
    """MNIST-style directory: train-{images,labels} and optionally t10k-{images,labels} IDX files."""
    files = find_idx(directory)
    if not files:
        raise DatasetError(f"{directory}: no IDX files (train-images-idx3-ubyte[.gz] ...)")
    if not any(part == "train" for part, _ in files):
        raise DatasetError(f"{directory}: IDX files present but no train-images / train-labels")
    train = _idx_pair(files, "train", directory)
    test = _idx_pair(files, "t10k", directory) if any(p == "t10k" for p, _ in files) else None
    name, names = idx_names(directory)
    return assemble(name, str(directory), train, test, names)


def idx_names(directory: Path) -> tuple[str, tuple[str, ...] | None]:
    """The dataset name and class names of an IDX folder: Fashion-MNIST's classes when its path says so."""
    where = str(directory).lower()
    name = directory.name if directory.name.lower() != "raw" else directory.parent.name
    if "fashion" in where:
        return "fashion-mnist", FASHION_MNIST_CLASSES
    return ("mnist" if "mnist" in where else name), None
