"""The receiver's side of a segment: opening the sender's descriptors, checked.

The receiver opens the sender's descriptor through ``/proc/<pid>/fd/<fd>``, which the
kernel allows only to processes that may inspect the sender (the same user, in
practice), and checks that it got the right memory file: the segment's random token in
its name, and its size. Each piece of a large segment is opened and checked so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ipkernel.errors import SharedMemoryError
from ipkernel.shm.handle import Handle
from ipkernel.shm.host import host_identity
from ipkernel.shm.layout import NAME_PREFIX, piece_bounds, piece_name
from ipkernel.shm.release import close_all, release

__all__ = ["close_segment", "open_one", "open_segment"]


def open_one(handle: Handle, prefix: str) -> int:
    """Open the one-piece memory file ``handle`` names (``prefix`` and its token); return
    a new read-only descriptor.

    :raises SharedMemoryError: as :func:`open_segment`, or if it is in several pieces.
    """
    if handle.more:
        raise SharedMemoryError(
            f"the shared-memory segment is in {len(handle.fds)} pieces, not one"
        )
    return _open_piece(handle, handle.fd, prefix + handle.token, handle.size)


def open_segment(handle: Handle) -> list[int]:
    """Open every piece of the payload segment ``handle`` names (names and sizes
    checked); return new read-only descriptors, in order, which the caller closes (see
    :func:`close_segment`).

    :raises SharedMemoryError: if it is on another host or cannot be opened, or a
        descriptor no longer names the piece announced.
    """
    bounds = piece_bounds(handle.size, len(handle.fds))
    fds: list[int] = []
    try:
        for index, (fd, (_, length)) in enumerate(zip(handle.fds, bounds, strict=True)):
            fds.append(
                _open_piece(handle, fd, piece_name(NAME_PREFIX, handle.token, index), length)
            )
    except BaseException:
        close_all(fds)
        raise
    return fds


def close_segment(fds: Sequence[int], nbytes: int) -> None:
    """Close descriptors from :func:`open_segment` of a segment of ``nbytes`` bytes; a
    large one is closed in the background, since the last close frees its pages."""
    release(nbytes, close_all, list(fds))


def _open_piece(handle: Handle, number: int, name: str, size: int) -> int:
    """Open descriptor ``number`` of the sender of ``handle``, checking that it is the
    memory file ``name`` of ``size`` bytes; return a new read-only descriptor."""
    here = host_identity()
    if here is None or handle.host != here:
        raise SharedMemoryError(
            "the segment is on another host, in another pid namespace or owned by another "
            "user than this process"
        )
    try:
        fd = os.open(f"/proc/{handle.pid}/fd/{number}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedMemoryError(
            f"cannot open the shared-memory segment of process {handle.pid} ({exc.strerror}); "
            "the sender may have exited, or this process may not inspect it"
        ) from exc
    try:
        # The token in the name proves this is the segment meant, not a descriptor
        # number reused since, in the same or a recycled process.
        found = os.readlink(f"/proc/self/fd/{fd}")
        if found != f"/memfd:{name} (deleted)":
            raise SharedMemoryError(
                f"process {handle.pid} no longer holds the shared-memory segment announced"
            )
        found_size = os.fstat(fd).st_size
        if found_size != size:
            raise SharedMemoryError(
                f"the shared-memory segment has {found_size} bytes, {size} were announced"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd
