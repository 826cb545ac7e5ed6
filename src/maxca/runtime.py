"""Process-level CPU runtime settings used by the command-line entry points.

PyTorch on CPU allocates and frees large activation tensors on every step. glibc's malloc
serves blocks above its mmap threshold (at most 32 MB) with fresh ``mmap`` calls and returns
them to the kernel on free, so every large tensor is page-faulted in again, zeroed by the
kernel, on each use: at 80x96x112 x 32 channels that costs about as much as the arithmetic of
an element-wise operation. PyTorch's CPU performance guide recommends a caching allocator
(jemalloc/tcmalloc via ``LD_PRELOAD``) for this reason; :func:`tune_cpu_allocator` gets the
same effect from glibc itself, without a preload, by keeping freed memory in the heap for reuse.
Measured effect: see ``docs/benchmarks.md`` (MAXCA block with and without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in glibc's heap for reuse (no ``mmap``/``munmap`` per tensor).

    Sets ``M_MMAP_MAX = 0`` and a 1 GiB ``M_TRIM_THRESHOLD`` with ``mallopt``. Affects the
    whole process; call it once at start-up, before large allocations. Returns False (and does
    nothing) where glibc is not the C library (macOS, Windows, musl).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    _tuned = ok
    return ok
