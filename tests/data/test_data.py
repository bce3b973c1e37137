"""Tests for nas.data: real-format fixture files built from scikit-learn's digits, splits, and tensors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nas.data import (
    Augment,
    Dataset,
    DatasetError,
    Splits,
    TensorSplits,
    channel_stats,
    load_dataset,
    load_digits,
    read_idx,
    split,
    split_indices,
)

N_TRAIN = 1500  # first 1,500 digits play "train", the remaining 297 the official test set


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def gray(digits) -> np.ndarray:
    """Digits scaled to 0..255 as (N, 8, 8) uint8, the way an MNIST-like file would store them."""
    return (digits.x[:, 0].astype(np.int64) * 255 // 16).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb32(digits) -> np.ndarray:
    """Digits upsampled 4x to 32x32 and tinted per channel, as (N, 3, 32, 32) uint8 (CIFAR geometry)."""
    big = np.repeat(np.repeat(digits.x[:, 0], 4, axis=1), 4, axis=2).astype(np.int64) * 255 // 16
    return np.stack([big, big * 3 // 4, big // 2], axis=1).astype(np.uint8)


# --------------------------------------------------------------------------------------------- writers


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(root: Path, images: np.ndarray, labels: np.ndarray, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    gz = ".gz" if compress else ""
    write_idx(root / f"train-images-idx3-ubyte{gz}", images[:N_TRAIN], compress)
    write_idx(root / f"train-labels-idx1-ubyte{gz}", labels[:N_TRAIN], compress)
    write_idx(root / f"t10k-images-idx3-ubyte{gz}", images[N_TRAIN:], compress)
    write_idx(root / f"t10k-labels-idx1-ubyte{gz}", labels[N_TRAIN:], compress)
    return root


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """The cifar-10-batches-py layout: five train batches, test_batch, batches.meta (bytes keys)."""
    root.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(N_TRAIN), 5), start=1):
        batch = {
            b"batch_label": b"training batch",
            b"labels": [int(v) for v in y[part]],
            b"data": x[part].reshape(len(part), -1),
            b"filenames": [b"f"] * len(part),
        }
        _dump(root / f"data_batch_{i}", batch)
    _dump(
        root / "test_batch",
        {b"labels": [int(v) for v in y[N_TRAIN:]], b"data": x[N_TRAIN:].reshape(len(x) - N_TRAIN, -1)},
    )
    _dump(root / "batches.meta", {b"label_names": [f"digit{i}".encode() for i in range(10)], b"num_vis": 3072})
    return root


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i:05d}.png")
    return root


def folder_order(labels: np.ndarray) -> np.ndarray:
    """Order an image folder reads back: by class folder, then by file name (= original index)."""
    return np.lexsort((np.arange(len(labels)), labels))


# ---------------------------------------------------------------------------------------------- loading


def test_digits_builtin(digits):
    assert len(digits) == 1797 and digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.dtype == np.uint8 and digits.y.dtype == np.int64
    assert digits.x.min() == 0 and digits.x.max() == 16
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.resolution == (8, 8)
    assert digits.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert load_dataset("digits").x.tobytes() == digits.x.tobytes()


def test_digits_read_directly_equal_sklearns_loader(monkeypatch):
    from sklearn.datasets import load_digits as sk_load_digits

    import nas.data.formats as formats

    ref = sk_load_digits()
    assert formats._read_sklearn_digits_csv() is not None  # this scikit-learn ships the file where we look
    direct = formats.load_digits()  # reads scikit-learn's CSV file without importing sklearn.datasets
    assert np.array_equal(direct.x[:, 0], ref.images) and np.array_equal(direct.y, ref.target)
    monkeypatch.setattr(formats, "_read_sklearn_digits_csv", lambda: None)  # a scikit-learn without the file
    fallback = formats.load_digits()
    assert fallback.x.tobytes() == direct.x.tobytes() and np.array_equal(fallback.y, direct.y)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx(tmp_path, digits, gray, compress):
    root = write_mnist(tmp_path / "mnist", gray, digits.y, compress)
    ds = load_dataset(root)
    assert ds.name == "mnist" and ds.x.shape == (N_TRAIN, 1, 8, 8)
    assert ds.describe()["test_images"] == 1797 - N_TRAIN
    np.testing.assert_array_equal(ds.x[:, 0], gray[:N_TRAIN])
    np.testing.assert_array_equal(ds.y, digits.y[:N_TRAIN])
    assert ds.test is not None
    np.testing.assert_array_equal(ds.test.x[:, 0], gray[N_TRAIN:])
    np.testing.assert_array_equal(ds.test.y, digits.y[N_TRAIN:])
    # a single IDX file path finds its siblings
    gz = ".gz" if compress else ""
    assert len(load_dataset(root / f"train-images-idx3-ubyte{gz}")) == N_TRAIN


def test_fashion_named_dir_and_raw_subfolder(tmp_path, digits, gray):
    write_mnist(tmp_path / "FashionMNIST" / "raw", gray, digits.y)
    ds = load_dataset(tmp_path / "FashionMNIST")
    assert ds.name == "fashion-mnist" and ds.class_names[9] == "Ankle boot"


def test_cifar10_dir_and_tar(tmp_path, digits, rgb32):
    root = write_cifar10(tmp_path / "cifar-10-batches-py", rgb32, digits.y)
    ds = load_dataset(root)
    assert ds.name == "cifar10" and ds.x.shape == (N_TRAIN, 3, 32, 32) and ds.in_channels == 3
    np.testing.assert_array_equal(ds.x, rgb32[:N_TRAIN])
    np.testing.assert_array_equal(ds.y, digits.y[:N_TRAIN])
    np.testing.assert_array_equal(ds.test.x, rgb32[N_TRAIN:])
    assert ds.class_names == tuple(f"digit{i}" for i in range(10))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py")
    from_tar = load_dataset(archive)
    np.testing.assert_array_equal(from_tar.x, ds.x)
    np.testing.assert_array_equal(from_tar.test.y, ds.test.y)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with _raises(cut, "truncated"):
        load_dataset(cut)


def test_cifar100(tmp_path, digits, rgb32):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, part in (("train", slice(0, N_TRAIN)), ("test", slice(N_TRAIN, None))):
        _dump(
            root / name,
            {
                b"data": rgb32[part].reshape(-1, 3072),
                b"fine_labels": digits.y[part].tolist(),
                b"coarse_labels": (digits.y[part] // 5).tolist(),
            },
        )
    _dump(
        root / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(10)],
            b"coarse_label_names": [b"low", b"high"],
        },
    )
    ds = load_dataset(root)
    assert ds.name == "cifar100" and ds.class_names[3] == "f3"
    np.testing.assert_array_equal(ds.x, rgb32[:N_TRAIN])
    np.testing.assert_array_equal(ds.test.y, digits.y[N_TRAIN:])


def test_npz_layouts(tmp_path, digits, gray, rgb32):
    np.savez(tmp_path / "flat.npz", x=gray, y=digits.y)
    ds = load_dataset(tmp_path / "flat.npz")
    np.testing.assert_array_equal(ds.x[:, 0], gray)
    assert ds.test is None and ds.name == "flat"
    nhwc = rgb32.transpose(0, 2, 3, 1)
    np.savez_compressed(
        tmp_path / "split.npz",
        x_train=nhwc[:N_TRAIN],
        y_train=digits.y[:N_TRAIN],
        x_test=nhwc[N_TRAIN:],
        y_test=digits.y[N_TRAIN:],
        class_names=np.array(list("abcdefghij")),
    )
    ds = load_dataset(tmp_path / "split.npz")
    np.testing.assert_array_equal(ds.x, rgb32[:N_TRAIN])
    np.testing.assert_array_equal(ds.test.x, rgb32[N_TRAIN:])
    assert ds.class_names[0] == "a"
    np.savez(tmp_path / "nchw_float.npz", x=rgb32.astype(np.float32) / 255, y=digits.y)
    ds = load_dataset(tmp_path / "nchw_float.npz")
    assert ds.x.dtype == np.float32 and ds.x.shape == (1797, 3, 32, 32)


def test_image_folder_gray_and_rgb(tmp_path, digits, gray, rgb32):
    root = write_image_folder(tmp_path / "gray", gray, digits.y)
    ds = load_dataset(root)
    order = folder_order(digits.y)
    assert ds.class_names == tuple(f"class_{i}" for i in range(10))
    np.testing.assert_array_equal(ds.x[:, 0], gray[order])
    np.testing.assert_array_equal(ds.y, digits.y[order])
    keep = np.arange(200)
    write_image_folder(tmp_path / "rgb" / "train", rgb32[keep].transpose(0, 2, 3, 1), digits.y[keep])
    test = np.arange(200, 260)
    write_image_folder(tmp_path / "rgb" / "test", rgb32[test].transpose(0, 2, 3, 1), digits.y[test])
    ds = load_dataset(tmp_path / "rgb")
    np.testing.assert_array_equal(ds.x, rgb32[keep][folder_order(digits.y[keep])])
    np.testing.assert_array_equal(ds.test.y, digits.y[test][folder_order(digits.y[test])])


def test_named_lookup_via_env(tmp_path, monkeypatch, digits, gray):
    write_mnist(tmp_path / "fashion-mnist", gray, digits.y)
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path))
    assert load_dataset("fashion_mnist").name == "fashion-mnist"


# ----------------------------------------------------------------------------------------- bad inputs


def _raises(match_path: Path | str, *extra: str):
    """Expect a DatasetError whose message contains the path and every extra fragment."""
    wanted = "".join(f"(?=.*{re.escape(s)})" for s in (str(match_path), *extra))
    return pytest.raises(DatasetError, match="(?s)" + wanted)


def test_truncated_idx(tmp_path, digits, gray):
    root = write_mnist(tmp_path / "m", gray, digits.y, compress=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with _raises(path, "truncated"):
        load_dataset(root)
    gz_root = write_mnist(tmp_path / "g", gray, digits.y)
    gz_path = gz_root / "t10k-labels-idx1-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:20])
    with _raises(gz_path, "truncated"):
        load_dataset(gz_root)


def test_bad_magic_and_trailing_bytes(tmp_path, gray):
    path = write_idx(tmp_path / "x-idx3-ubyte", gray)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0] = 1
    path.write_bytes(bytes(raw))
    with _raises(path, "magic"):
        read_idx(path)
    raw[0] = 0
    path.write_bytes(bytes(raw) + b"xx")
    with _raises(path, "unexpected bytes"):
        read_idx(path)


def test_label_count_mismatch(tmp_path, digits, gray):
    root = write_mnist(tmp_path / "m", gray, digits.y)
    write_idx(root / "train-labels-idx1-ubyte.gz", digits.y[: N_TRAIN - 1])
    with _raises(root / "train-labels-idx1-ubyte.gz", f"{N_TRAIN - 1} labels", f"{N_TRAIN} images"):
        load_dataset(root)
    np.savez(tmp_path / "bad.npz", x=gray, y=digits.y[:5])
    with _raises(tmp_path / "bad.npz", "5 labels"):
        load_dataset(tmp_path / "bad.npz")


def test_missing_path_and_unknown_format(tmp_path):
    with _raises(tmp_path / "nope", "no such file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with _raises(tmp_path / "junk", "no recognisable dataset format", "IDX", "CIFAR-10", "npz", "image folder"):
        load_dataset(tmp_path / "junk")


def test_empty_class_folder_and_bad_image(tmp_path, digits, gray):
    root = write_image_folder(tmp_path / "f", gray[:30], digits.y[:30])
    (root / "class_9" / "00029.png").unlink(missing_ok=True)
    empty = root / "zz_empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with _raises(empty, "empty class folder"):
        load_dataset(root)
    (empty / "notes.txt").unlink()
    empty.rmdir()
    bad = root / "class_0" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with _raises(bad, "unreadable image"):
        load_dataset(root)


def test_cifar_missing_batch_and_hostile_pickle(tmp_path, digits, rgb32):
    root = write_cifar10(tmp_path / "c", rgb32, digits.y)
    (root / "data_batch_3").unlink()
    with _raises(root, "missing data_batch_3"):
        load_dataset(root)
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": os.getcwd}))  # names a callable
    with _raises(root / "data_batch_3", "not a readable CIFAR pickle"):
        load_dataset(root)


def test_npz_without_known_keys(tmp_path, gray):
    np.savez(tmp_path / "k.npz", images=gray)
    with _raises(tmp_path / "k.npz", "found", "images"):
        load_dataset(tmp_path / "k.npz")


# ------------------------------------------------------- labels and sizes read from files (issue #28)

TWO = np.arange(19) % 2  # 19 good labels; each case appends one more for the 20th image


@pytest.mark.parametrize(
    "last, fragment",
    [
        (100_000, "label 100000 implies 100001 classes but there are only 20 images"),
        (1.5, "found 1.5 at position 19"),
        (np.nan, "found nan at position 19"),
        (np.inf, "found inf at position 19"),
        (np.uint64(2**63 + 5), "label 9223372036854775813 is far too large"),
    ],
)
def test_npz_labels_must_be_class_indices_bounded_by_the_images(tmp_path, gray, last, fragment):
    """A stray huge label used to allocate one class name per value (1000000000: 24 GB); inf wrapped to a
    negative int64 and uint64 past int64 likewise, so their errors named the wrong value."""
    y = np.append(TWO.astype(np.asarray(last).dtype), last)
    np.savez(tmp_path / "l.npz", x=gray[:20], y=y)
    with _raises(tmp_path / "l.npz", fragment):
        load_dataset(tmp_path / "l.npz")


def test_labels_bound_covers_the_official_test_part_and_named_classes(tmp_path, digits, gray):
    np.savez(tmp_path / "t.npz", x_train=gray[:20], y_train=TWO.tolist() + [1], x_test=gray[20:30],
             y_test=[0] * 9 + [5000])
    with _raises(tmp_path / "t.npz", "label 5000 implies 5001 classes but there are only 30 images"):
        load_dataset(tmp_path / "t.npz")
    np.savez(tmp_path / "n.npz", x=gray[:20], y=TWO.tolist() + [1], class_names=np.array([f"c{i}" for i in range(30)]))
    with _raises(tmp_path / "n.npz", "30 class names but only 20 images"):
        load_dataset(tmp_path / "n.npz")
    (tmp_path / "m").mkdir()
    write_idx(tmp_path / "m" / "train-images-idx3-ubyte.gz", gray[:20])
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.append(TWO, 255))
    with _raises(tmp_path / "m", "label 255 implies 256 classes but there are only 20 images"):
        load_dataset(tmp_path / "m")


def _idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_idx_header_dims_cannot_overflow_into_a_plausible_size(tmp_path):
    """(2**31)**3 * 1 byte wrapped to 0 in int64, so an empty body 'matched' and reshape failed with a bare
    ValueError; the declared size is now exact and compared with the bytes present."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_header(0x08, (2**31, 2**31, 2**31)))
    with _raises(path, "truncated", "(2147483648, 2147483648, 2147483648)", "0 bytes follow"):
        read_idx(path)


def test_gzipped_idx_inflates_no_further_than_the_header_declares(tmp_path):
    """A 64 KB .gz holding 4 label bytes and then 64 MiB of zeros used to be inflated whole before any check."""
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(0x08, (4,)) + bytes([0, 1, 0, 1]) + bytes(64 << 20), 1))
    tracemalloc.start()
    try:
        with _raises(path, f"{64 << 20} unexpected bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading a {path.stat().st_size}-byte file peaked at {peak >> 20} MiB"


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npz_header_shape_is_checked_against_the_stored_bytes(tmp_path):
    """np.load allocates the declared shape first: this 700-byte file asked for 8 TB (MemoryError)."""
    path = tmp_path / "bomb.npz"
    labels = io.BytesIO()
    np.save(labels, np.zeros(10, np.int64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header("<f8", (10**12,)) + bytes(80))
        z.writestr("y.npy", labels.getvalue())
    with _raises(f"{path}[x]", "truncated", "(1000000000000,)", "only 80 bytes follow"):
        load_dataset(path)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` 8-bit gray, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + end)


@pytest.mark.parametrize("side, fragment", [(5000, "declares 5000x5000 pixels"), (50000, "pixels")])
def test_image_folder_refuses_a_huge_declared_size_before_decoding(tmp_path, side, fragment):
    """A few-byte PNG can declare any size; 50000x50000 even made PIL raise an exception nothing caught."""
    (tmp_path / "f" / "a").mkdir(parents=True)
    _png_header_only(tmp_path / "f" / "a" / "big.png", side, side)
    with _raises(tmp_path / "f" / "a" / "big.png", fragment):
        load_dataset(tmp_path / "f")


# --------------------------------------------------------------------------------------------- splits


def test_split_deterministic_disjoint_stratified(digits):
    a, b, c = split(digits, seed=3), split(digits, seed=3), split(digits, seed=4)
    assert a.train.x.tobytes() == b.train.x.tobytes() and a.val.y.tobytes() == b.val.y.tobytes()
    assert a.val.x.tobytes() != c.val.x.tobytes()
    tr, va, te = split_indices(digits.y, 3, 0.1, 0.1)
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(1797))
    assert len(te) == 179 and len(va) == 179 and not a.official_test
    assert a.describe() == {"seed": 3, "official_test": False, "train": 1439, "val": 179, "test": 179}
    for part in (a.val, a.test):  # each class within one image of its 10% share
        assert np.all(np.abs(part.class_counts() - digits.class_counts() * 0.1) <= 1)


def test_split_uses_official_test(tmp_path, digits, gray):
    ds = load_dataset(write_mnist(tmp_path / "m", gray, digits.y))
    s = split(ds, seed=0, val_fraction=0.2, test_fraction=0.5)
    assert s.official_test and len(s.test) == 1797 - N_TRAIN and len(s.val) == 300
    assert len(s.train) + len(s.val) == N_TRAIN


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=300),
    val=st.floats(0, 0.45),
    test=st.floats(0, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_indices_partition(labels, val, test, seed):
    y = np.array(labels)
    parts = split_indices(y, seed, val, test)
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(y)))
    for again, first in zip(split_indices(y, seed, val, test), parts, strict=True):
        np.testing.assert_array_equal(again, first)


def test_split_rejects_bad_fractions(digits):
    with pytest.raises(ValueError, match="val_fraction"):
        split(digits, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize(
    "labels, fragments",
    [
        ([3] * 40, ["cannot split 40 images", "the data has 1 class", "train 32 images in 1 class",
                    "images per class: 0: 0, 1: 0, 2: 0, 3: 40"]),
        ([0, 1, 2], ["cannot split 3 images", "val would be empty; test would be empty",
                     "train 3 images in 3 classes, val 0 images in 0 classes, test 0 images in 0 classes",
                     "images per class: 0: 1, 1: 1, 2: 1"]),
        ([0] * 30 + [1] * 3, ["val would hold 1 class", "0: 30, 1: 3"]),
    ],
)
def test_split_refuses_parts_that_cannot_train_or_score(tmp_path, gray, labels, fragments):
    """One class scored every trial 1.000; 3 images gave an empty val split, every trial 0.000 and exit 0."""
    path = tmp_path / "small.npz"
    np.savez(path, x=gray[: len(labels)], y=np.array(labels))
    with _raises(path, *fragments):
        split(load_dataset(path))


def test_split_with_official_test_checks_train_and_val(tmp_path, gray):
    path = tmp_path / "official.npz"
    np.savez(path, x_train=gray[:4], y_train=[0, 1, 0, 1], x_test=gray[4:8], y_test=[0, 1, 0, 1])
    with _raises(path, "val would be empty", "test is the official test set"):
        split(load_dataset(path))


def test_splits_refuse_an_empty_part(digits):
    """Built by hand (the Python API), an empty part would reach the scorers' division by its size."""
    s = split(digits, seed=0)
    with pytest.raises(DatasetError, match="the val split is empty"):
        Splits(s.train, s.val.subset(np.arange(0)), s.test, seed=0, official_test=False)
    ds = Dataset("d", digits.x[:0], digits.y[:0], 10, digits.class_names)
    with pytest.raises(DatasetError, match="cannot split 0 images"):
        split(ds)


# -------------------------------------------------------------------------------------------- tensors


def test_tensor_splits_normalise_resize_cache(digits):
    s = split(digits, seed=0)
    ts = TensorSplits(s)
    x8, y8 = ts.tensors("train")
    assert x8.dtype == torch.float32 and x8.shape == (len(s.train), 1, 8, 8) and y8.dtype == torch.int64
    assert abs(float(x8.mean())) < 1e-5 and abs(float(x8.std()) - 1) < 1e-3  # stats come from train
    raw = s.train.x.astype(np.float64)
    np.testing.assert_allclose(ts.mean, [raw.mean()]) and np.testing.assert_allclose(ts.std, [raw.std()])
    x32, _ = ts.tensors("val", 32)
    assert x32.shape == (len(s.val), 1, 32, 32) and ts.tensors("val", (32, 32))[0] is x32
    ref = F.interpolate((torch.from_numpy(s.val.x).float() - ts.mean[0]) / ts.std[0], size=(32, 32), mode="bilinear")
    torch.testing.assert_close(x32, ref, rtol=1e-5, atol=1e-5)
    assert ts.tensors("test", 6)[0].shape[-2:] == (6, 6)  # downsampling (antialiased)
    m, _ = channel_stats(s.val)
    assert m.shape == (1,)


def test_train_batches_epochs_and_determinism(digits):
    ts = TensorSplits(split(digits, seed=0))
    x, y = ts.tensors("train")
    source = ts.train_batches(100, seed=7)
    assert len(source) == -(-len(x) // 100)
    epoch0 = torch.cat([b.y for b in source.batches(0)])
    epoch1 = torch.cat([b.y for b in source.batches(1)])
    assert sorted(epoch0.tolist()) == sorted(y.tolist()) and not torch.equal(epoch0, epoch1)
    again = ts.train_batches(100, seed=7)
    assert torch.equal(torch.cat([b.y for b in again.batches(1)]), epoch1)  # an epoch is a function of (seed, epoch)
    plain = list(ts.train_batches(64, shuffle=False, drop_last=True).batches(0))
    assert len(plain) == len(x) // 64 and torch.equal(plain[1].x, x[64:128])


def test_augment_shift_is_a_crop_of_the_padded_image(digits):
    x = torch.from_numpy(digits.x[:16]).float()
    out = Augment(pad=2)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    shifted = 0
    for i in range(len(x)):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        matches = [k for k, c in enumerate(crops) if torch.equal(c, out[i])]
        assert matches, f"image {i} is not a crop of its padded self"
        shifted += 12 not in matches  # index 12 = (2, 2) = no shift
    assert shifted > 8
    flipped = Augment(flip=True)(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x, strict=True))
    ts = TensorSplits(split(digits, seed=0))
    source = ts.train_batches(8, augment=Augment(pad=1, flip=True), seed=1)
    first = list(source.batches(0))
    assert len(first) == len(source) and first[0].x.shape == (8, 1, 8, 8)
    twin = ts.train_batches(8, augment=Augment(pad=1, flip=True), seed=1)
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, twin.batches(0), strict=True))  # augmentation is seeded
    x_train = ts.tensors("train")[0]
    assert any(not torch.equal(b.x, x_train[b.idx]) for b in first)  # and really applied
    assert torch.equal(x, torch.from_numpy(digits.x[:16]).float())  # the source tensor is left untouched


# ------------------------------------------------------------------------------------------- real data

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
REAL = {
    "fashion-mnist": (60000, 10000, (1, 28, 28), 10),
    "mnist": (60000, 10000, (1, 28, 28), 10),
    "cifar10": (50000, 10000, (3, 32, 32), 10),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_copy_loads(name):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} does not exist")
    try:
        ds = load_dataset(name)
    except DatasetError as exc:
        if "no such file" in str(exc):
            pytest.skip(f"no {name} copy under {SHARED}")
        raise
    n_train, n_test, shape, classes = REAL[name]
    assert len(ds) == n_train and ds.test is not None and len(ds.test) == n_test
    assert ds.x.shape[1:] == shape and ds.num_classes == classes
    assert np.all(ds.class_counts() > 0)


def test_pipeline_keeps_images_and_labels_aligned(digits):
    """A linear classifier trained through split -> TensorSplits -> train_batches must learn real digits."""
    torch.manual_seed(0)
    ts = TensorSplits(split(digits, seed=0))
    x, y = ts.tensors("train", 16)
    xv, yv = ts.tensors("val", 16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    source = ts.train_batches(64, resolutions=(16,), seed=0, augment=Augment(pad=1))
    for epoch in range(5):
        for batch in source.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(batch.x), batch.y).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    assert accuracy > 0.85, accuracy
