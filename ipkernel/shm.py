"""Shared memory between processes of one host: how large payloads skip the network.

When a client and an engine run on the same host (and as the same user), a large payload
does not need to be encrypted, relayed by the controller and decrypted: the sender writes
its parts once into a *segment*, the controller relays a small handle, and the receiver
maps the segment. The mapped memory is the receiver's one copy of the data.

Segments are anonymous memory files (``memfd_create``): they never appear in
``/dev/shm`` or any other file system, so nothing can be left behind there, and the
kernel frees one as soon as no process holds it (an open descriptor or a mapping). The
receiver opens the sender's descriptor through ``/proc/<pid>/fd/<fd>``, which the kernel
allows only to processes that may inspect the sender (the same user, in practice), and
checks that it got the right segment: a random token in the segment's name, and its
size. A segment is sealed once written (no writes, no resizing), so what the receiver
maps cannot change under it.

The sender keeps its descriptor open until the receiver says it has opened the segment
(see :class:`SegmentKeeper`), then closes it. If either process dies the kernel closes
its descriptors and unmaps its mappings, so a segment never outlives both ends; a keeper
also watches the receiver's process and closes what it kept for it when that process
exits. Whoever lets go last pays for freeing the pages (about 0.15 ms per MB): large
regions are unmapped and large segments closed by a low-priority background thread,
off the thread that moves the data.

Nothing here touches the network or Twisted except :class:`SegmentKeeper`, which takes a
reactor to watch processes.

Layout of a segment: each part of a payload (the pickle stream, then the out-of-band
buffers) at its own offset; parts of :data:`MAP_SEPARATELY` bytes or more start on a page
boundary and are mapped on their own (copy-on-write), so each numpy array keeps only its
own mapping alive; smaller parts are read into ``bytearray`` objects.

Pieces: the kernel provides a memory file's pages one at a time under the file's lock,
so one file fills at about a third of memcpy speed, whatever the number of writers. A
segment of 32 MiB or more is therefore cut into *pieces*, one memory file each, written
at once by as many threads (one per usable CPU, at most 8, each piece 16 MiB or more).
All pieces but the last have the same size, a multiple of the page size, so a
page-aligned part maps piece by piece into one reserved address range: the receiver
still gets one contiguous buffer per part, and no copy. Each piece is named after the
segment's token and its index, sealed, and checked (name and size) when opened; the
handle lists every piece's descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import queue
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ipkernel.errors import SharedMemoryError

__all__ = [
    "MAP_SEPARATELY",
    "Handle",
    "Segment",
    "SegmentKeeper",
    "SharedMemoryError",
    "available",
    "can_open",
    "host_identity",
    "layout",
    "local_probe",
    "close_segment",
    "map_parts",
    "open_segment",
]

#: Parts at least this large get a page-aligned place and a mapping of their own.
MAP_SEPARATELY = 256 * 1024

_PAGE = mmap.ALLOCATIONGRANULARITY
# Small parts stay aligned for any numpy dtype.
_SMALL_ALIGN = 64
_NAME_PREFIX = "ipkernel-"
_PROBE_PREFIX = "ipkernel-probe-"
# pwrite() moves at most this much per call on Linux.
_MAX_IO = 0x7FFFF000
# A segment is split into pieces of at least this size, written in parallel threads: the
# kernel provides a memory file's pages one by one under the file's lock, so one file
# fills at about a third of memcpy speed, while two fill twice as fast as one.
_PIECE_MIN = 16 * 2**20
_MAX_PIECES = 8
# Regions and segments at least this large are unmapped and closed in a background
# thread: freeing their pages takes about 0.15 ms per MB.
_RELEASE_LATER = 4 * 2**20
# At most this much waits for the background thread (or one region, however large).
_RELEASE_BACKLOG = 1024 * 2**20
_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 0)
    | getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_WRITE", 0)
)


def _read_host_identity() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    # The boot id names the kernel (this host, this boot); the pid namespace says that
    # /proc/<pid> means the same process on both sides; the user id is who may open it.
    return f"{boot}/{pidns.st_dev}:{pidns.st_ino}/{os.getuid()}"


_host_identity: str | None = None
_host_identity_read = False


def host_identity() -> str | None:
    """A string equal for two processes exactly when they can share segments, or None.

    Equal means: same kernel boot, same pid namespace, same user. None where shared
    memory is not supported (not Linux, no ``memfd_create``, no ``/proc``).
    """
    global _host_identity, _host_identity_read
    if not _host_identity_read:
        _host_identity = _read_host_identity() if _supported() else None
        _host_identity_read = True
    return _host_identity


def _supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def available() -> bool:
    """True when this process can create and open segments."""
    return host_identity() is not None


@dataclass(frozen=True)
class Handle:
    """What a receiver needs to open a segment: small, and safe to relay.

    ``host`` is the sender's :func:`host_identity`, ``pid`` and ``fd`` locate its
    descriptor, ``token`` is the random part of the segment's name, ``size`` its size.
    A large segment is made of several memory files, its *pieces* (see the module's
    docstring): ``fd`` is the first one's descriptor, ``more`` the others', in order.
    """

    host: str
    pid: int
    fd: int
    token: str
    size: int
    more: tuple[int, ...] = ()

    @property
    def fds(self) -> tuple[int, ...]:
        """The sender's descriptors of the pieces, in order."""
        return (self.fd, *self.more)

    def to_wire(self) -> list:
        """A list of plain values (bytes, int, a list of int), for PB."""
        wire = [self.host.encode(), self.pid, self.fd, self.token.encode(), self.size]
        return wire + [list(self.more)] if self.more else wire

    @classmethod
    def from_wire(cls, value: object) -> Handle:
        """The inverse of :meth:`to_wire`; ``ValueError`` if ``value`` is not one."""
        if not isinstance(value, (list, tuple)) or len(value) not in (5, 6):
            raise ValueError(f"not a segment handle: {value!r:.200}")
        host, pid, fd, token, size = value[:5]
        more = tuple(value[5]) if len(value) == 6 and isinstance(value[5], (list, tuple)) else ()
        if len(value) == 6 and not more:
            raise ValueError(f"not a segment handle: {value!r:.200}")
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        if not (
            isinstance(host, str)
            and isinstance(token, str)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in (pid, fd, size, *more))
            and pid > 0
            and min((fd, *more)) >= 0
            and size >= 0
            and token.isalnum()
            and len(more) < _MAX_PIECES
        ):
            raise ValueError(f"not a segment handle: {value!r:.200}")
        return cls(host, pid, fd, token, size, more)


def layout(lengths: Sequence[int]) -> tuple[list[int], int]:
    """Where each part goes in a segment: ``(offsets, size)``.

    Parts of :data:`MAP_SEPARATELY` bytes or more start on a page boundary so that they
    can be mapped on their own.
    """
    offsets = []
    position = 0
    for n in lengths:
        align = _PAGE if n >= MAP_SEPARATELY else _SMALL_ALIGN
        position = -(-position // align) * align
        offsets.append(position)
        position += n
    return offsets, position


def _piece_bounds(size: int, count: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each of ``count`` pieces of a segment of ``size`` bytes.

    Every piece but the last has the same length, a multiple of the page size, so a
    page-aligned part maps piece by piece. ``SharedMemoryError`` if a piece would be empty.
    """
    step = -(-size // count // _PAGE) * _PAGE if count > 1 else size
    bounds = [(i * step, min(step, size - i * step)) for i in range(count)]
    if count < 1 or count > _MAX_PIECES or (count > 1 and bounds[-1][1] <= 0):
        raise SharedMemoryError(f"a segment of {size} bytes cannot be in {count} pieces")
    return bounds


def _piece_count(size: int) -> int:
    """How many pieces to write a segment of ``size`` bytes in, in parallel."""
    if size < 2 * _PIECE_MIN:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_PIECES, size // _PIECE_MIN))


def _create(name: str, size: int) -> int:
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
        bounds = _piece_bounds(size, _piece_count(size))
        fds: list[int | None] = [None] * len(bounds)

        def write_piece(index: int) -> None:
            start, length = bounds[index]
            fd = fds[index] = _create(_piece_name(_NAME_PREFIX, token, index), length)
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
            _release(self.size, _close_all, fds)

    @property
    def closed(self) -> bool:
        return self.fds is None

    def __del__(self) -> None:
        self.close()


# Source ranges at least this large are made present before they are written out.
_PREFAULT_FROM = 4 * 1024 * 1024
_MADV_POPULATE_READ = 22  # Linux 5.14
_prefault_works = True


def _prefault(view: memoryview) -> None:
    """Make the pages of ``view`` present in one call (a hint; errors ignored).

    A source that is itself a mapping not yet touched (an array received through shared
    memory, being sent on) would otherwise fault page by page inside ``pwrite``, which
    costs several times more than faulting them in beforehand. Only writable buffers
    expose their address; others are left as they are.
    """
    global _prefault_works
    if not _prefault_works or _libc is None:
        return
    try:
        holder = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError):
        return
    address = ctypes.addressof(holder)
    del holder
    start = address - address % _PAGE
    if _libc.madvise(start, address + view.nbytes - start, _MADV_POPULATE_READ) != 0:
        _prefault_works = False  # an older kernel


def _piece_name(prefix: str, token: str, index: int) -> str:
    """The memory file name of piece ``index`` of the segment ``token``."""
    return f"{prefix}{token}-{index}" if index else prefix + token


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_writers_lock = threading.Lock()
_writers_pool: tuple[int, ThreadPoolExecutor] | None = None


def _writers() -> ThreadPoolExecutor:
    """This process's threads that write pieces (made on first use, again after a fork)."""
    global _writers_pool
    with _writers_lock:
        if _writers_pool is None or _writers_pool[0] != os.getpid():
            pool = ThreadPoolExecutor(_MAX_PIECES - 1, thread_name_prefix="ipkernel-shm-write")
            _writers_pool = (os.getpid(), pool)
        return _writers_pool[1]


class _Releaser:
    """A background thread that unmaps regions and closes descriptors.

    Freeing the pages of a large segment costs about 0.15 ms per MB, paid by the thread
    that drops the last reference. This thread pays it instead of the one that received
    or answered the data (an engine's main or reactor thread, a client's), and at the
    lowest priority (nice 19), so it uses CPU time the transfers leave idle rather than
    slowing the next one. What waits here is bounded (:data:`_RELEASE_BACKLOG` bytes,
    or one job): beyond, the caller releases at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0

    def submit(self, nbytes: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)``, which frees ``nbytes``, in the thread; False if the backlog
        is full or no thread can be started (then the caller runs it)."""
        if sys.is_finalizing():
            # A thread started now would never run, and starting it would wait forever
            # (a segment dropped at exit, by its __del__): free at once, or not at all.
            return False
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: a thread of its own
                pending: queue.SimpleQueue = queue.SimpleQueue()
                try:
                    threading.Thread(
                        target=self._run, args=(pending,), name="ipkernel-shm-release", daemon=True
                    ).start()
                except RuntimeError:  # interpreter shutting down
                    return False
                self._queue, self._pid, self._pending = pending, os.getpid(), 0
            if self._pending and self._pending + nbytes > _RELEASE_BACKLOG:
                return False
            self._pending += nbytes
            self._queue.put((nbytes, fn, args))
        return True

    def _run(self, pending: queue.SimpleQueue) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            nbytes, fn, args = pending.get()
            with contextlib.suppress(Exception):
                fn(*args)
            with self._lock:
                if pending is self._queue:
                    self._pending -= nbytes


_releaser = _Releaser()


def _release(nbytes: int, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``, which frees ``nbytes``: in the background thread if that many are
    worth it (:data:`_RELEASE_LATER`) and it can take them, now otherwise."""
    if not (nbytes >= _RELEASE_LATER and _releaser.submit(nbytes, fn, *args)):
        fn(*args)


def _open(handle: Handle, prefix: str) -> int:
    """Open the one-piece segment ``handle`` names; return a new read-only descriptor."""
    if handle.more:
        raise SharedMemoryError(
            f"the shared-memory segment is in {len(handle.fds)} pieces, not one"
        )
    return _open_piece(handle, handle.fd, prefix + handle.token, handle.size)


def _open_pieces(handle: Handle) -> list[int]:
    """Open every piece of the payload segment ``handle`` names; new read-only
    descriptors, in order."""
    bounds = _piece_bounds(handle.size, len(handle.fds))
    fds: list[int] = []
    try:
        for index, (fd, (_, length)) in enumerate(zip(handle.fds, bounds, strict=True)):
            fds.append(
                _open_piece(handle, fd, _piece_name(_NAME_PREFIX, handle.token, index), length)
            )
    except BaseException:
        _close_all(fds)
        raise
    return fds


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


def open_segment(handle: Handle) -> list[int]:
    """Open every piece of the payload segment ``handle`` names (names and sizes
    checked); return new read-only descriptors, in order, which the caller closes (see
    :func:`close_segment`).

    :raises SharedMemoryError: if it is on another host or cannot be opened, or a
        descriptor no longer names the piece announced.
    """
    return _open_pieces(handle)


def close_segment(fds: Sequence[int], nbytes: int) -> None:
    """Close descriptors from :func:`open_segment` of a segment of ``nbytes`` bytes; a
    large one is closed in the background, since the last close frees its pages."""
    _release(nbytes, _close_all, list(fds))


class _Unmap:
    """Unmaps a region when the last object viewing it is gone."""

    __slots__ = ("addr", "length")

    def __init__(self, addr: int, length: int) -> None:
        self.addr = addr
        self.length = length

    def __del__(self) -> None:
        _release(self.length, _munmap, self.addr, self.length)


def _munmap(addr: int, length: int) -> None:
    _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(length))


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


_libc = _load_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


# Not in Python's mmap module; the values are Linux's, on every architecture.
_PROT_NONE = 0
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    result = _libc.mmap(addr, length, prot, flags, fd, offset)
    if result is None or result == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


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
    if _libc is None:
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
        addr = _mmap(None, length, prot, private, fds[index], start)
    else:
        reserve = private | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        addr = _mmap(None, length, _PROT_NONE, reserve, -1, 0)
        try:
            place = addr
            for index, start, n in runs:
                _mmap(place, n, prot, private | _MAP_FIXED, fds[index], start)
                place += n
        except BaseException:
            _munmap(addr, length)
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
        if n >= MAP_SEPARATELY and offset % _PAGE:
            raise SharedMemoryError("a segment handle with a misaligned large part")
    bounds = _piece_bounds(handle.size, len(handle.fds))
    fds = _open_pieces(handle)
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
        _close_all(fds)


# A process's probe: a tiny segment kept open for the process's life. Another process
# that can open it can open this process's payload segments too.

_probe_lock = threading.Lock()
_probe: tuple[int, Handle] | None = None  # (pid that made it, handle)


def local_probe() -> Handle | None:
    """This process's probe handle (made on first use), or None without shared memory."""
    global _probe
    if not available():
        return None
    with _probe_lock:
        pid = os.getpid()
        if _probe is None or _probe[0] != pid:  # a forked child needs its own
            token = secrets.token_hex(16)
            try:
                fd = _create(_PROBE_PREFIX + token, 0)
            except SharedMemoryError:
                return None
            _probe = (pid, Handle(host_identity() or "", pid, fd, token, 0))
        return _probe[1]


_checked: dict[tuple[int, str], bool] = {}


def can_open(probe: Handle) -> bool:
    """Whether this process can open segments of the process that made ``probe``.

    The answer is remembered per probe.
    """
    key = (probe.pid, probe.token)
    known = _checked.get(key)
    if known is None:
        try:
            os.close(_open(probe, _PROBE_PREFIX))
            known = True
        except SharedMemoryError:
            known = False
        if len(_checked) > 4096:
            _checked.clear()
        _checked[key] = known
    return known


class SegmentKeeper:
    """Holds the segments this process sent until their receivers have opened them.

    :meth:`keep` a segment with the receiver's pid; :meth:`release` it by token when the
    receiver says it has opened it. When the receiver's process exits first (killed, or it
    dropped the payload unopened), the keeper closes everything it kept for it: it watches
    the process with a pid file descriptor registered with ``reactor``. Thread-safe:
    engines make segments in their main thread and release them from the reactor's.
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._segments: dict[str, tuple[Segment, int]] = {}
        self._watchers: dict[int, _ProcessWatcher] = {}

    def keep(self, segment: Segment, reader_pid: int) -> None:
        """Hold ``segment`` until :meth:`release` or until process ``reader_pid`` exits."""
        with self._lock:
            self._segments[segment.token] = (segment, reader_pid)
            watched = reader_pid in self._watchers
        if not watched and self._reactor is not None:
            self._reactor.callFromThread(self._watch, reader_pid)

    def release(self, tokens: Sequence[str]) -> int:
        """Close the segments named by ``tokens``; return how many were held."""
        closed = 0
        for token in tokens:
            with self._lock:
                entry = self._segments.pop(token, None)
            if entry is not None:
                entry[0].close()
                closed += 1
        return closed

    def close_all(self) -> None:
        """Close every segment held and stop watching processes."""
        with self._lock:
            entries = list(self._segments.values())
            self._segments.clear()
            watchers = list(self._watchers.values())
            self._watchers.clear()
        for segment, _ in entries:
            segment.close()
        for watcher in watchers:
            watcher.stop()

    def __len__(self) -> int:
        with self._lock:
            return len(self._segments)

    def _watch(self, pid: int) -> None:
        with self._lock:
            if pid in self._watchers or not any(p == pid for _, p in self._segments.values()):
                return
        try:
            watcher = _ProcessWatcher(self._reactor, pid, self._process_exited)
        except OSError:
            # Gone already (or pidfd unsupported: then segments wait for release).
            if not hasattr(os, "pidfd_open"):
                return
            self._process_exited(pid)
            return
        with self._lock:
            self._watchers[pid] = watcher

    def _process_exited(self, pid: int) -> None:
        with self._lock:
            tokens = [t for t, (_, p) in self._segments.items() if p == pid]
            watcher = self._watchers.pop(pid, None)
        self.release(tokens)
        if watcher is not None:
            watcher.stop()


class _ProcessWatcher:
    """A reactor reader on a pid file descriptor: readable once the process has exited."""

    def __init__(self, reactor: Any, pid: int, on_exit: Any) -> None:
        self._reactor = reactor
        self._pid = pid
        self._on_exit = on_exit
        self._fd: int | None = os.pidfd_open(pid)
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self._on_exit(self._pid)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.stop()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"process-watcher-{self._pid}"

    def stop(self) -> None:
        if self._fd is not None:
            self._reactor.removeReader(self)
            fd, self._fd = self._fd, None
            os.close(fd)
