"""Give memory the driver has freed back to the operating system.

Both allocators the driver uses keep freed memory for reuse: Arrow's pool (mimalloc) and glibc's
``malloc`` (NumPy arrays, Python objects). After a build with large temporaries (the committed state
of a million inputs: a few hundred MB) that memory would stay in the driver's RSS for the whole run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import pyarrow as pa


def release_unused_memory() -> None:
    """Return Arrow's and glibc's free pages to the OS (a no-op where neither applies)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
