"""Keep large training tensors in the heap: glibc malloc's defaults return them to the kernel after every use.

A training step on the CPU allocates and frees the same few-to-30 MB activation buffers hundreds of times. With
glibc's defaults each of those is a fresh `mmap` (or the heap top is trimmed after it is freed), so every step
page-faults its activations in again: 18% of a default search's CPU time was system time. Raising the mmap
threshold to its maximum and never trimming keeps the buffers mapped for reuse. Buffers above glibc's 32 MB ceiling
(batch-norm recalibration of a trial at 256 images, evaluation at 500) would still be mmapped afresh, so mmap is
switched off for malloc altogether (supernet and trial times, page faults and peak memory before and after:
benchmarks/RESULTS_default_run.md). The price is that the process keeps its peak heap resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (larger values are refused)
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: in effect, never give the heap top back


def keep_heap() -> bool:
    """Apply the settings above to this process's glibc allocator; False where it is not glibc (nothing done)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc creates the heaps of other threads' arenas with mmap itself; M_MMAP_MAX only stops malloc's per-request
    # mmaps, and a request too large for such a heap is served from the main heap instead
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            and mallopt(_M_MMAP_MAX, 0) == 1)
