"""Keep freed memory in the process, so that large activations do not fault in fresh pages.

glibc's malloc returns a freed block above its mmap threshold to the kernel, and trims the top
of its heap once more than its trim threshold is free there. A forward pass at batch 8 of a
convolutional network allocates and frees tens of megabytes per layer, so each new activation
faults its pages in again, zero-filled by the kernel. In a 90%-sparse ResNet-50 at batch 8 on
one core that cost the compiled model 30-80 ms of 320-400 ms (five runs each way,
``benchmarks/end_to_end.py``); dense torch's forward did not change, its products taking far
longer than the faults.

``retain_freed_memory()`` raises both thresholds, process-wide: blocks up to 32 MB come from
the heap, and freed memory stays with the process for the next allocation. The process then
holds on to its peak heap: the usual trade of a serving process, and the reason the setting is
opt-in, never done on import. Other allocators (jemalloc or tcmalloc preloaded, as PyTorch's
CPU performance guides suggest) keep freed memory by default; there the call changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2: 32 MB on 64-bit machines.
LARGEST_MMAP_THRESHOLD = 32 << 20


def retain_freed_memory(mmap_threshold: int = LARGEST_MMAP_THRESHOLD,
                        trim_threshold: int = 2**31 - 1) -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module's docstring).

    Args:
        mmap_threshold: allocations from this size on get their own mapping, returned to the
            kernel when freed; at most ``LARGEST_MMAP_THRESHOLD``.
        trim_threshold: free memory at the top of the heap beyond this is returned.

    Returns:
        True when both were set; False where the C library has no ``mallopt`` (not glibc),
        which is logged.

    Raises:
        ValueError: for a threshold out of range.
    """
    if not 0 < mmap_threshold <= LARGEST_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {LARGEST_MMAP_THRESHOLD}], "
                         f"got {mmap_threshold}")
    if not 0 < trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in (0, 2**31), got {trim_threshold}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("retain_freed_memory: no glibc mallopt here; the allocator is left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
