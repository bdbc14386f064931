"""C allocator settings for the server process (glibc `mallopt`).

Blocks of a few hundred KiB come and go all the time (a 512 KiB `block_create` or
`block_read` allocates several buffers of that size and frees them at once). With glibc's
defaults such a buffer is served by a fresh mmap or by growing the heap, and given back to the
kernel as soon as it is freed; the next one page-faults its memory in again (and the kernel
zeroes it). For a 512 KiB `block_read` that churn was about a third of the server CPU
(benchmarks/server_bench.py, block_read_512k: 615-660 us -> 376-387 us per read, the kernel's
share halved).

`tune_allocator()` keeps such buffers in the heap: allocations under `MMAP_THRESHOLD` come
from the heap, and free memory at the top of the heap is only returned to the kernel once it
exceeds `TRIM_THRESHOLD`. Memory stays bounded by what the limits allow in flight (the RSS
during 16 concurrent 512 KiB uploads is measured by the same benchmark), at the price of up to
`TRIM_THRESHOLD` of free memory kept resident after a burst. Without glibc (musl, another
libc) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from twisted.logger import Logger

_log = Logger()

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024  # above the largest block (1 MiB) and its messages
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the settings above; False when the C library has no `mallopt`."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        _log.debug("mallopt refused the allocator settings")
    return done
