"""Where things go in a segment: its parts, and its pieces.

Each part of a payload (the pickle stream, then the out-of-band buffers) sits at its own
offset (:func:`layout`); parts of :data:`MAP_SEPARATELY` bytes or more start on a page
boundary, so that each can be mapped on its own. A large segment is made of several
memory files, its *pieces* (:func:`piece_bounds`): all but the last have the same size,
a multiple of the page size, so a page-aligned part maps piece by piece into one
contiguous range. Each memory file is named after the segment's token (and its index,
:func:`piece_name`), which the receiver checks.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

from ipkernel.errors import SharedMemoryError

__all__ = [
    "MAP_SEPARATELY",
    "MAX_PIECES",
    "NAME_PREFIX",
    "PAGE",
    "PROBE_PREFIX",
    "layout",
    "piece_bounds",
    "piece_name",
]

#: Parts at least this large get a page-aligned place and a mapping of their own.
MAP_SEPARATELY = 256 * 1024

#: The unit of mappings.
PAGE = mmap.ALLOCATIONGRANULARITY

#: The most pieces one segment is made of.
MAX_PIECES = 8

#: The name of a payload segment's memory files: the prefix, then the token.
NAME_PREFIX = "ipkernel-"

#: The name of a probe's memory file (see :mod:`ipkernel.shm.probe`).
PROBE_PREFIX = "ipkernel-probe-"

# Small parts stay aligned for any numpy dtype.
_SMALL_ALIGN = 64


def layout(lengths: Sequence[int]) -> tuple[list[int], int]:
    """Where each part goes in a segment: ``(offsets, size)``.

    Parts of :data:`MAP_SEPARATELY` bytes or more start on a page boundary so that they
    can be mapped on their own.
    """
    offsets = []
    position = 0
    for n in lengths:
        align = PAGE if n >= MAP_SEPARATELY else _SMALL_ALIGN
        position = -(-position // align) * align
        offsets.append(position)
        position += n
    return offsets, position


def piece_bounds(size: int, count: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each of ``count`` pieces of a segment of ``size`` bytes.

    Every piece but the last has the same length, a multiple of the page size, so a
    page-aligned part maps piece by piece. ``SharedMemoryError`` if a piece would be empty.
    """
    step = -(-size // count // PAGE) * PAGE if count > 1 else size
    bounds = [(i * step, min(step, size - i * step)) for i in range(count)]
    if count < 1 or count > MAX_PIECES or (count > 1 and bounds[-1][1] <= 0):
        raise SharedMemoryError(f"a segment of {size} bytes cannot be in {count} pieces")
    return bounds


def piece_name(prefix: str, token: str, index: int) -> str:
    """The memory file name of piece ``index`` of the segment ``token``."""
    return f"{prefix}{token}-{index}" if index else prefix + token
