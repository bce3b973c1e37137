"""nas.io: files and directories are replaced whole, and a failure or a crash mid-write leaves the old version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas import io as nio
from nas.io import write_atomic, write_dir_atomic


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _crash(code: str) -> None:
    # os._exit skips every finally and except, as a killed process would
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr


# ------------------------------------------------------------------ write_atomic
def test_write_atomic_writes_and_replaces_without_leftovers(tmp_path):
    path = tmp_path / "sub" / "out.json"
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        Path(tmp).write_text("new")

    path.parent.mkdir()
    path.write_text("old")
    write_atomic(path, write)
    assert path.read_text() == "new"
    assert seen[0].endswith(".json") and Path(seen[0]).parent == path.parent  # same folder, same suffix
    assert _listing(path.parent) == ["out.json"]
    write_atomic(tmp_path / "made" / "x.csv", lambda tmp: Path(tmp).write_text("a"))  # creates the folder
    assert (tmp_path / "made" / "x.csv").read_text() == "a"


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")

    def write(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, write)
    assert path.read_text() == "old"
    assert _listing(tmp_path) == ["out.csv"]


def test_write_atomic_crash_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")
    _crash(f"import os; from pathlib import Path; from nas.io import write_atomic\n"
           f"def w(tmp):\n    Path(tmp).write_text('half')\n    os._exit(3)\n"
           f"write_atomic({str(path)!r}, w)")
    assert path.read_text() == "old"
    assert [n for n in _listing(tmp_path) if not n.startswith(".")] == ["out.csv"]


def test_written_file_and_directory_get_the_umask_modes_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("1"))
        write_dir_atomic(tmp_path / "ck", _fill({"b.json": "2"}))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------ write_dir_atomic
def _fill(files: dict[str, str]):
    def fill(d: Path) -> None:
        assert d.is_dir() and not any(d.iterdir())  # an empty directory to fill
        for name, text in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
    return fill


def test_write_dir_atomic_creates_and_replaces_the_whole_directory(tmp_path):
    path = tmp_path / "ck"
    assert write_dir_atomic(path, _fill({"a.json": "1", "sub/b.bin": "2"})) == path
    assert _listing(path) == ["a.json", "sub"] and (path / "sub" / "b.bin").read_text() == "2"
    write_dir_atomic(path, _fill({"a.json": "new"}))
    assert _listing(path) == ["a.json"] and (path / "a.json").read_text() == "new"  # nothing stale survives
    assert _listing(tmp_path) == ["ck"]  # no temporary or old directory left behind


def test_write_dir_atomic_replaces_a_file(tmp_path):
    path = tmp_path / "ck"
    path.write_text("a file")
    write_dir_atomic(path, _fill({"a.json": "1"}))
    assert path.is_dir() and _listing(tmp_path) == ["ck"]


def test_write_dir_atomic_failing_fill_leaves_the_old_directory(tmp_path):
    path = tmp_path / "ck"
    write_dir_atomic(path, _fill({"a.json": "old"}))

    def fill(d: Path) -> None:
        (d / "a.json").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomic(path, fill)
    assert _listing(path) == ["a.json"] and (path / "a.json").read_text() == "old"
    assert _listing(tmp_path) == ["ck"]


def test_write_dir_atomic_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    write_dir_atomic(path, _fill({"a.json": "old"}))
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".ck.tmp-"):  # the rename of the new directory into place
            raise OSError("rename failed")
        real(src, dst)

    monkeypatch.setattr(nio.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        write_dir_atomic(path, _fill({"a.json": "new"}))
    assert (path / "a.json").read_text() == "old"
    assert _listing(tmp_path) == ["ck"]


def test_write_dir_atomic_crash_leaves_the_old_directory(tmp_path):
    path = tmp_path / "ck"
    write_dir_atomic(path, _fill({"a.json": "old", "b.json": "old"}))
    _crash(f"import os; from nas.io import write_dir_atomic\n"
           f"def fill(d):\n    (d / 'a.json').write_text('half')\n    os._exit(3)\n"
           f"write_dir_atomic({str(path)!r}, fill)")
    assert _listing(path) == ["a.json", "b.json"] and (path / "a.json").read_text() == "old"
    assert [n for n in _listing(tmp_path) if not n.startswith(".")] == ["ck"]  # only hidden debris
