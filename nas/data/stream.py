"""Datasets larger than memory: labels held in memory, images read from disk per batch.

:func:`nas.data.load_dataset` with a ``memory_limit`` returns a :class:`StreamDataset` when the in-memory path
would need more than the limit (:func:`in_memory_bytes`). Streamed formats: uncompressed IDX (read in place),
gzipped IDX and deflated ``.npz`` members (decompressed once into a cache file, then read in place), stored
``.npz`` members (read in place) and image folders (decoded per image). Only ``uint8`` images stream; CIFAR
pickles and scikit-learn's digits always load into memory.

Images are read with ``os.pread`` rather than ``np.memmap``: a memory map's touched pages count towards the
process's resident memory for as long as the map lives, so an epoch over a 20 GB file would show 20 GB resident;
``pread`` leaves them in the page cache, which the kernel reclaims.

A streamed dataset splits exactly as an in-memory one: :func:`nas.data.split` depends only on the labels and
the seed, and :class:`StreamDataset` offers the ``subset`` / ``y`` / ``test`` that it uses.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.data._common import READ_CHUNK, DatasetError, channels_last, resolve_classes, to_labels
from nas.data._files import (
    _image_files,
    _npz_array,
    _visible_dirs,
    check_image_size,
    each_image,
    is_gray,
    looks_like_image_folder,
    tree_files,
)
from nas.data._idx import (
    find_idx,
    idx_names,
    open_maybe_gzip,
    read_header,
    read_idx,
    take,
    trailing,
    truncated,
)
from nas.data.dataset import Dataset, summary
from nas.io import write_atomic
from search_spaces import parse_bytes

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_MEMORY_FRACTION",
    "FileRows",
    "FolderRows",
    "StreamDataset",
    "default_memory_limit",
    "in_memory_bytes",
    "parse_memory_limit",
]

DEFAULT_MEMORY_FRACTION = 0.25  # of physical memory: the images, their float copies, the model and the rest fit
DEFAULT_CACHE_DIR = Path("results") / "data-cache"  # beside the default --out; the CLI passes <--out>/data-cache
_FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a source file, with its size and modification time


# --------------------------------------------------------------------------------------------- memory limit


def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_limit() -> int:
    """The default limit: :data:`DEFAULT_MEMORY_FRACTION` (25%) of physical memory."""
    return int(physical_memory() * DEFAULT_MEMORY_FRACTION)


def parse_memory_limit(text: str) -> int:
    """Bytes from ``2GiB``, ``500MB``, ``1.5G``, ``123456`` (bytes) or ``25%`` (of physical memory).

    Decimal units (kB, MB, GB, TB; a bare K/M/G/T too) are powers of 1000, binary ones (KiB, MiB, GiB, TiB)
    powers of 1024. Raises ValueError naming what was expected.
    """
    value = text.strip()
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise ValueError(f"{text!r}: expected a share of physical memory in (0, 100]%, e.g. 25%")
        return int(physical_memory() * share / 100)
    try:
        return parse_bytes(value)
    except ValueError as exc:
        if "positive" in str(exc):
            raise ValueError(f"{text!r}: expected a positive memory size") from None
        raise ValueError(f"{text!r}: expected a memory size such as 2GiB, 500MB, 1.5G or 25% (of physical "
                         f"memory)") from None


def in_memory_bytes(images: int, chw: tuple[int, int, int]) -> int:
    """What the in-memory path holds for ``images`` images of shape ``chw``: the uint8 images plus their
    normalised float32 tensors at native resolution (5 bytes a pixel); streaming is chosen above the limit."""
    return images * math.prod(chw) * 5


# --------------------------------------------------------------------------------------------- image rows


@dataclass
class FileRows:
    """``count`` uint8 images stored back to back in a file from ``offset``, each ``stored`` shaped (HWC if
    ``channels_last``, else CHW); :meth:`read` returns them NCHW. Picklable: each process opens its own handle."""

    path: str
    offset: int
    count: int
    stored: tuple[int, int, int]
    channels_last: bool
    _fd: int | None = field(default=None, init=False, repr=False, compare=False)
    _pid: int = field(default=-1, init=False, repr=False, compare=False)

    @property
    def chw(self) -> tuple[int, int, int]:
        """Shape of one image, channels first."""
        a, b, c = self.stored
        return (c, a, b) if self.channels_last else (a, b, c)

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own (pread needs no seek)
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise DatasetError(f"{self.path}: cannot read ({exc.strerror or exc})") from exc
            self._pid = os.getpid()
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images at positions ``rows`` (in that order), uint8 NCHW."""
        fd, size = self._handle(), math.prod(self.stored)
        out = np.empty((len(rows), size), np.uint8)
        for j, i in enumerate(rows.tolist()):
            got = os.preadv(fd, [out[j]], self.offset + i * size)
            if got != size:
                raise DatasetError(f"{self.path}: image {i} ends after {got} of {size} bytes; the file shrank "
                                   "since it was opened")
        out = out.reshape(len(rows), *self.stored)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if self.channels_last else out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


@dataclass
class FolderRows:
    """Image files of one size, decoded per :meth:`read` to uint8 NCHW with ``chw`` channels (gray images
    repeated to RGB where others are colour), as the in-memory reader does."""

    files: tuple[str, ...]
    chw: tuple[int, int, int]

    @property
    def count(self) -> int:
        """Number of images."""
        return len(self.files)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images at positions ``rows`` (in that order), uint8 NCHW."""
        from PIL import Image, UnidentifiedImageError

        c, h, w = self.chw
        out = np.empty((len(rows), c, h, w), np.uint8)
        for j, i in enumerate(rows.tolist()):
            file = Path(self.files[i])
            try:
                with Image.open(file) as im:
                    check_image_size(file, im.size, (Path(self.files[0]), (w, h)))
                    im.load()
                    gray = is_gray(im.mode)
                    if not gray and c == 1:
                        raise DatasetError(f"{file}: a colour image, but it was a gray one when the dataset was "
                                           "opened; the file changed since")
                    pixels = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as exc:
                raise DatasetError(f"{file}: unreadable image ({exc})") from exc
            out[j] = pixels[None] if gray else pixels.transpose(2, 0, 1)  # a gray image broadcasts to RGB
        return out


Rows = FileRows | FolderRows


# --------------------------------------------------------------------------------------------- the dataset


@dataclass(frozen=True, eq=False)
class StreamDataset:
    """A dataset whose images stay on disk: the streaming counterpart of :class:`nas.data.Dataset`.

    ``y`` (int64), ``num_classes``, ``class_names``, ``source`` and ``test`` mean what they mean there; images
    are read per batch with :meth:`read` (uint8 NCHW, pixel values as stored). ``index`` maps this dataset's
    positions to rows of ``rows`` (None: every row, in order), so :meth:`subset` copies no images.
    """

    name: str
    rows: Rows
    y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str = ""
    test: StreamDataset | None = field(default=None, repr=False)
    index: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = self.source or self.name
        expected = self.rows.count if self.index is None else len(self.index)
        if self.y.ndim != 1 or self.y.dtype != np.int64 or len(self.y) != expected:
            raise ValueError(f"{where}: expected {expected} int64 labels, got {self.y.dtype} {self.y.shape}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{where}: {len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        test = f", test={len(self.test)}" if self.test is not None else ""
        return (f"StreamDataset({self.name!r}, n={len(self)}{test}, shape={self.rows.chw} uint8, "
                f"classes={self.num_classes}, source={self.source!r})")

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for grayscale, 3 for RGB)."""
        return self.rows.chw[0]

    @property
    def resolution(self) -> tuple[int, int]:
        """Native ``(height, width)`` of the images."""
        return self.rows.chw[1], self.rows.chw[2]

    @property
    def dtype(self) -> np.dtype:
        """Element type of the images :meth:`read` returns (always uint8)."""
        return np.dtype(np.uint8)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The images at ``positions`` of this dataset, in that order, as uint8 NCHW."""
        positions = np.asarray(positions, dtype=np.int64)
        return self.rows.read(positions if self.index is None else self.index[positions])

    def chunks(self, size: int = 2048) -> Iterator[np.ndarray]:
        """Every image in order, ``size`` at a time (uint8 NCHW)."""
        for lo in range(0, len(self), size):
            yield self.read(np.arange(lo, min(lo + size, len(self))))

    def subset(self, indices: np.ndarray, name: str | None = None) -> StreamDataset:
        """The images at ``indices`` (in that order), without the official test set; reads no images."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.index is None else self.index[indices]
        return replace(self, name=name or self.name, y=self.y[indices], test=None, index=rows)

    def load(self) -> Dataset:
        """This dataset read whole into memory (for parts known to be small)."""
        x = np.concatenate(list(self.chunks())) if len(self) else np.empty((0, *self.rows.chw), np.uint8)
        test = self.test.load() if self.test is not None else None
        return Dataset(self.name, x, self.y, self.num_classes, self.class_names, self.source, test)

    def describe(self) -> dict[str, object]:
        """JSON-ready summary (for run records and reports), as :meth:`nas.data.Dataset.describe`."""
        return {**summary(self, self.rows.chw, "uint8"), "streamed": True}

    def class_counts(self) -> np.ndarray:
        """Images per class, length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes)


def _assemble(name: str, source: str, train: tuple[Rows, np.ndarray], test: tuple[Rows, np.ndarray] | None,
              class_names: tuple[str, ...] | None) -> StreamDataset:
    """The streaming counterpart of ``_common.assemble``: the same class checks, on the labels alone."""
    if test is not None and test[0].chw != train[0].chw:
        raise DatasetError(f"{source}: test images {test[0].chw} differ from train {train[0].chw}")
    names = resolve_classes(source, train[1], None if test is None else test[1], class_names)
    k = len(names)
    test_ds = None if test is None else StreamDataset(f"{name}/test", test[0], test[1], k, names, source)
    return StreamDataset(name, train[0], train[1], k, names, source, test_ds)


def _uint8_only(where: str, dtype: np.dtype) -> None:
    if dtype != np.uint8:
        raise DatasetError(f"{where}: images of dtype {dtype} are too large for the memory limit, and only uint8 "
                           "images stream from disk; raise the memory limit or store the images as uint8")


def _layout(dims: tuple[int, ...], where: str) -> tuple[tuple[int, int, int], bool]:
    """The stored shape of one image (3 dims) and whether it is channels-last, for ``dims`` = (N, ...)."""
    last = channels_last(dims, where)
    stored = (1, *dims[1:]) if len(dims) == 3 else tuple(dims[1:])
    return (int(stored[0]), int(stored[1]), int(stored[2])), last


# --------------------------------------------------------------------------------------------- the cache


def source_fingerprint(path: Path) -> str:
    """16 hex digits over a file's size, modification time and its first and last MiB: a changed source gets a
    new cache file without hashing gigabytes on every open."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}|{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_SPAN))
        f.seek(max(st.st_size - _FINGERPRINT_SPAN, 0))
        h.update(f.read(_FINGERPRINT_SPAN))
    return h.hexdigest()[:16]


def _cache_dir(cache_dir: str | os.PathLike[str] | None, dataset: Path) -> Path:
    """The cache folder, refused when it lies inside the dataset folder (which must stay as the user made it)."""
    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    if dataset.is_dir() and folder.resolve().is_relative_to(dataset.resolve()):
        raise DatasetError(f"{folder}: the data cache must not lie inside the dataset folder {dataset}; "
                           "give a cache folder elsewhere")
    return folder


def _cache_file(cache_dir: Path, source: Path, stem: str, suffix: str) -> Path:
    """``cache_dir/<stem>.<source path hash>.<source_fingerprint><suffix>``; copies of earlier versions of the
    same source (same path hash, another fingerprint) are deleted, since nothing can read them any more."""
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
    target = cache_dir / f"{stem}.{where}.{source_fingerprint(source)}{suffix}"
    if cache_dir.is_dir():
        for old in cache_dir.glob(f"{glob.escape(stem)}.{where}.*{suffix}"):
            if old != target:
                old.unlink(missing_ok=True)
    return target


def _cached(target: Path, expected_size: int, fill: Callable[[str], object]) -> Path:
    """``target`` if it exists with ``expected_size`` bytes, else first written by ``fill(tmp)`` atomically."""
    if not (target.is_file() and target.stat().st_size == expected_size):
        write_atomic(target, fill)
    return target


def _idx_rows(path: Path, cache_dir: Path) -> tuple[FileRows, tuple[int, ...]]:
    """Image rows of an IDX file: read in place if uncompressed, else from a decompressed copy in ``cache_dir``."""
    with open_maybe_gzip(path) as stream:
        dtype, dims = read_header(stream, path)
    header = 4 + 4 * len(dims)
    if len(dims) not in (3, 4):
        raise DatasetError(f"{path}: image IDX must be 3-d (N,H,W), got shape {dims}")
    _uint8_only(str(path), dtype)
    stored, last = _layout(dims, str(path))
    expected = math.prod(dims)
    if not _is_plain(path):
        target = _cache_file(cache_dir, path, path.name.removesuffix(".gz"), ".idx")
        file = _cached(target, header + expected, lambda tmp: _decompress(path, tmp, dims, header + expected))
    else:
        present = path.stat().st_size - header
        if present < expected:
            raise truncated(path, dims, expected, present)
        if present > expected:
            raise trailing(path, dims, present - expected)
        file = path
    return FileRows(str(file), header, dims[0], stored, last), dims


def _is_plain(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) != b"\x1f\x8b"


def _decompress(path: Path, tmp: str, dims: tuple[int, ...], total: int) -> None:
    """Write the decompressed IDX file ``path`` to ``tmp`` a chunk at a time, checking its length as
    :func:`nas.data.read_idx` does."""
    written = 0
    with open_maybe_gzip(path) as stream, open(tmp, "wb") as out:
        while chunk := take(stream, READ_CHUNK, path):
            if written + len(chunk) > total:
                extra = written + len(chunk) - total
                while more := take(stream, READ_CHUNK, path):
                    extra += len(more)
                raise trailing(path, dims, extra)
            out.write(chunk)
            written += len(chunk)
    if written < total:
        header = 4 + 4 * len(dims)
        raise truncated(path, dims, total - header, max(written - header, 0))


def _idx_part(files: dict[tuple[str, str], Path], part: str, directory: Path,
              cache_dir: Path) -> tuple[FileRows, np.ndarray]:
    for kind in ("images", "labels"):
        if (part, kind) not in files:
            raise DatasetError(f"{directory}: has {part}-{'labels' if kind == 'images' else 'images'} "
                               f"but no {part}-{kind}-idx*-ubyte[.gz]")
    img_path, lab_path = files[(part, "images")], files[(part, "labels")]
    rows, dims = _idx_rows(img_path, cache_dir)
    y = to_labels(read_idx(lab_path), str(lab_path))
    if len(y) != dims[0]:
        raise DatasetError(f"{lab_path}: {len(y)} labels but {img_path} holds {dims[0]} images")
    if dims[0] == 0:
        raise DatasetError(f"{img_path}: no images")
    return rows, y


def open_idx_dir(directory: Path, cache_dir: str | os.PathLike[str] | None = None) -> StreamDataset:
    """An MNIST-style directory of IDX files, streamed (the counterpart of ``_idx.load_idx_dir``)."""
    files = find_idx(directory)
    if not files:
        raise DatasetError(f"{directory}: no IDX files (train-images-idx3-ubyte[.gz] ...)")
    if not any(part == "train" for part, _ in files):
        raise DatasetError(f"{directory}: IDX files present but no train-images / train-labels")
    cache = _cache_dir(cache_dir, directory)
    train = _idx_part(files, "train", directory, cache)
    test = _idx_part(files, "t10k", directory, cache) if any(p == "t10k" for p, _ in files) else None
    name, names = idx_names(directory)
    return _assemble(name, str(directory), train, test, names)


def idx_dir_bytes(directory: Path) -> int:
    """:func:`in_memory_bytes` of an IDX directory, from its image headers alone."""
    files = find_idx(directory)
    total = 0
    for part in ("train", "t10k"):
        if (part, "images") in files:
            path = files[(part, "images")]
            with open_maybe_gzip(path) as stream:
                _, dims = read_header(stream, path)
            if len(dims) in (3, 4):
                total += in_memory_bytes(dims[0], _layout(dims, str(path))[0])
    return total


# --------------------------------------------------------------------------------------------- npz


def _npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:  # noqa: ANN001 - a binary file object
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise DatasetError(f"{where}: not a readable .npy array ({exc})") from exc
    raise DatasetError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")


def _npz_keys(members: dict[str, str], path: Path) -> tuple[tuple[str, str], tuple[str, str] | None]:
    if "x" in members and "y" in members:
        return ("x", "y"), None
    if "x_train" in members and "y_train" in members:
        return ("x_train", "y_train"), ("x_test", "y_test")
    raise DatasetError(f"{path}: .npz needs arrays x and y (or x_train and y_train); found {sorted(members)}")


def _npz_rows(zf: zipfile.ZipFile, path: Path, member: str, key: str, cache_dir: Path) -> FileRows:
    """Image rows of one ``.npy`` member: in place if stored uncompressed, else from an extracted copy."""
    where = f"{path}[{key}]"
    info = zf.getinfo(member)
    with zf.open(member) as f:
        shape, fortran, dtype = _npy_header(f, where)
        header = f.tell()
    if len(shape) not in (3, 4):
        raise DatasetError(f"{where}: images must be 3-d (N,H,W) or 4-d, got shape {shape}")
    _uint8_only(where, dtype)
    if fortran and math.prod(shape[1:]) > 1:
        raise DatasetError(f"{where}: images stored in Fortran order do not stream from disk; raise the memory "
                           "limit or save them in C order")
    stored, last = _layout(tuple(shape), where)
    expected = math.prod(shape)
    if info.file_size - header != expected:
        raise DatasetError(f"{where}: truncated: header declares shape {shape} ({expected} bytes of {dtype}) but "
                           f"{info.file_size - header} bytes follow")
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
        with open(path, "rb") as raw:  # the member's data starts after its local header, whose extra field varies
            raw.seek(info.header_offset)
            local = raw.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DatasetError(f"{where}: damaged zip local header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        return FileRows(str(path), info.header_offset + 30 + name_len + extra_len + header, shape[0], stored, last)

    def extract(tmp: str) -> None:
        with zf.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, READ_CHUNK)

    target = _cache_file(cache_dir, path, f"{path.stem}.{key}", ".npy")
    file = _cached(target, info.file_size, extract)
    return FileRows(str(file), header, shape[0], stored, last)


def _npz_labels(zf: zipfile.ZipFile, path: Path, member: str, key: str) -> np.ndarray:
    return to_labels(_npz_array(zf, member, f"{path}[{key}]"), f"{path}[{key}]")


def open_npz(path: Path, cache_dir: str | os.PathLike[str] | None = None) -> StreamDataset:
    """An ``.npz`` streamed (the counterpart of ``_files.load_npz``)."""
    cache = _cache_dir(cache_dir, path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
            train_keys, test_keys = _npz_keys(members, path)

            def part(keys: tuple[str, str]) -> tuple[FileRows, np.ndarray]:
                rows = _npz_rows(zf, path, members[keys[0]], keys[0], cache)
                y = _npz_labels(zf, path, members[keys[1]], keys[1])
                if len(y) != rows.count:
                    raise DatasetError(f"{path}[{keys[1]}]: {len(y)} labels but {path}[{keys[0]}] holds "
                                       f"{rows.count} images")
                if rows.count == 0:
                    raise DatasetError(f"{path}[{keys[0]}]: no images")
                return rows, y

            test = None
            if test_keys is not None and (test_keys[0] in members or test_keys[1] in members):
                if not (test_keys[0] in members and test_keys[1] in members):
                    raise DatasetError(f"{path}: has only one of x_test / y_test")
                test = part(test_keys)
            train = part(train_keys)
            names = None
            if "class_names" in members:
                raw = _npz_array(zf, members["class_names"], f"{path}[class_names]")
                if raw.ndim != 1:
                    raise DatasetError(f"{path}[class_names]: expected a 1-d array of names, got shape {raw.shape}")
                names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw.tolist())
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable .npz ({exc})") from exc
    return _assemble(path.stem, str(path), train, test, names)


def npz_bytes(path: Path) -> int:
    """:func:`in_memory_bytes` of an ``.npz``, from its image headers alone (0 when it has none to read)."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
            for key in ("x", "x_train", "x_test"):
                if key in members:
                    with zf.open(members[key]) as f:
                        shape, _, dtype = _npy_header(f, f"{path}[{key}]")
                    if len(shape) in (3, 4):
                        # float images stay float32 in memory: 4 bytes plus their 4-byte tensors
                        per = 1 if dtype == np.uint8 else 8 / 5
                        total += int(in_memory_bytes(shape[0], _layout(tuple(shape), str(path))[0]) * per)
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error):
        return 0  # the in-memory reader names the problem
    return total


# --------------------------------------------------------------------------------------------- image folders


def _scan_tree(root: Path, class_names: tuple[str, ...] | None) -> tuple[list[str], np.ndarray, tuple, tuple]:
    """Files, labels, class names and image shape (C, H, W) of root/<class>/*, from the image headers alone."""
    files, labels, names = tree_files(root, class_names)
    size: tuple[int, int] | None = None  # the first image's (each_image checks the others match it)
    colour = False

    def scan(im: Any) -> None:
        nonlocal size, colour
        size = size or im.size
        colour = colour or not is_gray(im.mode)

    each_image(files, scan)
    assert size is not None  # tree_files refuses empty class folders
    w, h = size
    return [str(f) for f in files], np.asarray(labels, dtype=np.int64), names, (3 if colour else 1, h, w)


def _folder_layout(root: Path) -> tuple[Path, Path | None]:
    """(train tree, test tree or None), as ``_files.load_image_folder`` reads them."""
    sub = {d.name.lower(): d for d in _visible_dirs(root)}
    train_dir, test_dir = sub.get("train"), sub.get("test") or sub.get("val")
    if train_dir is not None and test_dir is not None and looks_like_image_folder(train_dir):
        return train_dir, test_dir
    return root, None


def open_image_folder(root: Path) -> StreamDataset:
    """``root/<class>/*`` (or ``root/train`` + ``root/test``) streamed: the headers are checked now, the images
    decoded per batch (the counterpart of ``_files.load_image_folder``)."""
    train_dir, test_dir = _folder_layout(root)
    files, y, names, chw = _scan_tree(train_dir, None)
    test = None
    if test_dir is not None:
        tfiles, ty, _, tchw = _scan_tree(test_dir, names)
        if tchw != chw:
            raise DatasetError(f"{test_dir}: images {tchw} differ from {train_dir} images {chw}")
        test = (FolderRows(tuple(tfiles), tchw), ty)
    return _assemble(root.name, str(root), (FolderRows(tuple(files), chw), y), test, names)


def image_folder_bytes(root: Path) -> int:
    """:func:`in_memory_bytes` of an image folder: its image count times the first image's size (no decoding)."""
    from PIL import Image

    total = 0
    train_dir, test_dir = _folder_layout(root)
    for tree in (train_dir, test_dir):
        if tree is None:
            continue
        files = [f for d in _visible_dirs(tree) for f in _image_files(d)]
        if not files:
            continue
        try:
            with Image.open(files[0]) as im:
                w, h = im.size
                c = 1 if is_gray(im.mode) else 3
        except Exception:  # noqa: BLE001 - the reader that follows names the unreadable file
            return 0
        total += in_memory_bytes(len(files), (c, h, w))
    return total
