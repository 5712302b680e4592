"""The sender's side of a segment: :class:`Segment`, written once, then sealed.

Segments are anonymous memory files (``memfd_create``): they never appear in
``/dev/shm`` or any other file system, so nothing can be left behind there, and the
kernel frees one as soon as no process holds it (an open descriptor or a mapping). A
segment is sealed once written (no writes, no resizing), so what a receiver maps cannot
change under it.

Pieces: the kernel provides a memory file's pages one at a time under the file's lock,
so one file fills at about a third of memcpy speed, whatever the number of writers. A
segment of 32 MiB or more is therefore cut into pieces (see :mod:`ipkernel.shm.layout`),
one memory file each, written at once by as many threads (one per usable CPU, at most 8,
each piece 16 MiB or more).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipkernel.errors import SharedMemoryError
from ipkernel.shm.handle import Handle
from ipkernel.shm.host import available, host_identity
from ipkernel.shm.layout import MAX_PIECES, NAME_PREFIX, PAGE, layout, piece_bounds, piece_name
from ipkernel.shm.libc import libc
from ipkernel.shm.release import close_all, release

__all__ = ["Segment", "create_file"]

# pwrite() moves at most this much per call on Linux.
_MAX_IO = 0x7FFFF000
# A segment is split into pieces of at least this size, written in parallel threads: the
# kernel provides a memory file's pages one by one under the file's lock, so one file
# fills at about a third of memcpy speed, while two fill twice as fast as one.
_PIECE_MIN = 16 * 2**20
_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 0)
    | getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_WRITE", 0)
)
# Source ranges at least this large are made present before they are written out.
_PREFAULT_FROM = 4 * 1024 * 1024
_MADV_POPULATE_READ = 22  # Linux 5.14


def _piece_count(size: int) -> int:
    """How many pieces to write a segment of ``size`` bytes in, in parallel."""
    if size < 2 * _PIECE_MIN:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_PIECES, size // _PIECE_MIN))


def create_file(name: str, size: int) -> int:
    """A new memory file ``name`` of ``size`` bytes, mode 0600; its descriptor.

    :raises SharedMemoryError: if it cannot be made.
    """
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
    except OSError as exc:
        raise SharedMemoryError(f"cannot create a shared-memory segment: {exc}") from exc
    try:
        # memfd files start with mode 0777; nobody else can reach the descriptor anyway,
        # but the mode says what is meant.
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise SharedMemoryError(
            f"cannot make a shared-memory segment of {size} bytes: {exc}"
        ) from exc
    return fd


class Segment:
    """The sender's side of one segment: create, write once, hand out, close.

    Holds the descriptors of its pieces until :meth:`close`; use :meth:`write` to make
    one.
    """

    def __init__(self, fds: Sequence[int], token: str, size: int, offsets: list[int]) -> None:
        self.fds: tuple[int, ...] | None = tuple(fds)
        self.token = token
        self.size = size
        self.offsets = offsets
        self.handle = Handle(host_identity() or "", os.getpid(), fds[0], token, size, self.fds[1:])

    @classmethod
    def write(cls, parts: Sequence[Any]) -> Segment:
        """A new sealed segment holding ``parts`` (buffers), laid out by :func:`layout`.

        A segment of 32 MiB or more is written as several pieces at once, one per thread
        (as many as this process may use CPUs, at most 8, each of 16 MiB or more).

        :raises SharedMemoryError: if the segment cannot be made (no memory, no
            ``memfd_create``, too many open files).
        """
        if not available():
            raise SharedMemoryError("shared memory is not available on this system")
        views = [memoryview(p).cast("B") for p in parts]
        offsets, size = layout([v.nbytes for v in views])
        token = secrets.token_hex(16)
        bounds = piece_bounds(size, _piece_count(size))
        fds: list[int | None] = [None] * len(bounds)

        def write_piece(index: int) -> None:
            start, length = bounds[index]
            fd = fds[index] = create_file(piece_name(NAME_PREFIX, token, index), length)
            for view, offset in zip(views, offsets, strict=True):
                # The part's bytes that fall in this piece.
                first, last = max(offset, start), min(offset + view.nbytes, start + length)
                if last - first >= _PREFAULT_FROM:
                    _prefault(view[first - offset : last - offset])
                while first < last:
                    first += os.pwrite(
                        fd,
                        view[first - offset : min(last, first + _MAX_IO) - offset],
                        first - start,
                    )
            if _SEALS:
                with contextlib.suppress(OSError):  # sealing is a safeguard, not a need
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)

        try:
            others = []
            try:
                for index in range(1, len(bounds)):
                    try:
                        others.append(_writers().submit(write_piece, index))
                    except RuntimeError:  # the interpreter is shutting down: no threads
                        write_piece(index)
                write_piece(0)
            finally:
                # Every write has ended before any descriptor is closed.
                errors = [f.exception() for f in others]
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                raise error
        except BaseException as exc:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, OSError):
                raise SharedMemoryError(f"cannot write a shared-memory segment: {exc}") from exc
            raise
        return cls([fd for fd in fds if fd is not None], token, size, offsets)

    def close(self) -> None:
        """Close the descriptors (idempotent). Receivers that opened them keep their copy.

        A large segment's descriptors are closed in a background thread, shortly: when
        this was the last reference, the kernel frees the pages then.
        """
        fds, self.fds = self.fds, None
        if fds is not None:
            release(self.size, close_all, fds)

    @property
    def closed(self) -> bool:
        return self.fds is None

    def __del__(self) -> None:
        self.close()


_prefault_works = True


def _prefault(view: memoryview) -> None:
    """Make the pages of ``view`` present in one call (a hint; errors ignored).

    A source that is itself a mapping not yet touched (an array received through shared
    memory, being sent on) would otherwise fault page by page inside ``pwrite``, which
    costs several times more than faulting them in beforehand. Only writable buffers
    expose their address; others are left as they are.
    """
    global _prefault_works
    if not _prefault_works or libc is None:
        return
    try:
        holder = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError):
        return
    address = ctypes.addressof(holder)
    del holder
    start = address - address % PAGE
    if libc.madvise(start, address + view.nbytes - start, _MADV_POPULATE_READ) != 0:
        _prefault_works = False  # an older kernel


_writers_lock = threading.Lock()
_writers_pool: tuple[int, ThreadPoolExecutor] | None = None


def _writers() -> ThreadPoolExecutor:
    """This process's threads that write pieces (made on first use, again after a fork)."""
    global _writers_pool
    with _writers_lock:
        if _writers_pool is None or _writers_pool[0] != os.getpid():
            pool = ThreadPoolExecutor(MAX_PIECES - 1, thread_name_prefix="ipkernel-shm-write")
            _writers_pool = (os.getpid(), pool)
        return _writers_pool[1]
