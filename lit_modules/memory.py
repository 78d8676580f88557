"""Memory tuning of the training process (train.py and the benchmarks call it before any large allocation)."""

from __future__ import annotations

import ctypes
import ctypes.util


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, as the CUDA caching allocator does: no block is mmapped
    (M_MMAP_MAX 0) and the heap is never trimmed (M_TRIM_THRESHOLD −1). By default blocks over 32 MB (a
    [2, 256, 128, 128] fp32 activation) are mmapped and unmapped when freed, so every CPU training step page-faults
    and zeroes its large activations again (bench/README.md). The price: the process keeps its peak heap.
    Returns False where there is no glibc (macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))
