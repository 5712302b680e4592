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
exits.

Nothing here touches the network or Twisted except :class:`SegmentKeeper`, which takes a
reactor to watch processes.

Layout of a segment: each part of a payload (the pickle stream, then the out-of-band
buffers) at its own offset; parts of :data:`MAP_SEPARATELY` bytes or more start on a page
boundary and are mapped on their own (copy-on-write), so each numpy array keeps only its
own mapping alive; smaller parts are read into ``bytearray`` objects.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import secrets
import sys
import threading
from collections.abc import Sequence
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
    "map_parts",
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
    """

    host: str
    pid: int
    fd: int
    token: str
    size: int

    def to_wire(self) -> list:
        """A list of plain values (bytes and int), for PB."""
        return [self.host.encode(), self.pid, self.fd, self.token.encode(), self.size]

    @classmethod
    def from_wire(cls, value: object) -> Handle:
        """The inverse of :meth:`to_wire`; ``ValueError`` if ``value`` is not one."""
        if not isinstance(value, (list, tuple)) or len(value) != 5:
            raise ValueError(f"not a segment handle: {value!r:.200}")
        host, pid, fd, token, size = value
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        if not (
            isinstance(host, str)
            and isinstance(token, str)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in (pid, fd, size))
            and pid > 0
            and fd >= 0
            and size >= 0
            and token.isalnum()
        ):
            raise ValueError(f"not a segment handle: {value!r:.200}")
        return cls(host, pid, fd, token, size)


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

    Holds one descriptor until :meth:`close`; use :meth:`write` to make one.
    """

    def __init__(self, fd: int, token: str, size: int, offsets: list[int]) -> None:
        self.fd: int | None = fd
        self.token = token
        self.size = size
        self.offsets = offsets
        self.handle = Handle(host_identity() or "", os.getpid(), fd, token, size)

    @classmethod
    def write(cls, parts: Sequence[Any]) -> Segment:
        """A new sealed segment holding ``parts`` (buffers), laid out by :func:`layout`.

        :raises SharedMemoryError: if the segment cannot be made (no memory, no
            ``memfd_create``, too many open files).
        """
        if not available():
            raise SharedMemoryError("shared memory is not available on this system")
        views = [memoryview(p).cast("B") for p in parts]
        offsets, size = layout([v.nbytes for v in views])
        token = secrets.token_hex(16)
        fd = _create(_NAME_PREFIX + token, size)
        try:
            for view, offset in zip(views, offsets, strict=True):
                done = 0
                while done < view.nbytes:
                    done += os.pwrite(fd, view[done : done + _MAX_IO], offset + done)
            if _SEALS:
                with contextlib.suppress(OSError):  # sealing is a safeguard, not a need
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except OSError as exc:
            os.close(fd)
            raise SharedMemoryError(f"cannot write a shared-memory segment: {exc}") from exc
        return cls(fd, token, size, offsets)

    def close(self) -> None:
        """Close the descriptor (idempotent). Receivers that opened it keep their copy."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd is None

    def __del__(self) -> None:
        self.close()


def _open(handle: Handle, prefix: str) -> int:
    """Open the segment ``handle`` names; return a new read-only descriptor."""
    here = host_identity()
    if here is None or handle.host != here:
        raise SharedMemoryError(
            "the segment is on another host, in another pid namespace or owned by another "
            "user than this process"
        )
    try:
        fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedMemoryError(
            f"cannot open the shared-memory segment of process {handle.pid} ({exc.strerror}); "
            "the sender may have exited, or this process may not inspect it"
        ) from exc
    try:
        # The token in the name proves this is the segment meant, not a descriptor
        # number reused since, in the same or a recycled process.
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name != f"/memfd:{prefix}{handle.token} (deleted)":
            raise SharedMemoryError(
                f"process {handle.pid} no longer holds the shared-memory segment announced"
            )
        size = os.fstat(fd).st_size
        if size != handle.size:
            raise SharedMemoryError(
                f"the shared-memory segment has {size} bytes, {handle.size} were announced"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Unmap:
    """Unmaps a region when the last object viewing it is gone."""

    __slots__ = ("addr", "length")

    def __init__(self, addr: int, length: int) -> None:
        self.addr = addr
        self.length = length

    def __del__(self) -> None:
        _libc.munmap(ctypes.c_void_p(self.addr), ctypes.c_size_t(self.length))


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
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_private(fd: int, offset: int, length: int) -> Any:
    """A private (copy-on-write) writable mapping of ``fd``, as a buffer.

    ``mmap.mmap`` would keep a duplicate of the descriptor open for as long as the
    mapping lives, so every array received would hold a descriptor (and a process would
    run out of them); a mapping made through libc holds none. The buffer is a ctypes
    array over the mapping; the region is unmapped once nothing refers to it.
    """
    if _libc is None:
        return mmap.mmap(
            fd,
            length,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset,
        )
    addr = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    region = (ctypes.c_ubyte * length).from_address(addr)
    region._unmap = _Unmap(addr, length)  # type: ignore[attr-defined]
    return memoryview(region).cast("B")


def map_parts(handle: Handle, offsets: Sequence[int], lengths: Sequence[int]) -> list[Any]:
    """Open the segment of ``handle`` and return its parts as writable buffers.

    Parts of :data:`MAP_SEPARATELY` bytes or more are private (copy-on-write) mappings of
    their own: no copy is made, and writing to one changes only this process's view. The
    others are copied into ``bytearray`` objects. The descriptor is closed before
    returning; the mappings keep the memory alive as long as something refers to them.

    :raises SharedMemoryError: if the segment cannot be opened or is not the one meant, or
        if ``offsets`` and ``lengths`` do not fit in it.
    """
    if len(offsets) != len(lengths):
        raise SharedMemoryError("a segment handle with mismatched offsets and lengths")
    for offset, n in zip(offsets, lengths, strict=True):
        if offset < 0 or n < 0 or offset + n > handle.size:
            raise SharedMemoryError("a segment handle whose parts do not fit in the segment")
        if n >= MAP_SEPARATELY and offset % _PAGE:
            raise SharedMemoryError("a segment handle with a misaligned large part")
    fd = _open(handle, _NAME_PREFIX)
    try:
        parts: list[Any] = []
        for offset, n in zip(offsets, lengths, strict=True):
            if n >= MAP_SEPARATELY:
                parts.append(_map_private(fd, offset, n))
            else:
                buf = bytearray(n)
                if n:
                    got = os.preadv(fd, [buf], offset)
                    if got != n:
                        raise SharedMemoryError("the shared-memory segment ended early")
                parts.append(buf)
        return parts
    except OSError as exc:
        raise SharedMemoryError(f"cannot map the shared-memory segment: {exc}") from exc
    finally:
        os.close(fd)


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
