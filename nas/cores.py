"""Torch threads sized to the cores other processes leave free, so runs side by side share the CPU fairly.

PyTorch's CPU build runs intra-op work on an OpenMP (libgomp) team whose idle threads spin before they sleep.
Two processes that each run a 2-thread team on 2 cores keep descheduling each other's team mates mid-spin, and
each runs many times slower than its fair half of the machine. One thread needs no team, so it cannot spin.
So a process measures how much CPU time the *other* processes used on its usable cores over the last window,

    others  = (busy time of the usable CPUs - this process's CPU time, all its threads) / window
    threads = clamp(usable cores - others, 1, requested)      (rounded with hysteresis)

and runs with that many threads. Alone, a run keeps its requested count (its full speed); two runs on two cores
settle at one thread each within about a second, and a run takes its cores back a second after the other ends.

    with fair_threads(recipe.threads):   # sets the count now; restores the caller's count at the end
        for batch in loader:
            tick()                       # between steps: re-sizes at most once per `INTERVAL_S`
            ...

The readings are Linux's /proc/stat (the CPUs of this process's affinity mask) and /proc/self/stat (utime +
stime). Where they cannot be read (other systems), or with the environment variable `NAS_FAIR_THREADS=0` (also
`false`, `no`, `off`), the requested count is used throughout, as before this module existed. Blocks nest: an
inner block runs at most its outer block's requested count, and all blocks of a process share one window, which
`start()` begins (the `nas` command calls it first thing, so the first block is sized at once). Latency
measurement (latency_models, `nas.kernels.timing`, export benchmarks) never adapts: a table or a benchmark is
timed at its own fixed thread count on purpose. The search puts blocks only around the calls that build the
networks it times, so that building runs at the fair count while each timed run still sets its own.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

ENV_VAR = "NAS_FAIR_THREADS"
INTERVAL_S = 1.0  # shortest window: /proc/stat counts in 10 ms ticks, so a second resolves ~1% of a core
# A core counts as taken by others once they use more than half of it, and free again only once they use less
# than 0.3 of it: a neighbour hovering near half a core does not make the thread count flap, and giving a core
# up too eagerly costs a run at most 2x for a second, keeping it too long costs several times that (spinning).
DROP_ABOVE = 0.5
RETAKE_BELOW = 0.3
_OFF = ("0", "false", "no", "off")


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU times at one moment, in clock ticks (USER_HZ)."""

    busy: int  # usable CPUs: user + nice + system + irq + softirq (not idle, iowait, steal)
    total: int  # usable CPUs: all of the above plus idle, iowait and steal
    own: int  # this process: utime + stime over all its threads
    cpus: int  # how many CPUs `busy` and `total` sum over


def enabled() -> bool:
    """Whether fair sizing is on (`NAS_FAIR_THREADS` unset or anything but 0 / false / no / off)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


def usable_cpus() -> set[int] | None:
    """The CPU ids this process may run on (its affinity mask); None where the system does not say."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return set(getaffinity(0))
    except OSError:
        return None


def parse_proc_stat(text: str, cpus: Collection[int] | None = None) -> tuple[int, int, int] | None:
    """(busy, total, CPUs counted) from the text of /proc/stat, over the per-CPU lines of `cpus` (all when None);
    None when no such line is found."""
    busy = total = n = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user/nice
        v = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
        busy += v[0] + v[1] + v[2] + v[5] + v[6]
        total += sum(v)
        n += 1
    return (busy, total, n) if n else None


def parse_self_stat(text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat."""
    # the command name (field 2) is in parentheses and may hold spaces and ')': fields resume after the last ')'
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15; `rest` starts at field 3


def read_sample(cpus: Collection[int] | None = None, stat_path: str = "/proc/stat",
                self_path: str = "/proc/self/stat") -> CpuSample | None:
    """This moment's `CpuSample` over `cpus` (default: `usable_cpus()`); None where /proc cannot be read."""
    if cpus is None:
        cpus = usable_cpus()
    try:
        with open(stat_path) as f:
            machine = parse_proc_stat(f.read(), cpus)
        with open(self_path) as f:
            own = parse_self_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None
    if machine is None:
        return None
    busy, total, n = machine
    return CpuSample(busy, total, own, n)


def others_cores(before: CpuSample, after: CpuSample) -> float | None:
    """Cores' worth of CPU time that other processes used between two samples; None when the samples do not
    span any time or count different CPUs (the affinity mask changed)."""
    elapsed = after.total - before.total
    if elapsed <= 0 or after.cpus != before.cpus:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others * after.cpus / elapsed)  # elapsed sums over the CPUs: / cpus is the window's length


def fair_cores(others: float, usable: int, current: int) -> int:
    """Cores this process may use when others use `others` of its `usable` cores and it now uses `current`: the
    free cores, one fewer once others use more than `DROP_ABOVE` of a core, one more again once they use less
    than `RETAKE_BELOW` of it; at least 1."""
    keep_max = usable - math.ceil(others - DROP_ABOVE)  # others' use of a core over DROP_ABOVE takes it
    raise_min = usable - math.ceil(others - RETAKE_BELOW)  # under RETAKE_BELOW it is free again
    return max(1, min(max(current, raise_min), keep_max))


class Window:
    """The process-wide measurement: the last sample and the cores it judged fair, re-judged at most once per
    `interval_s`. `reader` and `clock` are injectable for tests."""

    def __init__(self, reader: Callable[[], CpuSample | None] = read_sample,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = INTERVAL_S):
        self.reader, self.clock, self.interval_s = reader, clock, interval_s
        self.sample: CpuSample | None = None
        self.at = -math.inf
        self.fair: int | None = None  # None until a full window was measured
        self.others: float | None = None  # the last window's reading, for logs and tests
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin the first window now, if none has begun (a later `update` judges it)."""
        if self.sample is None:
            self.update()

    def update(self) -> int | None:
        """The fair core count, re-measured when the window is at least `interval_s` long; None while unknown
        (no full window yet, or /proc unreadable)."""
        now = self.clock()
        if now - self.at < self.interval_s:
            return self.fair
        with self._lock:
            if now - self.at < self.interval_s:  # another thread re-measured meanwhile
                return self.fair
            sample = self.reader()
            if sample is not None and self.sample is not None:
                others = others_cores(self.sample, sample)
                if others is not None:
                    self.others = others
                    self.fair = fair_cores(others, sample.cpus, self.fair if self.fair is not None else sample.cpus)
            self.sample, self.at = sample, now
            return self.fair


_WINDOW = Window()
_ACTIVE: list[FairThreads] = []  # open blocks, innermost last


class FairThreads:
    """Context manager: within the block torch runs `threads` intra-op threads, `requested` at most and fewer while
    other processes keep this process's cores busy; `tick()` re-sizes between steps. On exit the thread count the
    block found is restored. `requested=None`: the enclosing block's count, or the current one outside blocks."""

    def __init__(self, requested: int | None = None, window: Window | None = None):
        if requested is not None and requested < 1:
            raise ValueError(f"requested: expected a positive thread count, got {requested}")
        self.requested = requested
        self.window = window if window is not None else _WINDOW
        self.limit = 0  # the most threads the block runs: `requested`, capped by an enclosing block's limit
        self.threads = 0  # the count set now (0 before the block starts)
        self._saved = 0
        self._on = True

    def __enter__(self) -> FairThreads:
        import torch

        self._saved = torch.get_num_threads()
        outer = _ACTIVE[-1].limit if _ACTIVE else None
        asked = self.requested or outer or self._saved
        self.limit = min(asked, outer) if outer else asked
        self._on = enabled()
        _ACTIVE.append(self)
        self.tick()  # a window measured before (an earlier block, the previous trial) applies at once
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        import torch

        if self in _ACTIVE:
            _ACTIVE.remove(self)
        torch.set_num_threads(self._saved)

    def tick(self) -> int:
        """Re-size to the cores now free (cheap when the last measurement is recent); the thread count in use."""
        fair = self.window.update() if self._on else None
        self._set(self.limit if fair is None else max(1, min(fair, self.limit)))
        return self.threads

    def _set(self, n: int) -> None:
        import torch

        if n != self.threads or torch.get_num_threads() != n:
            torch.set_num_threads(n)
            self.threads = n


def fair_threads(requested: int | None = None, window: Window | None = None) -> FairThreads:
    """A `FairThreads` block running at most `requested` torch threads (see the module's docstring)."""
    return FairThreads(requested, window)


def start() -> None:
    """Begin this process's first window now: called at start-up, the first block already finds one to judge,
    instead of running its requested count until a window of `INTERVAL_S` has passed."""
    if enabled():
        _WINDOW.start()


def tick() -> int | None:
    """`FairThreads.tick` of the innermost open block, for loops that do not hold the block; None outside blocks."""
    return _ACTIVE[-1].tick() if _ACTIVE else None


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """PyTorch's intra-op thread count fixed at `n` inside the block, the caller's after it (also after an error).

    Cheap when nested or already in force: nothing is set then. For timing, where the count must not move; a
    training loop that should share the cores uses `fair_threads` instead."""
    import torch

    saved = torch.get_num_threads()
    if saved != n:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
