"""Datasets larger than a memory limit stream from disk: chosen by the limit, bounded memory, and the same splits,
statistics, batches (order, values, augmentation) and errors as the in-memory path."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import (
    Augment,
    Dataset,
    DatasetError,
    DataSpec,
    StreamDataset,
    StreamSplits,
    TensorSplits,
    channel_stats,
    data_source,
    load_dataset,
    parse_memory_limit,
    split,
)
from nas.data.stream import in_memory_bytes
from nas.data.tensors import epoch_order

CAP = 2_000_000  # bytes: every generated dataset here needs several times more in memory
FASHION = Path("/work/shared/datasets/fashion-mnist")
SHIFT_FLIP = Augment(pad=2, flip=True)


def write_idx(path: Path, arr: np.ndarray, compress: bool = False) -> Path:
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)
    return path


def write_pair(root: Path, x: np.ndarray, y: np.ndarray, part: str = "train", compress: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    gz = ".gz" if compress else ""
    write_idx(root / f"{part}-images-idx3-ubyte{gz}", x, compress)
    write_idx(root / f"{part}-labels-idx1-ubyte{gz}", y, compress)
    return root


def images(n: int, h: int, w: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, classes, n).astype(np.uint8)


@pytest.fixture(scope="module")
def big_idx(tmp_path_factory) -> Path:
    """20,000 random 32x32 images (20 MB as uint8, ~100 MB on the in-memory path) plus a 1,000-image t10k set."""
    root = tmp_path_factory.mktemp("big") / "gen"
    write_pair(root, *images(20_000, 32, 32, 0))
    write_pair(root, *images(1_000, 32, 32, 1), part="t10k")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """600 32x32 PNGs in 3 class folders, a few of them gray (read as RGB beside the colour ones)."""
    root = tmp_path_factory.mktemp("folder") / "shapes"
    rng = np.random.default_rng(2)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(200):
            if i % 50 == 0:
                Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(root / f"class{c}/{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(
                    root / f"class{c}/{i}.png")
    return root


def rss_anon() -> int:
    """Anonymous resident memory of this process in bytes (file pages in the page cache excluded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


def same_parts(a, b) -> None:
    """Two Splits hold the same labels and images, part by part."""
    for part in ("train", "val", "test"):
        pa, pb = getattr(a, part), getattr(b, part)
        np.testing.assert_array_equal(pa.y, pb.y)
        xa = pa.load().x if isinstance(pa, StreamDataset) else pa.x
        xb = pb.load().x if isinstance(pb, StreamDataset) else pb.x
        np.testing.assert_array_equal(xa, xb)


def same_batches(mem: TensorSplits, st: StreamSplits, epochs=(0, 1), batch_size=256, resolutions=(None, 24),
                 augment: Augment | None = SHIFT_FLIP) -> int:
    """The in-memory and streamed batches of `epochs` are equal, value for value; returns the batches compared."""
    a = mem.train_batches(batch_size, resolutions=resolutions, seed=5, augment=augment, drop_last=True)
    b = st.train_batches(batch_size, resolutions=resolutions, seed=5, augment=augment, drop_last=True)
    assert len(a) == len(b) > 0
    count = 0
    for epoch in epochs:
        for ba, bb in zip(a.batches(epoch), b.batches(epoch), strict=True):
            assert ba.xs.keys() == bb.xs.keys()
            for size in ba.xs:
                assert torch.equal(ba.xs[size], bb.xs[size]), (epoch, count, size)
            assert torch.equal(ba.y, bb.y) and torch.equal(ba.idx, bb.idx)
            count += 1
    for (xa, ya), (xb, yb) in zip(mem.eval_batches("val", 20, 100), st.eval_batches("val", 20, 100), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    return count


# --------------------------------------------------------------------------------------------- the limit


def test_memory_limits_parse_and_bad_ones_are_named():
    assert parse_memory_limit("2GiB") == 2 * 2**30
    assert parse_memory_limit("500MB") == 500 * 10**6
    assert parse_memory_limit("1.5G") == 1_500_000_000
    assert parse_memory_limit("123456") == 123456
    assert 0 < parse_memory_limit("25%") <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    for bad in ("", "lots", "2 parsecs", "-1GB", "0", "150%", "0%"):
        with pytest.raises(ValueError, match="expected"):
            parse_memory_limit(bad)


def test_small_data_stays_in_memory_and_large_data_streams(big_idx):
    assert isinstance(load_dataset(big_idx), Dataset)  # no limit: today's path
    assert isinstance(load_dataset(big_idx, memory_limit=10**12), Dataset)
    assert isinstance(load_dataset("digits", memory_limit=1), Dataset)  # built in: always in memory
    streamed = load_dataset(big_idx, memory_limit=CAP)
    assert isinstance(streamed, StreamDataset) and isinstance(streamed.test, StreamDataset)
    assert in_memory_bytes(len(streamed), streamed.rows.chw) > 20 * CAP
    # read in place: no copy of an uncompressed file is made
    assert streamed.rows.path == str(big_idx / "train-images-idx3-ubyte")


# --------------------------------------------------------------------------------------------- same data


def test_streamed_idx_splits_stats_and_batches_equal_the_in_memory_ones(big_idx):
    mem_splits = split(load_dataset(big_idx), seed=3)
    st_splits = split(load_dataset(big_idx, memory_limit=CAP), seed=3)
    assert st_splits.official_test and st_splits.describe() == mem_splits.describe()
    same_parts(mem_splits, st_splits)
    mem = TensorSplits(mem_splits)
    st = data_source(st_splits, workers=0)
    assert isinstance(st, StreamSplits)
    # exactly equal, not merely close: the normalised values below depend on them bit for bit
    assert np.array_equal(st.mean, mem.mean) and np.array_equal(st.std, mem.std)
    assert same_batches(mem, st) == 2 * (len(mem_splits.train) // 256)
    with pytest.raises(DatasetError, match="streamed from disk"):
        st.tensors("train")


def test_two_workers_give_the_batches_of_none(big_idx):
    mem = TensorSplits(split(load_dataset(big_idx), seed=3))
    st = StreamSplits(split(load_dataset(big_idx, memory_limit=CAP), seed=3), workers=2)
    assert np.array_equal(st.mean, mem.mean) and np.array_equal(st.std, mem.std)
    same_batches(mem, st, epochs=(2,), batch_size=500)


def test_memory_batches_follow_the_epoch_order(big_idx):
    """Batch k of epoch e holds images k*b..(k+1)*b of epoch_order(seed, e): a permutation that changes per epoch
    (the order training used before the batch sources, so seeded runs repeat their results)."""
    mem = TensorSplits(split(load_dataset(big_idx), seed=3))
    x, y = mem.tensors("train")
    source = mem.train_batches(256, seed=7, drop_last=True)
    order = epoch_order(len(y), 7, 4)
    assert sorted(order.tolist()) == list(range(len(y))) and not np.array_equal(order, epoch_order(len(y), 7, 5))
    batches = list(source.batches(4))
    assert len(batches) == len(y) // 256
    for k, batch in enumerate(batches):
        idx = torch.from_numpy(order[k * 256 : (k + 1) * 256])
        assert torch.equal(idx, batch.idx) and torch.equal(y[idx], batch.y) and torch.equal(x[idx], batch.x)


def test_an_epoch_streams_in_bounded_memory(big_idx):
    before = rss_anon()
    data = load_dataset(big_idx, memory_limit=CAP)
    st = StreamSplits(split(data, seed=0), workers=0)
    peak, seen = 0, 0
    for batch in st.train_batches(256, seed=1, augment=Augment(pad=2)).batches(0):
        seen += len(batch.y)
        peak = max(peak, rss_anon() - before)
    assert seen == len(st.splits.train)
    bound = 8 * 2**20  # a batch is 1 MiB; the in-memory path holds ~110 MiB for this data (uint8 + float32)
    assert in_memory_bytes(len(data), data.rows.chw) > 10 * bound
    assert peak < bound, f"anonymous memory grew by {peak / 2**20:.1f} MiB"


def test_streamed_image_folder_equals_the_in_memory_one(folder):
    streamed = load_dataset(folder, memory_limit=CAP // 10)
    assert isinstance(streamed, StreamDataset) and streamed.in_channels == 3
    mem_splits, st_splits = split(load_dataset(folder), seed=1), split(streamed, seed=1)
    same_parts(mem_splits, st_splits)
    mem = TensorSplits(mem_splits)
    for workers in (0, 2):
        st = StreamSplits(st_splits, workers=workers)
        assert np.array_equal(st.mean, mem.mean) and np.array_equal(st.std, mem.std)
        same_batches(mem, st, epochs=(0,), batch_size=64, resolutions=(16,))


def test_streamed_npz_equals_the_in_memory_one_stored_or_compressed(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 256, (3000, 16, 16, 3), dtype=np.uint8), rng.integers(0, 5, 3000)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, x_train=x[:2500], y_train=y[:2500], x_test=x[2500:], y_test=y[2500:])
        streamed = load_dataset(path, memory_limit=CAP // 10, cache_dir=tmp_path / "cache")
        assert isinstance(streamed, StreamDataset) and streamed.rows.chw == (3, 16, 16)
        in_place = streamed.rows.path == str(path)
        assert in_place == (save is np.savez)  # deflated members are read from a one-off copy in the cache
        same_parts(split(load_dataset(path), seed=0), split(streamed, seed=0))


def test_fingerprints_of_streamed_splits_equal_the_in_memory_ones(big_idx, tmp_path):
    spec = DataSpec.of(str(big_idx), split_seed=2, train_images=5000)
    mem_splits, mem_spec = spec.load()
    st_splits, st_spec = spec.load(memory_limit=CAP, cache_dir=tmp_path)
    assert isinstance(st_splits.train, StreamDataset) and len(st_splits.train) == 5000
    assert st_spec.fingerprints == mem_spec.fingerprints


# --------------------------------------------------------------------------------------------- the cache


def test_gzipped_idx_is_decompressed_once_and_again_when_the_source_changes(tmp_path):
    root = write_pair(tmp_path / "data" / "gz", *images(3000, 16, 16, 5), compress=True)
    cache = tmp_path / "cache"
    first = load_dataset(root, memory_limit=CAP // 10, cache_dir=cache)
    assert isinstance(first, StreamDataset)
    cached = Path(first.rows.path)
    assert cached.parent == cache and cached.suffix == ".idx"
    stamp = cached.stat().st_mtime_ns
    again = load_dataset(root, memory_limit=CAP // 10, cache_dir=cache)
    assert again.rows.path == str(cached) and cached.stat().st_mtime_ns == stamp  # reused, not rewritten
    same_parts(split(load_dataset(root), seed=0), split(again, seed=0))

    write_pair(root, *images(3000, 16, 16, 6), compress=True)  # new images under the same name
    changed = load_dataset(root, memory_limit=CAP // 10, cache_dir=cache)
    assert changed.rows.path != str(cached) and not cached.exists()  # the stale copy is gone
    assert sorted(p.name for p in cache.iterdir()) == [Path(changed.rows.path).name]
    same_parts(split(load_dataset(root), seed=0), split(changed, seed=0))

    with pytest.raises(DatasetError, match="must not lie inside the dataset folder"):
        load_dataset(root, memory_limit=CAP // 10, cache_dir=root / "cache")


# --------------------------------------------------------------------------------------------- bad files


def _message(path: Path, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kw)
    return str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx_gives_the_in_memory_error(tmp_path, compress):
    root = write_pair(tmp_path / "cut", *images(3000, 16, 16, 7), compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    raw = (root / name).read_bytes()
    (root / name).write_bytes(raw[: len(raw) - 1000])
    streamed = _message(root, memory_limit=CAP // 10, cache_dir=tmp_path / "cache")
    assert streamed == _message(root)
    assert "\n" not in streamed and name in streamed
    assert not list((tmp_path / "cache").glob("*.idx"))  # no half-written cache file left behind


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not in /work/shared/datasets")
def test_fashion_mnist_splits_the_same_streamed(tmp_path):
    mem = split(load_dataset(FASHION), seed=0)
    streamed = load_dataset(FASHION, memory_limit=CAP, cache_dir=tmp_path)
    assert isinstance(streamed, StreamDataset) and streamed.class_names == mem.train.class_names
    st = split(streamed, seed=0)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(mem, part).y, getattr(st, part).y)
    np.testing.assert_array_equal(mem.val.x, st.val.load().x)
    np.testing.assert_array_equal(mem.test.x[:3000], st.test.read(np.arange(3000)))
    mean, std = channel_stats(mem.train)
    st_source = StreamSplits(st, workers=0)
    assert np.array_equal(st_source.mean, mean) and np.array_equal(st_source.std, std)
