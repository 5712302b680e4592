"""The sending side of a stream: :class:`OutgoingPayload` and the stream that sends it.

An :class:`OutgoingPayload` put in a message is jellied as a stream reference and sent
after the message in chunks, within the receiver's credit (see
:mod:`ipkernel.wire.stream_protocol`). :class:`Outgoing` is one stream a connection
sends, whatever its bytes come from: a local payload's parts (:class:`LocalSource`), or
one branch of a stream the controller relays (:class:`ipkernel.wire.relay.Branch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.spread.jelly import Jellyable

from ipkernel.errors import TransferError
from ipkernel.frames import Serialized
from ipkernel.wire.stream_protocol import CHUNK, FIRST_CREDIT, STREAM_TYPE

__all__ = ["LocalSource", "Outgoing", "OutgoingPayload", "connection_streams"]


def connection_streams(jellier: Any) -> Any:
    """The :class:`~ipkernel.wire.stream_table.StreamTable` of the connection a message
    is being jellied for, or None when it is jellied for no broker of ours."""
    return getattr(getattr(jellier, "invoker", None), "streams", None)


class OutgoingPayload(Jellyable):
    """A serialized object to send; put it in a message (arguments or an answer).

    Jellied onto a connection it becomes a stream (or, without a connection, inline
    frames). :attr:`sent` fires once every byte has been acknowledged by the next hop, or
    the stream was aborted: until then the object's buffers are read, so they must not
    change. One payload object is sent in one message: placed several times in it (one
    object for several engines, say), it crosses the connection once and the controller
    fans it out.
    """

    def __init__(self, serialized: Serialized) -> None:
        self.serialized = serialized
        self._stream: Outgoing | None = None
        self._used = False
        self._done = False
        self._waiters: list[Deferred] = []

    @property
    def nbytes(self) -> int:
        return self.serialized.nbytes

    def when_sent(self) -> Deferred:
        """Fires with None once the payload has left: every byte acknowledged by the next
        hop, sent inline, or the stream aborted. Never fails."""
        if self._done:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def cancel(self, reason: str = "the sender gave up") -> None:
        """Abort the stream if it is still running (and tell the receiver)."""
        stream = self._stream
        if stream is not None and not stream.finished:
            stream.abort(reason, tell_peer=True)

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        table = connection_streams(jellier)
        if self._used:
            raise TransferError("an outgoing payload can be sent only once")
        self._used = True
        # In several places of one message (the same object for several engines), it is
        # sent once: the other places refer to the first, and the controller fans it out.
        expression = jellier.prepare(self)
        if table is None:
            self._finish(None)
            expression.extend(jellier.jelly(self.serialized.frames()))
        else:
            ser = self.serialized
            out = self._stream = table.open_outgoing(ser.nbytes, LocalSource(ser.parts))
            out.done.addBoth(self._finish)
            expression.extend([STREAM_TYPE, out.sid, ser.nbytes, ser.header])
        return jellier.preserve(self, expression)

    def _finish(self, result: object) -> None:
        self._done = True
        self._stream = None  # and with it the views of the sender's buffers
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class LocalSource:
    """Chunks of local parts; large parts are sliced, small neighbours are joined."""

    def __init__(self, parts: Sequence[memoryview]) -> None:
        self._parts: Iterator[memoryview] = iter([p for p in parts if p.nbytes])
        self._current: memoryview | None = None
        self._offset = 0

    def next_chunk(self, size: int) -> Any:
        pieces = []
        need = size
        while need:
            current = self._current
            if current is None or self._offset == current.nbytes:
                current = self._current = next(self._parts)
                self._offset = 0
            take = min(need, current.nbytes - self._offset)
            pieces.append(current[self._offset : self._offset + take])
            self._offset += take
            need -= take
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def pump(self, out: Outgoing) -> None:
        # Whole chunks only, within the receiver's credit (which always grows by at least
        # a chunk once what was sent is taken, so this never stalls for good).
        while out.sent < out.total:
            size = min(CHUNK, out.total - out.sent)
            if out.room() < size:
                return
            out.send(self.next_chunk(size))

    def sink_aborted(self, reason: str) -> None:
        self._parts = iter(())
        self._current = None


class Outgoing:
    """One stream this side sends: its window, and where its bytes come from.

    ``table`` is the connection's :class:`~ipkernel.wire.stream_table.StreamTable`;
    ``source`` has ``pump(out)`` (send what the window allows) and
    ``sink_aborted(reason)``.
    """

    def __init__(self, table: Any, sid: int, total: int, source: Any) -> None:
        self.table = table
        self.sid = sid
        self.total = total
        self.source = source
        self.sent = 0
        self.acked = 0
        #: How far the receiver lets this side send (its credit).
        self.limit = min(total, FIRST_CREDIT)
        self.started = False
        self.finished = False
        #: Fires with None when every byte is acknowledged; fails with TransferError.
        self.done: Deferred = Deferred()

    def room(self) -> int:
        if not self.started or self.finished:
            return 0
        return self.limit - self.sent

    def start(self) -> None:
        self.started = True
        if self.total == 0:
            return  # the receiver acknowledges an empty stream on its own
        self.source.pump(self)

    def send(self, data: Any) -> None:
        self.table.send_data(self.sid, self.sent, data)
        self.sent += memoryview(data).nbytes

    def abort_when_started(self, reason: str) -> None:
        """Abort once the message naming this stream has been sent (the receiver learns
        of the stream, then of its end)."""
        self.done.addErrback(lambda f: None)
        self.table.abort_after_start(self, reason)

    def ack(self, upto: int, limit: int) -> None:
        if self.finished or not self.acked <= upto <= self.sent:
            return
        self.acked = upto
        self.limit = max(self.limit, min(limit, self.total))
        if upto == self.total:
            self.finished = True
            self.table.forget_outgoing(self.sid)
            self.done.callback(None)
        else:
            self.source.pump(self)

    def abort(self, reason: str, tell_peer: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.table.forget_outgoing(self.sid)
        if tell_peer and self.started:
            self.table.send_abort(self.sid, reason)
        self.source.sink_aborted(reason)
        self.done.errback(Failure(TransferError(reason)))
        self.done.addErrback(lambda f: None)
