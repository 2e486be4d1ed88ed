"""Keep freed memory in the process between training steps (glibc's malloc on Linux).

glibc gives the top of its heap back to the kernel once more than its trim threshold is free,
and serves large blocks by mmap; its thresholds adapt to the largest block freed. A QT step frees
a few 4-MiB tensors (the generated weights' gradients and temporaries) at the end of every
backward pass, so the next step takes ~1,300-3,800 fresh pages (page faults, each zero-filled):
about 2 ms of a 16 ms step with the 1M-parameter MLP (benchmarks/bench_step.py). Raising both
thresholds keeps that memory in the heap for reuse, as a classical step's optimizer state is.

Opt out with the environment variable ``QTRAIN_MALLOC_TUNE=0``. Nothing is done elsewhere than
Linux with glibc, nor when ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
TRIM_BYTES = 256 << 20  # freed memory kept at the top of the heap at most
MMAP_BYTES = 32 << 20  # blocks from the heap up to this size (glibc's largest allowed)

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True when they were set."""
    global _done
    if _done:
        return False
    _done = True
    if not sys.platform.startswith("linux") or os.environ.get("QTRAIN_MALLOC_TUNE", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
