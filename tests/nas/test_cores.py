"""nas.cores: thread counts sized to the cores other processes leave free, from injected /proc readings."""

import os
import sys

import pytest
import torch

from nas import cores
from nas.cores import CpuSample, FairThreads, Window

STAT = """cpu  500 10 200 9000 50 5 5 7 0 0
cpu0 100 0 100 4000 20 0 0 3 0 0
cpu1 300 10 50 3000 20 5 5 4 0 0
cpu2 100 0 50 2000 10 0 0 0 0 0
intr 123456 0 0
ctxt 98765
procs_running 3
"""


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    """Every test starts with 3 torch threads and no open block, and leaves the count as it found it."""
    monkeypatch.delenv(cores.ENV_VAR, raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    assert not cores._ACTIVE, "a block was left open"
    torch.set_num_threads(saved)


class FakeProc:
    """Cumulative readings that advance as `run(seconds, others=..., own=...)` says (cores busy over that time)."""

    def __init__(self, cpus: int = 2, hz: int = 100):
        self.cpus, self.hz = cpus, hz
        self.now = 0.0
        self.busy = self.own = 0.0
        self.reads = 0

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.own += own * seconds * self.hz
        self.busy += (others + own) * seconds * self.hz

    def sample(self) -> CpuSample:
        self.reads += 1
        return CpuSample(round(self.busy), round(self.now * self.hz * self.cpus), round(self.own), self.cpus)

    def window(self) -> Window:
        return Window(reader=self.sample, clock=lambda: self.now, interval_s=1.0)


def test_parse_proc_stat_sums_the_usable_cpus_only():
    # busy = user + nice + system + irq + softirq; total adds idle, iowait and steal
    assert cores.parse_proc_stat(STAT, {0}) == (200, 4223, 1)
    assert cores.parse_proc_stat(STAT, {0, 1}) == (200 + 370, 4223 + 3394, 2)
    assert cores.parse_proc_stat(STAT) == (200 + 370 + 150, 4223 + 3394 + 2160, 3)
    assert cores.parse_proc_stat(STAT, {7}) is None
    assert cores.parse_proc_stat("intr 1 2\n") is None


def test_parse_self_stat_reads_utime_and_stime_after_an_odd_command_name():
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "0", "0", "1234", "56", "7", "8"]
    assert cores.parse_self_stat("4242 (py) (x y)) " + " ".join(fields) + " 20 0 5\n") == 1234 + 56


def test_others_cores_subtracts_this_process():
    before = CpuSample(busy=1000, total=10_000, own=400, cpus=2)
    # over 1 s on 2 CPUs (200 ticks): 150 busy ticks, 60 of them this process's -> others used 0.9 of a core
    after = CpuSample(busy=1150, total=10_200, own=460, cpus=2)
    assert cores.others_cores(before, after) == pytest.approx(0.9)
    assert cores.others_cores(before, before) is None  # no time passed
    assert cores.others_cores(before, CpuSample(1150, 10_300, 460, 3)) is None  # the affinity mask changed
    # this process's accounting can run a tick ahead of the machine's: never negative
    assert cores.others_cores(before, CpuSample(1100, 10_200, 520, 2)) == 0.0


@pytest.mark.parametrize(("others", "current", "fair"), [
    (0.0, 2, 2), (0.05, 2, 2), (0.45, 2, 2),  # a light neighbour: keep both cores
    (0.55, 2, 1), (0.9, 2, 1), (1.0, 2, 1), (1.3, 2, 1),  # a busy one takes a core
    (0.45, 1, 1), (0.35, 1, 1), (0.25, 1, 2), (0.0, 1, 2),  # retaken only once clearly free again
    (1.9, 2, 1), (5.0, 2, 1),  # never below one
])
def test_fair_cores_two_cores_with_hysteresis(others, current, fair):
    assert cores.fair_cores(others, 2, current) == fair


def test_fair_cores_many_cores():
    assert cores.fair_cores(3.2, 16, 16) == 13  # 0.2 of a fourth core in use leaves that core free
    assert cores.fair_cores(3.6, 16, 16) == 12
    assert cores.fair_cores(3.4, 16, 12) == 12  # within the hysteresis band: unchanged
    assert cores.fair_cores(3.2, 16, 12) == 13


def test_alone_keeps_the_requested_threads():
    proc = FakeProc(cpus=2)
    with FairThreads(2, proc.window()) as fair:
        assert torch.get_num_threads() == 2
        for _ in range(5):
            proc.run(0.6, others=0.05, own=2.0)
            assert fair.tick() == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == 3  # the caller's count is back


def test_a_busy_neighbour_halves_the_threads_and_its_end_gives_them_back():
    proc = FakeProc(cpus=2)
    with FairThreads(2, proc.window()) as fair:
        assert fair.threads == 2  # no window measured yet: the requested count
        proc.run(1.2, others=1.0, own=1.0)  # both runs spin against each other
        assert fair.tick() == 1 == torch.get_num_threads()
        proc.run(0.5, others=0.0, own=1.0)
        assert fair.tick() == 1  # not re-measured within the interval
        proc.run(0.6, others=0.0, own=1.0)  # the neighbour ended
        assert fair.tick() == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == 3


def test_ticks_within_the_interval_read_nothing():
    proc = FakeProc()
    with FairThreads(2, proc.window()) as fair:
        reads = proc.reads
        for _ in range(10):
            proc.run(0.05, others=0.0, own=2.0)
            fair.tick()
        assert proc.reads == reads
        proc.run(0.6, others=0.0, own=2.0)
        fair.tick()
        assert proc.reads == reads + 1


def test_never_more_than_requested_on_a_large_idle_machine():
    proc = FakeProc(cpus=64)
    with FairThreads(4, proc.window()) as fair:
        proc.run(2.0, others=0.0, own=4.0)
        assert fair.tick() == 4


def test_restores_the_callers_count_after_an_exception():
    proc = FakeProc()
    with pytest.raises(RuntimeError), FairThreads(1, proc.window()):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failing training step")
    assert torch.get_num_threads() == 3


def test_nested_blocks_share_the_window_and_the_outer_limit():
    proc = FakeProc(cpus=4)
    window = proc.window()
    with FairThreads(2, window):
        with FairThreads(None, window) as inner:  # no count of its own: the enclosing block's
            assert inner.limit == 2
        with FairThreads(8, window) as inner:  # never more than the enclosing block allows
            assert inner.limit == 2 == torch.get_num_threads()
            proc.run(1.5, others=3.0, own=1.0)
            assert cores.tick() == 1  # the module-level tick moves the innermost block
        assert torch.get_num_threads() == 2  # the outer block's count is back
    assert torch.get_num_threads() == 3


def test_a_block_without_a_count_uses_the_callers():
    with FairThreads(None, FakeProc().window()) as fair:
        assert fair.limit == 3
    assert cores.tick() is None  # outside any block, nothing to move


def test_a_later_block_starts_at_the_fair_count_measured_before():
    proc = FakeProc()
    window = proc.window()
    with FairThreads(2, window) as fair:
        proc.run(1.2, others=1.0, own=1.0)
        assert fair.tick() == 1
    assert torch.get_num_threads() == 3
    with FairThreads(2, window) as fair:  # e.g. the next trial: no second of spinning first
        assert fair.threads == 1 == torch.get_num_threads()


def test_a_window_begun_at_start_up_sizes_the_first_block_at_once(monkeypatch):
    proc = FakeProc()
    monkeypatch.setattr(cores, "_WINDOW", proc.window())
    cores.start()  # as `nas` does first thing
    assert proc.reads == 1
    proc.run(1.5, others=1.0, own=1.0)  # start-up (imports, data) while another run is busy
    with FairThreads(2) as fair:  # the process-wide window
        assert fair.threads == 1 == torch.get_num_threads()
    cores.start()  # a window already begun is not restarted
    assert proc.reads == 2


def test_switched_off_by_the_environment_variable(monkeypatch):
    monkeypatch.setenv(cores.ENV_VAR, "0")
    proc = FakeProc()
    with FairThreads(2, proc.window()) as fair:
        proc.run(2.0, others=2.0, own=1.0)
        assert fair.tick() == 2 == torch.get_num_threads()
    monkeypatch.setattr(cores, "_WINDOW", proc.window())
    cores.start()
    assert proc.reads == 0
    assert torch.get_num_threads() == 3
    for value in ("off", "False", " no "):
        monkeypatch.setenv(cores.ENV_VAR, value)
        assert not cores.enabled()
    monkeypatch.setenv(cores.ENV_VAR, "1")
    assert cores.enabled()


def test_unreadable_proc_falls_back_to_the_requested_count(tmp_path):
    missing = str(tmp_path / "no-such-file")
    assert cores.read_sample({0}, stat_path=missing) is None
    assert cores.read_sample({0}, self_path=missing) is None
    garbled = tmp_path / "stat"
    garbled.write_text("cpu0 x y z\n")
    assert cores.read_sample({0}, stat_path=str(garbled)) is None
    window = Window(reader=lambda: cores.read_sample({0}, stat_path=missing), interval_s=0.0)
    with FairThreads(2, window) as fair:
        for _ in range(3):
            assert fair.tick() == 2 == torch.get_num_threads()


def test_without_an_affinity_mask_every_cpu_counts(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS and Windows
    assert cores.usable_cpus() is None


def test_rejects_a_non_positive_count():
    with pytest.raises(ValueError, match="requested"):
        FairThreads(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_reads_this_machine():
    a = cores.read_sample()
    sum(i * i for i in range(200_000))  # some CPU time of this process's own
    b = cores.read_sample()
    assert a is not None and b is not None
    assert a.cpus == len(os.sched_getaffinity(0))
    assert 0 <= a.busy <= a.total and b.own >= a.own and b.total >= a.total
