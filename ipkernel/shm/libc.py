"""The libc calls Python's :mod:`mmap` module lacks: mappings that hold no descriptor.

``mmap.mmap`` keeps a duplicate of the file's descriptor open for as long as the mapping
lives, so every array received would hold descriptors (and a process would run out of
them); a mapping made through libc holds none. ``madvise`` on any address (a buffer
that is not an ``mmap`` object) makes pages present ahead of use. :data:`libc` is None
where libc cannot be loaded; callers then fall back on :mod:`mmap` or copies.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["MAP_FIXED", "MAP_NORESERVE", "PROT_NONE", "libc", "map_region", "unmap_region"]

# Not in Python's mmap module; the values are Linux's, on every architecture.
PROT_NONE = 0
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.madvise.restype = ctypes.c_int
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


#: This process's libc (``mmap``, ``munmap``, ``madvise`` typed), or None.
libc = _load_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_region(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    """``mmap(2)``: the address of the new mapping; ``OSError`` if it fails."""
    result = libc.mmap(addr, length, prot, flags, fd, offset)
    if result is None or result == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def unmap_region(addr: int, length: int) -> None:
    """``munmap(2)``."""
    libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(length))
