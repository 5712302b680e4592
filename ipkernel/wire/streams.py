"""Chunked streams with credit flow control: how large payloads cross a connection.

An :class:`OutgoingPayload` placed in a message (call arguments or an answer) is jellied
as a small *stream reference* ``[b"ipkernel.stream", sid, size, header]``; once that
message is written, the sending broker sends the parts as separate ``ipk_data`` messages
of at most :data:`CHUNK` bytes, as far as the receiver's credit allows:
:data:`FIRST_CREDIT` bytes at first, then up to the ``limit`` of the receiver's latest
``[b"ipk_ack", sid, consumed, limit]``. Either side may end a stream with ``ipk_abort``;
a lost connection aborts every stream on it.

Where a stream reference arrives decides what it becomes. The controller's brokers (the
server side of every connection) *relay*: the reference becomes a :class:`RelayedPayload`
that the controller passes along like any other argument, without looking inside; when
it is put into a message on another connection, the chunks are forwarded there as they
arrive, and acknowledged upstream once written downstream. The controller grants its
senders credit out of one budget (:data:`RELAY_BUDGET`, shared by every stream it
relays), so what it holds stays bounded however many streams run, and a slow receiver
slows the sender. Clients and engines (the client side of every connection) *receive*:
the reference becomes a :class:`ReceivedPayload` that preallocates the parts from the
header and writes each chunk into place; :func:`ipkernel.serialization.deserialize`
rebuilds the object once :meth:`ReceivedPayload.when_received` has fired. A relayed
payload that nobody forwards (its command was dropped, its client went away) is aborted
when the controller lets go of it, so its sender stops and every side frees what it
held. (A relayed stream may also be kept whole in the controller instead: see
:mod:`ipkernel.wire.kept`.)

Stream ids are chosen by the stream's sender, even on the server side of a connection
and odd on the client side, so one number names one stream on a connection.

:class:`StreamTable` holds a broker's streams; :class:`ipkernel.wire.broker.Broker` owns
one and hands it the ``ipk_*`` messages. This module never unpickles anything: the
controller sees sizes, ids and bytes. Choosing between inline frames, streams and shared
memory is :mod:`ipkernel.wire.transfer`'s job.
"""

from __future__ import annotations

import collections
import mmap
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread.jelly import InsecureJelly, Jellyable, setUnjellyableForClass

from ipkernel.errors import SerializationError, TransferError
from ipkernel.frames import Serialized, read_header

if TYPE_CHECKING:
    from ipkernel.wire.transfer import SharedPayload

__all__ = [
    "ACK_EVERY",
    "CHUNK",
    "FIRST_CREDIT",
    "RELAY_BUDGET",
    "WINDOW",
    "Landed",
    "OutgoingPayload",
    "ReceivedPayload",
    "RelayedPayload",
    "StreamTable",
    "allocate_part",
    "authenticated_table",
    "fill_parts",
    "stream_stats",
    "tune_allocator",
]

#: The most payload bytes in one ``ipk_data`` message.
CHUNK = 512 * 1024

#: How far ahead of what it has consumed a client or an engine lets a sender go.
WINDOW = 8 * 1024 * 1024

#: What a sender may send of a stream before the receiver's first acknowledgement.
FIRST_CREDIT = 512 * 1024

#: The most stream data the controller lets its senders have in flight towards it, all
#: relayed streams together; each stream's share is at least one chunk and at most
#: :data:`WINDOW`.
RELAY_BUDGET = 32 * 1024 * 1024

#: Receivers acknowledge at least this often (in bytes received or forwarded).
ACK_EVERY = 1024 * 1024

STREAM_TYPE = b"ipkernel.stream"

# Parts this large are received into private anonymous mappings: the kernel hands out
# zeroed pages as they are first written, where a bytearray would be zeroed first, and
# may use huge pages (2 MiB: a few hundred times fewer faults).
_MAP_ANONYMOUS_FROM = 1024 * 1024
# Pages of such a mapping are made present this far ahead of the data, in one call each
# time (much cheaper than one page fault per page).
_POPULATE_AHEAD = 8 * 1024 * 1024
_MADV_POPULATE_WRITE = 23  # Linux 5.14

_log = Logger()
_tables: weakref.WeakSet[StreamTable] = weakref.WeakSet()
# The relayed streams still receiving (they share RELAY_BUDGET).
_relays: weakref.WeakSet[_Relay] = weakref.WeakSet()


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


def _allocate(n: int) -> Any:
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


def allocate_part(n: int) -> Any:
    """A zeroed writable buffer of ``n`` bytes to receive a payload's part into (an
    anonymous mapping for large parts, a ``bytearray`` for small ones)."""
    return _allocate(n)


_populate_works = True


def _populate(part: Any, start: int, length: int) -> None:
    """Make the pages of ``part[start:start + length]`` present (a hint; errors ignored)."""
    global _populate_works
    if _populate_works and isinstance(part, mmap.mmap):
        start -= start % mmap.PAGESIZE
        try:
            part.madvise(_MADV_POPULATE_WRITE, start, min(length, len(part) - start))
        except (OSError, ValueError):
            _populate_works = False  # an older kernel: pages come as they are written


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


class Landed:
    """A stream chunk the broker already wrote where :meth:`StreamTable.data_target` said."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


# Payloads


class OutgoingPayload(Jellyable):
    """A serialized object to send; put it in a message (arguments or an answer).

    Jellied onto a connection it becomes a stream (or, without a connection, inline
    frames). :attr:`sent` fires once every byte has been acknowledged by the next hop, or
    the stream was aborted: until then the object's buffers are read, so they must not
    change. One payload object is sent once; make one per destination.
    """

    def __init__(self, serialized: Serialized) -> None:
        self.serialized = serialized
        self._stream: _Outgoing | None = None
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
        table = _table_of(jellier)
        if self._used:
            raise TransferError("an outgoing payload can be sent only once")
        self._used = True
        if table is None:
            self._finish(None)
            return jellier.jelly(self.serialized.frames())
        ser = self.serialized
        out = self._stream = table.open_outgoing(ser.nbytes, _LocalSource(ser.parts))
        out.done.addBoth(self._finish)
        return [STREAM_TYPE, out.sid, ser.nbytes, ser.header]

    def _finish(self, result: object) -> None:
        self._done = True
        self._stream = None  # and with it the views of the sender's buffers
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class ReceivedPayload:
    """A streamed payload arriving at a client or an engine, written into place.

    The parts are allocated from the header when the stream reference arrives; each chunk
    is copied into them as it comes. :meth:`when_received` fires with this object once
    the last byte is in, or fails with :class:`~ipkernel.errors.TransferError` if the
    stream is aborted (the partial data is dropped). :meth:`open` gives the header and
    the parts, for :func:`ipkernel.serialization.deserialize`.
    """

    def __init__(self, table: StreamTable, sid: int, total: int, header: bytes) -> None:
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
        self._populated = 0  # of the part being filled
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
            self._parts = [_allocate(n) for n in self._lengths]
        except (MemoryError, OSError) as exc:
            self._parts = []
            self._fail(TransferError(f"cannot allocate {total} bytes to receive: {exc}"), True)

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

    # Driven by the StreamTable.

    def _start(self) -> None:
        if self._error is not None:
            return
        if self.nbytes == 0:
            self._complete()
        else:
            # Credit beyond the first: the sender may run a window ahead.
            self._table.send_ack(self._sid, 0, min(self.nbytes, self._table.window))

    def _target(self, offset: int, size: int) -> memoryview | None:
        """Where a chunk of ``size`` bytes at ``offset`` goes, if it fits in one part."""
        if self._error is not None or offset != self._received:
            return None
        lengths = self._lengths
        while self._index < len(lengths) and self._filled == lengths[self._index]:
            self._index += 1
            self._filled = 0
            self._populated = 0
        if self._index == len(lengths) or self._filled + size > lengths[self._index]:
            return None
        part = self._parts[self._index]
        end = self._filled + size
        if end > self._populated:
            _populate(part, self._populated, end - self._populated + _POPULATE_AHEAD)
            self._populated = end + _POPULATE_AHEAD
        return memoryview(part)[self._filled : end]

    def _data(self, offset: int, data: bytes | Landed) -> None:
        if self._error is not None:
            return
        if isinstance(data, Landed):
            # Already in place (see _target): only the bookkeeping is left.
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
            index = self._index
            self._index, self._filled = fill_parts(
                self._parts, self._lengths, index, self._filled, memoryview(data)
            )
            if self._index != index:
                self._populated = 0
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

    def _abort(self, reason: str) -> None:
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


class RelayedPayload(Jellyable):
    """A stream passing through the controller; it stays opaque there.

    Pass it along like any argument; putting it in a message on another connection
    forwards the stream there (once). Dropping the last reference to it before that
    aborts the stream, so its sender stops and nothing is left held.
    """

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self.nbytes = relay.total
        weakref.finalize(self, relay.orphaned).atexit = False

    @property
    def relay(self) -> _Relay:
        """The stream behind this payload (for a sink that keeps it, :mod:`ipkernel.wire.kept`)."""
        return self._relay

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        table = _table_of(jellier)
        if table is None:
            raise TransferError("a relayed payload can only be forwarded on a connection")
        relay = self._relay
        if relay.sink is not None:
            raise TransferError("a relayed payload can be forwarded only once")
        out = table.open_outgoing(relay.total, relay)
        relay.attach(out)
        return [STREAM_TYPE, out.sid, relay.total, relay.header]


# The per-connection machinery


class _LocalSource:
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

    def pump(self, out: _Outgoing) -> None:
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


class _Outgoing:
    """One stream this side sends: its window, and where its bytes come from."""

    def __init__(self, table: StreamTable, sid: int, total: int, source: Any) -> None:
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


class _Relay:
    """A stream arriving at the controller: the chunks not yet forwarded, and where to."""

    def __init__(self, table: StreamTable, sid: int, total: int, header: bytes) -> None:
        self.table = table
        self.sid: int | None = sid
        self.total = total
        self.header = header
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.received = 0
        self.forwarded = 0
        self.acked_upstream = 0
        self.granted = min(total, FIRST_CREDIT)
        self.sink: _Outgoing | None = None
        self.aborted: str | None = None
        _relays.add(self)

    def grant(self) -> None:
        """Acknowledge what has been forwarded and give the sender this stream's share of
        the relay budget beyond it."""
        sid = self.sid
        if sid is None:
            return
        share = max(CHUNK, min(WINDOW, RELAY_BUDGET // max(1, len(_relays))))
        self.granted = max(self.granted, min(self.total, self.forwarded + share))
        self.acked_upstream = self.forwarded
        self.table.send_ack(sid, self.forwarded, self.granted)

    def attach(self, out: _Outgoing) -> None:
        self.sink = out
        if self.aborted is not None:
            # The message carrying the reference still goes out; the stream ends at once.
            reason = self.aborted
            out.done.addErrback(lambda f: None)
            out.table.abort_after_start(out, reason)

    def target(self, offset: int, size: int) -> memoryview | None:
        """A fresh buffer for a chunk of ``size`` bytes, forwarded once it is full; or,
        when the stream is kept here (a sink with a ``target`` of its own), its place in
        the sink's buffers."""
        if self.aborted is not None or offset != self.received or offset + size > self.granted:
            return None
        in_place = getattr(self.sink, "target", None)
        if in_place is not None and not self.queue:
            view = in_place(size)
            if view is not None:
                return view
        return memoryview(bytearray(size))

    def data(self, offset: int, data: bytes | Landed) -> None:
        if isinstance(data, Landed):
            data = data.view  # type: ignore[assignment]
        size = memoryview(data).nbytes
        if offset != self.received or self.received + size > self.total:
            self._upstream_abort("a stream's chunks arrived out of order")
            return
        if self.received + size > self.granted:
            # The sender ignored its credit: the budget is what bounds the relay's memory.
            self._upstream_abort("a stream's sender went beyond its credit")
            return
        self.received += size
        self.queue.append(data)  # type: ignore[arg-type]
        self.queued += size
        if self.sink is not None:
            self.pump(self.sink)

    def pump(self, out: _Outgoing) -> None:
        queue = self.queue
        while queue and out.room() >= memoryview(queue[0]).nbytes:
            data = queue.popleft()
            size = memoryview(data).nbytes
            self.queued -= size
            out.send(data)
            self.forwarded += size
        sid = self.sid
        if sid is None:
            return
        if self.forwarded == self.total:
            self.sid = None
            _relays.discard(self)
            self.table.forget_incoming(sid)
            self.table.send_ack(sid, self.total, self.total)
        elif self.forwarded - self.acked_upstream >= ACK_EVERY or (
            not queue and self.forwarded > self.acked_upstream
        ):
            self.grant()

    def sink_aborted(self, reason: str) -> None:
        """The downstream side is gone: stop the sender, drop what is held."""
        self._upstream_abort(reason)

    def abort(self, reason: str) -> None:
        """The sender is gone (or aborted): end the downstream stream, drop what is held."""
        self._drop(reason)
        sid, self.sid = self.sid, None
        if sid is not None:
            self.table.forget_incoming(sid)
        if self.sink is not None:
            self.sink.abort(reason, tell_peer=True)

    def orphaned(self) -> None:
        """The controller let go of the payload without forwarding it."""
        if self.sink is None and self.aborted is None:
            self._upstream_abort("the payload was not delivered (its command was dropped)")

    def _upstream_abort(self, reason: str) -> None:
        self._drop(reason)
        sid, self.sid = self.sid, None
        if sid is not None:
            self.table.forget_incoming(sid)
            self.table.send_abort(sid, reason)

    def _drop(self, reason: str) -> None:
        _relays.discard(self)
        if self.aborted is None:
            self.aborted = reason
        self.queue.clear()
        self.queued = 0


class StreamTable:
    """The streams of one broker (one connection), in both directions.

    ``relay`` (the controller's side) turns arriving stream references into
    :class:`RelayedPayload` objects, otherwise into :class:`ReceivedPayload` objects.
    ``odd`` says which stream ids this side gives its own streams. ``window`` is the
    credit a receiving side grants beyond what it has taken (relays grant from
    :data:`RELAY_BUDGET` instead). ``send`` writes one banana expression; ``send_data``
    writes one ``ipk_data`` message (the broker's fast path). ``on_shared_opened(owner,
    token)``, if set, is told of every engine-made :class:`SharedPayload` this side has
    opened, so that the engine can be asked to release it.
    """

    def __init__(
        self,
        send: Callable[[list], None],
        send_data: Callable[[int, int, Any], None],
        *,
        relay: bool,
        odd: bool,
        window: int = WINDOW,
    ) -> None:
        self._send = send
        self._send_data = send_data
        self.relay = relay
        self.window = window
        self._next_sid = 1 if odd else 2
        self.outgoing: dict[int, _Outgoing] = {}
        self.incoming: dict[int, ReceivedPayload | _Relay] = {}
        self._pending: list[_Outgoing] = []
        self._aborts_after_start: list[tuple[_Outgoing, str]] = []
        self._refused: collections.deque[int] = collections.deque(maxlen=64)
        self.lost = False
        self.on_shared_opened: Callable[[int, str], None] | None = None
        _tables.add(self)

    # Sending side

    def open_outgoing(self, total: int, source: Any) -> _Outgoing:
        """A new outgoing stream; it starts once the message naming it has been sent."""
        sid = self._next_sid
        self._next_sid += 2
        out = _Outgoing(self, sid, total, source)
        if self.lost:
            out.abort("the connection is closed", tell_peer=False)
            return out
        self.outgoing[sid] = out
        self._pending.append(out)
        return out

    def abort_after_start(self, out: _Outgoing, reason: str) -> None:
        self._aborts_after_start.append((out, reason))

    def message_sent(self) -> None:
        """The message that named the pending streams is written: start them."""
        if not self._pending and not self._aborts_after_start:
            return
        pending, self._pending = self._pending, []
        for out in pending:
            out.started = True
        aborts, self._aborts_after_start = self._aborts_after_start, []
        for out, reason in aborts:
            out.abort(reason, tell_peer=True)
        for out in pending:
            if not out.finished:
                out.start()

    def message_failed(self, reason: str) -> None:
        """The message could not be sent: its streams never existed for the peer."""
        pending, self._pending = self._pending, []
        self._aborts_after_start = []
        for out in pending:
            out.abort(reason, tell_peer=False)

    def send_data(self, sid: int, offset: int, data: Any) -> None:
        self._send_data(sid, offset, data)

    def send_ack(self, sid: int, upto: int, limit: int) -> None:
        """Tell the sender of ``sid``: ``upto`` bytes taken, send up to ``limit``."""
        if not self.lost:
            self._send([b"ipk_ack", sid, upto, limit])

    def send_abort(self, sid: int, reason: str) -> None:
        if not self.lost:
            self._send([b"ipk_abort", sid, reason.encode("utf-8", "replace")[:1000]])

    def forget_outgoing(self, sid: int) -> None:
        self.outgoing.pop(sid, None)

    def forget_incoming(self, sid: int | None) -> None:
        if sid is not None:
            self.incoming.pop(sid, None)

    # Receiving side

    def open_incoming(self, sid: object, total: object, header: object) -> Any:
        """The object a stream reference unjellies into (relayed or received)."""
        if not (
            isinstance(sid, int)
            and isinstance(total, int)
            and isinstance(header, bytes)
            and total >= 0
            and sid > 0
        ):
            raise InsecureJelly("malformed stream reference")
        if sid in self.incoming:
            raise InsecureJelly(f"stream {sid} is already open")
        if self.relay:
            relay = _Relay(self, sid, total, header)
            self.incoming[sid] = relay
            if total == 0:
                relay.sid = None
                _relays.discard(relay)
                self.incoming.pop(sid, None)
            else:
                relay.grant()
            return RelayedPayload(relay)
        payload = ReceivedPayload(self, sid, total, header)
        if payload._error is None:
            self.incoming[sid] = payload
            payload._start()
        return payload

    def data_target(self, sid: object, offset: object, size: int) -> memoryview | None:
        """Where the broker should write an arriving chunk in place, if anywhere.

        Asked when the chunk's header has arrived and its data has not; the chunk then
        comes to :meth:`data_received` as :class:`Landed`.
        """
        if not (isinstance(sid, int) and isinstance(offset, int)):
            return None
        stream = self.incoming.get(sid)
        if isinstance(stream, ReceivedPayload):
            return stream._target(offset, size)
        if stream is not None:
            return stream.target(offset, size)
        return None

    def data_received(self, sid: object, offset: object, data: object) -> None:
        if not (
            isinstance(sid, int) and isinstance(offset, int) and isinstance(data, (bytes, Landed))
        ):
            _log.warn("ignoring a malformed ipk_data message")
            return
        stream = self.incoming.get(sid)
        if stream is None:
            # A stream aborted here while its chunks were on the way, or a peer's bug:
            # say so once, then drop its chunks silently.
            if sid not in self._refused:
                self._refused.append(sid)
                self.send_abort(sid, "no such stream")
            return
        stream._data(offset, data) if isinstance(stream, ReceivedPayload) else stream.data(
            offset, data
        )

    def ack_received(self, sid: object, upto: object, limit: object) -> None:
        if not (isinstance(sid, int) and isinstance(upto, int) and isinstance(limit, int)):
            return
        out = self.outgoing.get(sid)
        if out is not None:
            out.ack(upto, limit)

    def abort_received(self, sid: object, reason: object) -> None:
        if not isinstance(sid, int):
            return
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        text = f"the other side aborted the transfer: {text}"
        out = self.outgoing.get(sid)
        if out is not None:
            out.abort(text, tell_peer=False)
        stream = self.incoming.pop(sid, None)
        if isinstance(stream, ReceivedPayload):
            stream._abort(text)
        elif stream is not None:
            stream.abort(text)

    def shared_received(self, payload: SharedPayload) -> None:
        """A client or an engine got a shared payload: open it now, so its sender can let go."""
        payload.map()
        if payload.owner is not None and self.on_shared_opened is not None:
            self.on_shared_opened(payload.owner, payload.handle.token)

    def connection_lost(self, reason: str = "the connection was lost") -> None:
        """Abort every stream of this connection (the peer cannot be told)."""
        self.lost = True
        outgoing, self.outgoing = self.outgoing, {}
        incoming, self.incoming = self.incoming, {}
        self._pending = []
        self._aborts_after_start = []
        for out in outgoing.values():
            out.abort(reason, tell_peer=False)
        for stream in incoming.values():
            if isinstance(stream, ReceivedPayload):
                stream._fail(TransferError(reason), False)
            else:
                stream.abort(reason)

    def stats(self) -> dict[str, int]:
        """Streams open in each direction, and the bytes relays hold."""
        held = sum(s.queued for s in self.incoming.values() if isinstance(s, _Relay))
        return {"incoming": len(self.incoming), "outgoing": len(self.outgoing), "held": held}


def stream_stats() -> dict[str, int]:
    """Totals of :meth:`StreamTable.stats` over every live connection of this process."""
    totals = {"connections": 0, "incoming": 0, "outgoing": 0, "held": 0}
    for table in list(_tables):
        if table.lost:
            continue
        totals["connections"] += 1
        for key, value in table.stats().items():
            totals[key] += value
    return totals


def _table_of(jellier: Any) -> StreamTable | None:
    broker = getattr(jellier, "invoker", None)
    table = getattr(broker, "streams", None)
    return table if isinstance(table, StreamTable) else None


# Unjelly: what the stream and shared references become on arrival.


class _StreamReference:
    """Unjellies ``[b"ipkernel.stream", sid, size, header]`` (registered below)."""

    def unjellyFor(self, unjellier: Any, obj: list) -> Any:  # noqa: N802 - jelly's name
        table = authenticated_table(unjellier)
        if len(obj) != 4:
            raise InsecureJelly("malformed stream reference")
        return table.open_incoming(obj[1], obj[2], obj[3])


def authenticated_table(unjellier: Any) -> StreamTable:
    broker = getattr(unjellier, "invoker", None)
    table = getattr(broker, "streams", None)
    if not isinstance(table, StreamTable) or not getattr(broker, "authenticated", False):
        raise InsecureJelly("payload references are accepted only after login")
    return table


setUnjellyableForClass(STREAM_TYPE, _StreamReference)
