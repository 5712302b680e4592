"""Mapping a received segment's parts: each large part one contiguous private mapping.

Parts of :data:`~ipkernel.shm.layout.MAP_SEPARATELY` bytes or more are mapped on their
own, copy-on-write, so each numpy array keeps only its own mapping alive; a part that
spans pieces maps piece by piece into one reserved address range, so the receiver still
gets one contiguous buffer and no copy. Smaller parts are read into ``bytearray``
objects. Mappings are made through libc (:mod:`ipkernel.shm.libc`), holding no
descriptor, and unmapped (large ones in the background) once nothing refers to them.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence
from typing import Any

from ipkernel.errors import SharedMemoryError
from ipkernel.shm.handle import Handle
from ipkernel.shm.layout import MAP_SEPARATELY, PAGE, piece_bounds
from ipkernel.shm.libc import MAP_FIXED, MAP_NORESERVE, PROT_NONE, libc, map_region, unmap_region
from ipkernel.shm.opening import open_segment
from ipkernel.shm.release import close_all, release

__all__ = ["map_parts"]


class _Unmap:
    """Unmaps a region when the last object viewing it is gone."""

    __slots__ = ("addr", "length")

    def __init__(self, addr: int, length: int) -> None:
        self.addr = addr
        self.length = length

    def __del__(self) -> None:
        release(self.length, unmap_region, self.addr, self.length)


def _overlaps(
    bounds: Sequence[tuple[int, int]], offset: int, length: int
) -> list[tuple[int, int, int]]:
    """``(piece index, offset in the piece, length)`` of each run of the segment's bytes
    ``[offset, offset + length)``, in order."""
    runs = []
    for index, (start, size) in enumerate(bounds):
        first, last = max(offset, start), min(offset + length, start + size)
        if first < last:
            runs.append((index, first - start, last - first))
    return runs


def _map_private(
    fds: Sequence[int], bounds: Sequence[tuple[int, int]], offset: int, length: int
) -> Any:
    """A private (copy-on-write) writable mapping of the segment's bytes ``[offset, offset
    + length)`` (``offset`` page-aligned), as one contiguous buffer.

    A range over several pieces is one reserved address range (an inaccessible anonymous
    mapping) with each piece's run mapped over its place in it. ``mmap.mmap`` would keep
    a duplicate of each descriptor open for as long as the mapping lives, so every array
    received would hold descriptors (and a process would run out of them); a mapping
    made through libc holds none. The buffer is a ctypes array over the mapping; the
    region is unmapped once nothing refers to it.
    """
    runs = _overlaps(bounds, offset, length)
    if libc is None:
        if len(runs) > 1:
            return _read_range(fds, bounds, offset, length)
        index, start, _ = runs[0]
        return mmap.mmap(
            fds[index],
            length,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=start,
        )
    prot, private = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE
    if len(runs) == 1:
        index, start, _ = runs[0]
        addr = map_region(None, length, prot, private, fds[index], start)
    else:
        reserve = private | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        addr = map_region(None, length, PROT_NONE, reserve, -1, 0)
        try:
            place = addr
            for index, start, n in runs:
                map_region(place, n, prot, private | MAP_FIXED, fds[index], start)
                place += n
        except BaseException:
            unmap_region(addr, length)
            raise
    region = (ctypes.c_ubyte * length).from_address(addr)
    region._unmap = _Unmap(addr, length)  # type: ignore[attr-defined]
    return memoryview(region).cast("B")


def _read_range(
    fds: Sequence[int], bounds: Sequence[tuple[int, int]], offset: int, length: int
) -> bytearray:
    """A copy of the segment's bytes ``[offset, offset + length)``."""
    buf = bytearray(length)
    view = memoryview(buf)
    for index, start, n in _overlaps(bounds, offset, length):
        got = os.preadv(fds[index], [view[:n]], start)
        if got != n:
            raise SharedMemoryError("the shared-memory segment ended early")
        view = view[n:]
    return buf


def map_parts(handle: Handle, offsets: Sequence[int], lengths: Sequence[int]) -> list[Any]:
    """Open the segment of ``handle`` and return its parts as writable buffers.

    Parts of :data:`MAP_SEPARATELY` bytes or more are private (copy-on-write) mappings of
    their own, contiguous even where they span pieces: no copy is made, and writing to
    one changes only this process's view. The others are copied into ``bytearray``
    objects. The descriptors are closed before returning; the mappings keep the memory
    alive as long as something refers to them.

    :raises SharedMemoryError: if the segment (or one of its pieces) cannot be opened or
        is not the one meant, or if ``offsets`` and ``lengths`` do not fit in it.
    """
    if len(offsets) != len(lengths):
        raise SharedMemoryError("a segment handle with mismatched offsets and lengths")
    for offset, n in zip(offsets, lengths, strict=True):
        if offset < 0 or n < 0 or offset + n > handle.size:
            raise SharedMemoryError("a segment handle whose parts do not fit in the segment")
        if n >= MAP_SEPARATELY and offset % PAGE:
            raise SharedMemoryError("a segment handle with a misaligned large part")
    bounds = piece_bounds(handle.size, len(handle.fds))
    fds = open_segment(handle)
    try:
        parts: list[Any] = []
        for offset, n in zip(offsets, lengths, strict=True):
            if n >= MAP_SEPARATELY:
                parts.append(_map_private(fds, bounds, offset, n))
            else:
                parts.append(_read_range(fds, bounds, offset, n))
        return parts
    except OSError as exc:
        raise SharedMemoryError(f"cannot map the shared-memory segment: {exc}") from exc
    finally:
        close_all(fds)
