"""Payloads the controller keeps: large task bodies and task results.

A MultiEngine payload passes through the controller, relayed chunk by chunk to the one
engine or client it is meant for. A task's payloads cannot: its body waits in the queue
until an engine is free and is sent again if the attempt fails and is retried; its
result waits until a client fetches it, possibly more than once. So the controller keeps
them, as a :class:`KeptPayload`, in one of three forms:

bytes
    a stream received whole into buffers of the controller (see :func:`keep`): only the
    payload's header is read (its part sizes); nothing is unpickled. Each use sends the
    bytes on as a new stream (:class:`~ipkernel.wire.outgoing.OutgoingPayload`).
segment
    a shared-memory segment its sender wrote (:mod:`ipkernel.shm`), *adopted*: the
    controller opens the sender's descriptor and holds its own, never mapping it, so the
    bytes stay out of the controller's memory and the sender may exit. Each use hands a
    receiver on this host a handle naming the controller's descriptor; a receiver
    elsewhere gets the bytes streamed from a read-only mapping.
file
    either of the above moved to a file by the task store
    (:meth:`KeptPayload.move_to`: past the controller's memory budget, or always with
    ``--db``), or a file of an earlier run opened again (:func:`open_kept`). The file
    holds a small head (a magic string and the header's length), the header and the
    parts; each use streams the parts from a read-only mapping of the file.

:meth:`KeptPayload.close` lets go (frees the buffers, closes the descriptor, deletes a
file it owns); the task controller closes a body once its task is finished and a result
when ``clear()`` forgets it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from ipkernel import shm
from ipkernel.errors import SerializationError, SharedMemoryError, TransferError
from ipkernel.frames import Serialized, read_header
from ipkernel.wire.buffers import allocate_part, fill_parts
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.relay import RelayedPayload
from ipkernel.wire.shared import SharedPayload

__all__ = ["KeptPayload", "keep", "keepable", "open_kept"]

# The head of a payload file: a magic string and the length of the header after it.
_FILE_HEAD = struct.Struct("<8sQ")
_FILE_MAGIC = b"IPKKEPT1"


def keepable(value: object) -> bool:
    """Whether ``value`` is a payload :func:`keep` takes (a stream or a segment handle)."""
    return isinstance(value, (RelayedPayload, SharedPayload))


def keep(payload: Any) -> Deferred:
    """Keep ``payload`` (a :class:`RelayedPayload` or a :class:`SharedPayload` that
    arrived at the controller).

    Fires with a :class:`KeptPayload` once the controller holds all of it: at once for a
    segment (adopted), when the last byte is in for a stream. Fails with
    :class:`~ipkernel.errors.TransferError` if the stream is aborted or its header is
    unreadable, :class:`~ipkernel.errors.SharedMemoryError` if the segment cannot be
    opened, ``TypeError`` for anything else.
    """
    if isinstance(payload, SharedPayload):
        try:
            return succeed(_adopt(payload))
        except (SharedMemoryError, SerializationError) as exc:
            return fail(SharedMemoryError(str(exc)))
    if isinstance(payload, RelayedPayload):
        return _StreamSink(payload).done
    return fail(TypeError(f"cannot keep a {type(payload).__name__}"))


class KeptPayload:
    """A payload the controller holds (see the module docstring)."""

    def __init__(
        self,
        header: bytes,
        nbytes: int,
        parts: list[Any] | None = None,
        segment: tuple[list[int], str, int, list[int]] | None = None,
        path: str | None = None,
        owns_file: bool = False,
    ) -> None:
        self.header = header
        #: The payload's size in bytes (its parts, header excluded).
        self.nbytes = nbytes
        self._parts = parts
        # (descriptors of its pieces, token, size, offsets) of an adopted segment.
        self._segment = segment
        self._mapped: list[Any] | None = None
        #: The file it is kept in, or ``None`` (see :meth:`move_to`).
        self.path = path
        self._owns_file = owns_file
        self.closed = False

    @property
    def shared(self) -> bool:
        """True for an adopted segment, which receivers on this host can map."""
        return self._segment is not None

    def sendable(self, share: bool) -> Any:
        """A new object to put in a message that sends this payload once.

        ``share`` says the receiver can open this process's segments (same host, same
        user): an adopted segment then goes as a handle. Otherwise the bytes stream.

        :raises TransferError: if the payload was closed.
        """
        if self.closed:
            raise TransferError("the payload is no longer held (its task record was cleared)")
        if self.path is not None:
            return OutgoingPayload(Serialized.from_parts(self.header, self._file_parts()))
        segment = self._segment
        if segment is not None:
            if share:
                return SharedPayload(self.header, self._own_handle(), list(segment[3]))
            return OutgoingPayload(Serialized.from_parts(self.header, self._mapped_parts()))
        assert self._parts is not None
        return OutgoingPayload(Serialized.from_parts(self.header, self._parts))

    def move_to(self, path: str, *, owns_file: bool) -> None:
        """Write the payload to a new file at ``path`` (mode 0600) and let go of its
        buffers or segment; later sends read the file. With ``owns_file``,
        :meth:`close` deletes the file. Nothing to do for a payload in a file already.

        :raises OSError: if the file cannot be written (then nothing changes).
        """
        if self.closed:
            raise OSError(f"cannot move a payload that was closed to {path}")
        if self.path is not None:
            return
        parts = self._parts if self._segment is None else self._mapped_parts()
        assert parts is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb") as out:
                out.write(_FILE_HEAD.pack(_FILE_MAGIC, len(self.header)))
                out.write(self.header)
                for part in parts:
                    out.write(part)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self.path = path
        self._owns_file = owns_file
        self._parts = None
        self._mapped = None
        segment, self._segment = self._segment, None
        if segment is not None:
            shm.close_segment(segment[0], segment[2])

    def close(self) -> None:
        """Let go of the bytes, the segment or the file it owns (streams already started
        keep their views)."""
        if self.closed:
            return
        self.closed = True
        self._parts = None
        self._mapped = None
        segment, self._segment = self._segment, None
        if segment is not None:
            shm.close_segment(segment[0], segment[2])
        if self.path is not None and self._owns_file:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __del__(self) -> None:
        segment = getattr(self, "_segment", None)
        if segment is not None:
            self._segment = None
            for fd in segment[0]:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _own_handle(self) -> shm.Handle:
        """A handle naming this process's descriptors of the adopted segment."""
        assert self._segment is not None
        fds, token, size, _ = self._segment
        return shm.Handle(
            shm.host_identity() or "", os.getpid(), fds[0], token, size, tuple(fds[1:])
        )

    def _mapped_parts(self) -> list[Any]:
        """The parts of an adopted segment, mapped here (for a receiver on another host,
        which must be sent the bytes); the mappings are kept for later sends."""
        if self._mapped is None:
            assert self._segment is not None
            lengths = read_header(self.header)
            self._mapped = shm.map_parts(self._own_handle(), self._segment[3], lengths)
        return self._mapped

    def _file_parts(self) -> list[memoryview]:
        """The parts, as views of a read-only mapping of the file (kept alive by them)."""
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise TransferError(f"the payload's file {self.path} cannot be read: {exc}") from None
        view = memoryview(mapped)
        offset = _FILE_HEAD.size + len(self.header)
        parts = []
        for length in read_header(self.header):
            parts.append(view[offset : offset + length])
            offset += length
        return parts


def open_kept(path: str) -> KeptPayload:
    """The payload in the file at ``path`` (written by :meth:`KeptPayload.move_to`, by
    this run or an earlier one); the file is not its to delete.

    :raises OSError: if the file is missing, unreadable, cut short or not a payload file.
    """
    with open(path, "rb") as f:
        head = f.read(_FILE_HEAD.size)
        if len(head) != _FILE_HEAD.size:
            raise OSError(f"{path} is not a payload file (too short)")
        magic, header_size = _FILE_HEAD.unpack(head)
        header = f.read(header_size) if magic == _FILE_MAGIC and header_size < 1 << 30 else b""
        try:
            lengths = read_header(header)
        except SerializationError as exc:
            raise OSError(f"{path} is not a payload file ({exc})") from None
        size = os.fstat(f.fileno()).st_size
    if size != _FILE_HEAD.size + header_size + sum(lengths):
        raise OSError(f"the payload file {path} is cut short")
    return KeptPayload(header, sum(lengths), path=path, owns_file=False)


def _adopt(payload: SharedPayload) -> KeptPayload:
    """Open the sender's segment and keep this process's own descriptors of its pieces."""
    lengths = read_header(payload.header)
    offsets = list(payload.offsets)
    if len(offsets) != len(lengths) or any(
        o < 0 or o + n > payload.handle.size for o, n in zip(offsets, lengths, strict=True)
    ):
        raise SharedMemoryError("a segment handle that does not match its header")
    fds = shm.open_segment(payload.handle)
    segment = (fds, payload.handle.token, payload.handle.size, offsets)
    return KeptPayload(payload.header, sum(lengths), segment=segment)


class _StreamSink:
    """Takes a relayed stream's chunks in the controller, into buffers of its own.

    It stands where a relay's downstream stream would (``room``, ``send``, ``abort``):
    every chunk is taken at once, so the sender is paced only by its credit.
    """

    def __init__(self, payload: RelayedPayload) -> None:
        self.done: Deferred = Deferred()
        relay = payload.relay
        self._relay = relay
        self.total = relay.total
        self.sent = 0
        self.finished = False
        try:
            branch = relay.branch(exclusive=True)
        except TransferError as exc:
            self._fail(str(exc))
            return
        try:
            self._lengths = read_header(relay.header)
        except SerializationError as exc:
            self._fail(f"a stream with an unreadable header: {exc}")
            branch.sink_aborted(str(exc))
            return
        if sum(self._lengths) != self.total:
            self._fail("a stream whose header does not match its size")
            branch.sink_aborted("a stream whose header does not match its size")
            return
        try:
            self._parts: list[Any] = [allocate_part(n) for n in self._lengths]
        except (MemoryError, OSError) as exc:
            self._fail(f"cannot allocate {self.total} bytes to keep a payload: {exc}")
            branch.sink_aborted("the controller cannot hold the payload")
            return
        self._index = 0
        self._filled = 0
        self._landing: memoryview | None = None
        if relay.aborted is not None:
            self._fail(relay.aborted)
            return
        branch.attach(self)
        if self.total == 0:
            self._complete()

    # The downstream side of the relay.

    def room(self) -> int:
        return 0 if self.finished else self.total - self.sent

    def target(self, size: int) -> memoryview | None:
        """Where the next chunk of ``size`` bytes goes, if it fits in one part: the relay
        has the chunk decrypted there, and :meth:`send` then finds it in place."""
        lengths = self._lengths
        while self._index < len(lengths) and self._filled == lengths[self._index]:
            self._index += 1
            self._filled = 0
        if self.finished or self._index == len(lengths):
            return None
        if self._filled + size > lengths[self._index]:
            return None
        self._landing = memoryview(self._parts[self._index])[self._filled : self._filled + size]
        return self._landing

    def send(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        landing, self._landing = self._landing, None
        if data is landing:
            self._filled += view.nbytes  # decrypted in place (see target)
        else:
            self._index, self._filled = fill_parts(
                self._parts, self._lengths, self._index, self._filled, view
            )
        self.sent += view.nbytes
        if self.sent == self.total:
            self._complete()

    def abort(self, reason: str, tell_peer: bool) -> None:
        self._fail(reason)

    # Outcomes.

    def _complete(self) -> None:
        if self.finished:
            return
        self.finished = True
        parts, self._parts = self._parts, []
        kept = KeptPayload(self._relay.header, self.total, parts=parts)
        self.done.callback(kept)

    def _fail(self, reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._parts = []
        self.done.errback(Failure(TransferError(reason)))
