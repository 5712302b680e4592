"""The receiving side of a stream: :class:`ReceivedPayload`, at a client or an engine.

A stream reference arriving at a client or an engine (the client side of a connection)
becomes a :class:`ReceivedPayload` (see :mod:`ipkernel.wire.stream_protocol`): its parts
are allocated from the header at once (:mod:`ipkernel.wire.buffers`), each chunk is
written into place, and the receiver grants the sender credit a window ahead of what has
arrived.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from ipkernel.errors import SerializationError, TransferError
from ipkernel.frames import read_header
from ipkernel.wire.buffers import allocate_part, fill_parts
from ipkernel.wire.codec import Landed
from ipkernel.wire.prefault import prefault
from ipkernel.wire.stream_protocol import ACK_EVERY

__all__ = ["ReceivedPayload"]


class ReceivedPayload:
    """A streamed payload arriving at a client or an engine, written into place.

    The parts are allocated from the header when the stream reference arrives; each chunk
    is copied into them as it comes. :meth:`when_received` fires with this object once
    the last byte is in, or fails with :class:`~ipkernel.errors.TransferError` if the
    stream is aborted (the partial data is dropped). :meth:`open` gives the header and
    the parts, for :func:`ipkernel.serialization.deserialize`.
    """

    def __init__(self, table: Any, sid: int, total: int, header: bytes) -> None:
        self.header = header
        self.nbytes = total
        self._table = table
        self._sid = sid
        self._received = 0
        self._acked = 0
        self._error: TransferError | None = None
        self._waiters: list[Deferred] = []
        self._index = 0  # the part being filled, and how much of it is
        self._filled = 0
        try:
            self._lengths = read_header(header)
        except SerializationError as exc:
            self._lengths = []
            self._parts: list[Any] = []
            self._fail(TransferError(f"a stream with an unreadable header: {exc}"), True)
            return
        if sum(self._lengths) != total:
            self._parts = []
            self._fail(TransferError("a stream whose header does not match its size"), True)
            return
        try:
            self._parts = [allocate_part(n) for n in self._lengths]
        except (MemoryError, OSError) as exc:
            self._parts = []
            self._fail(TransferError(f"cannot allocate {total} bytes to receive: {exc}"), True)

    @property
    def bytes_received(self) -> int:
        """How many bytes have arrived so far."""
        return self._received

    @property
    def received(self) -> bool:
        """True once every byte has arrived."""
        return self._error is None and self._received == self.nbytes and self._sid is None

    def when_received(self) -> Deferred:
        """A Deferred firing with this payload once whole, or failing with TransferError."""
        if self._error is not None:
            return fail(self._error)
        if self._sid is None:
            return succeed(self)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def open(self) -> tuple[bytes, list[Any]]:
        """The header and the parts; raises TransferError unless the payload is whole."""
        if self._error is not None:
            raise self._error
        if self._sid is not None:
            raise TransferError("the payload has not arrived yet")
        return self.header, self._parts

    @property
    def error(self) -> TransferError | None:
        """Why the payload will never be whole, or None."""
        return self._error

    # Driven by the connection's StreamTable (as a relay's stream is, the same methods).

    def start(self) -> None:
        """The stream is registered: grant credit beyond the first (or finish at once)."""
        if self._error is not None:
            return
        if self.nbytes == 0:
            self._complete()
        else:
            # Credit beyond the first: the sender may run a window ahead.
            self._table.send_ack(self._sid, 0, min(self.nbytes, self._table.window))
            for part in self._parts:
                prefault(part)

    def chunk_target(self, offset: int, size: int) -> memoryview | None:
        """Where a chunk of ``size`` bytes at ``offset`` goes, if it fits in one part."""
        if self._error is not None or offset != self._received:
            return None
        lengths = self._lengths
        while self._index < len(lengths) and self._filled == lengths[self._index]:
            self._index += 1
            self._filled = 0
        if self._index == len(lengths) or self._filled + size > lengths[self._index]:
            return None
        return memoryview(self._parts[self._index])[self._filled : self._filled + size]

    def chunk_received(self, offset: int, data: bytes | Landed) -> None:
        """A chunk at ``offset``: ``bytes``, or :class:`Landed` where :meth:`chunk_target`
        said."""
        if self._error is not None:
            return
        if isinstance(data, Landed):
            # Already in place (see chunk_target): only the bookkeeping is left.
            size = data.view.nbytes
            if offset != self._received:
                self._fail(TransferError("a stream's chunks arrived out of order"), True)
                return
            self._filled += size
        else:
            size = len(data)
            if offset != self._received or size == 0 or self._received + size > self.nbytes:
                self._fail(TransferError("a stream's chunks arrived out of order"), True)
                return
            self._index, self._filled = fill_parts(
                self._parts, self._lengths, self._index, self._filled, memoryview(data)
            )
        self._received += size
        if self._received == self.nbytes:
            self._complete()
        elif self._received - self._acked >= ACK_EVERY:
            self._acked = received = self._received
            self._table.send_ack(
                self._sid, received, min(self.nbytes, received + self._table.window)
            )

    def _complete(self) -> None:
        sid, self._sid = self._sid, None
        self._table.forget_incoming(sid)
        self._table.send_ack(sid, self.nbytes, self.nbytes)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    def sender_aborted(self, reason: str) -> None:
        """The sender aborted the stream, or the connection was lost: fail, drop the data."""
        self._fail(TransferError(reason), False)

    def _fail(self, error: TransferError, tell_peer: bool) -> None:
        if self._error is not None:
            return
        self._error = error
        self._parts = []  # free what arrived: nothing half-written is ever used
        sid = self._sid
        if sid is not None:
            self._table.forget_incoming(sid)
            if tell_peer:
                self._table.send_abort(sid, str(error))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(error))
