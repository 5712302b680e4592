"""The buffers large payloads are received into, and how bytes are copied into them.

A payload's parts are allocated whole from its header when its stream reference
arrives, by a client or an engine (:mod:`ipkernel.wire.received`) or by the controller
keeping a task payload (:mod:`ipkernel.wire.kept`); each chunk is then written into
place. Large parts are anonymous mappings (whose pages a receiver has made present ahead
of the data, :mod:`ipkernel.wire.prefault`); :func:`tune_allocator` keeps a relaying
process's chunk-sized buffers in its heap.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

__all__ = ["allocate_part", "fill_parts", "tune_allocator"]

# Parts this large are received into private anonymous mappings: the kernel hands out
# zeroed pages as they are first written, where a bytearray would be zeroed first, and
# may use huge pages (2 MiB: a few hundred times fewer faults).
_MAP_ANONYMOUS_FROM = 1024 * 1024


def tune_allocator() -> None:
    """Keep freed stream buffers in the heap for reuse, in a process that relays streams.

    glibc serves allocations over its ``mmap`` threshold (128 KiB at first) with fresh
    pages from the kernel and unmaps them when freed; every chunk a relay receives would
    then pay a page fault per 4 KiB (several microseconds each in a virtual machine).
    Raising the threshold to 4 MiB and the trim threshold to 16 MiB keeps chunk-sized
    buffers in the heap, at the price of up to 16 MiB of freed memory kept. Does nothing
    where ``mallopt`` does not exist.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    mallopt(m_trim_threshold, 16 * 1024 * 1024)


def allocate_part(n: int) -> Any:
    """A zeroed writable buffer of ``n`` bytes to receive a payload's part into (an
    anonymous mapping for large parts, a ``bytearray`` for small ones).

    :raises MemoryError, OSError: if the memory cannot be had.
    """
    if n >= _MAP_ANONYMOUS_FROM:
        part = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
        if hugepage is not None:
            try:
                part.madvise(hugepage)
            except OSError:
                pass  # no transparent huge pages here: 4 KiB pages then
        return part
    return bytearray(n)


def fill_parts(
    parts: Sequence[Any], lengths: Sequence[int], index: int, filled: int, view: memoryview
) -> tuple[int, int]:
    """Copy ``view`` into ``parts`` (buffers of ``lengths``), starting in part ``index``
    at offset ``filled`` and going on into the next parts (skipping full and empty ones);
    return where the next byte goes, ``(index, filled)``. The caller checks that the
    bytes fit."""
    size, pos = view.nbytes, 0
    while pos < size:
        while filled == lengths[index]:
            index += 1
            filled = 0
        take = min(size - pos, lengths[index] - filled)
        parts[index][filled : filled + take] = view[pos : pos + take]
        filled += take
        pos += take
    return index, filled
