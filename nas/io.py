"""Files shared by every part of nas: where results go, and writing them atomically.

`results_dir` is the one place that decides the results folder. `write_atomic` writes one file,
`write_dir_atomic` a whole directory; both fill a hidden temporary sibling, flush it to disk and rename it into
place, so a reader sees the old version or the new one, never a mixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

RESULTS_ENV = "NAS_RESULTS"  # environment variable naming the results folder when no flag does
DEFAULT_RESULTS = "results"  # the results folder, under the current directory, when neither does


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder results go in (run outputs, latency tables, supernet caches, benchmark outputs).

    Precedence: `override` (a flag such as --out, or a config field) when given, else the `NAS_RESULTS`
    environment variable when set and not empty, else `results` under the current directory. Read at call time,
    so a flag default of None and a change of the variable both take effect.
    """
    if override is not None and str(override) != "":
        return Path(override)
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


def _fsync_dir(path: Path) -> None:
    # a rename is only durable once its directory entry is on disk; some filesystems cannot open a directory
    # for fsync, and there the rename is as durable as the filesystem makes it anyway
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    # Linux reports it without changing it; os.umask can only be read by setting it, which races other threads
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, flush it to disk, then rename it to `path`.

    Readers never see half a file, and a crash mid-write leaves the previous version in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same folder, so the rename never crosses filesystems; same suffix, for writers that pick a format by it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        # mkstemp makes the file owner-only; give it the mode a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_dir_atomic(path: str | os.PathLike[str], fill: Callable[[Path], object]) -> Path:
    """Call `fill(tmp)` on an empty temporary directory beside `path`, flush every file in it, then swap it in.

    An existing `path` (directory or file) is replaced: it is renamed aside to a hidden `.NAME.old-*` sibling,
    the new directory is renamed to `path`, and only then the old one is deleted; if the second rename fails the
    old one is put back. If `fill` raises, the temporary directory is deleted and `path` is untouched.
    After a crash `path` is never half-written: it holds the old version or the new one, or - only for a crash
    between the two renames - is absent while the old version survives complete in `.NAME.old-*`. A crash can
    leave hidden `.NAME.tmp-*` / `.NAME.old-*` siblings behind; nothing reads them. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    # derived from the unique temporary name, so two writers (or a crashed earlier one) never share it
    old = tmp.with_name(f".{path.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
    try:
        # mkdtemp makes the directory owner-only; give it the mode a plain mkdir() would have
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(os.path.join(root, name))
            _fsync_dir(Path(root))
        moved = False
        if path.exists() or path.is_symlink():
            os.replace(path, old)
            moved = True
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:
                os.replace(old, path)
            raise
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return path
