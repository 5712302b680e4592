"""The controller's side of a stream: :class:`RelayedPayload`, relayed as it arrives.

A stream reference arriving at the controller (the server side of a connection) becomes
a :class:`RelayedPayload` over a :class:`Relay` (see
:mod:`ipkernel.wire.stream_protocol`). The controller passes the payload along without
looking inside; each message on another connection that carries it forwards the stream
there, chunk by chunk. So one payload sent to many engines crosses the sender's
connection once and the controller fans it out: every chunk is kept until each
destination has been handed it, and the sender is acknowledged (and given credit) as
the slowest destination takes its bytes.

The destinations are not known in advance: a command waiting in a busy engine's queue
forwards the payload only when its turn comes. Until the payload object is gone (the
last command that holds it has been sent or dropped) the relay keeps every chunk, for a
destination still to come; after that it keeps only what a destination has yet to
take. Every relayed stream's credit comes out of one budget
(:data:`~ipkernel.wire.stream_protocol.RELAY_BUDGET`); what a relay keeps beyond its
credit is bounded by the payload's size, held only while a command that carries it
waits. A payload the controller drops unforwarded is aborted, so its sender stops.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any

from twisted.spread.jelly import Jellyable

from ipkernel.errors import TransferError
from ipkernel.wire.codec import Landed
from ipkernel.wire.outgoing import connection_streams
from ipkernel.wire.stream_protocol import (
    ACK_EVERY,
    CHUNK,
    FIRST_CREDIT,
    RELAY_BUDGET,
    STREAM_TYPE,
    WINDOW,
)

__all__ = ["Branch", "Relay", "RelayedPayload", "relayed_bytes"]

# The relayed streams still receiving (they share RELAY_BUDGET).
_relays: weakref.WeakSet[Relay] = weakref.WeakSet()
# Bytes that have arrived in relayed streams since this process started.
_arrived = [0]


def relayed_bytes() -> int:
    """How many bytes of streams have come through (or been kept by) this process's
    relays since it started."""
    return _arrived[0]


def _size(data: Any) -> int:
    return memoryview(data).nbytes


class Branch:
    """One destination of a relayed stream: feeds one *sink* the relay's chunks in order.

    The sink is a downstream :class:`~ipkernel.wire.outgoing.Outgoing` stream (whose
    source this branch is), or whatever keeps the payload in the controller
    (:mod:`ipkernel.wire.kept`). A sink has ``room()``, ``send(data)`` and ``abort(reason,
    tell_peer)``; a keeping sink may also have ``target(size)`` (see
    :meth:`Relay.chunk_target`).
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.sink: Any = None
        #: The index of the next chunk to hand over, and the bytes handed over so far.
        self.next = 0
        self.forwarded = 0
        self.live = True

    def attach(self, sink: Any) -> None:
        """Start feeding ``sink`` (at once, as far as its room goes)."""
        self.sink = sink
        self.relay.attached(self)

    # The source of an Outgoing stream.

    def pump(self, out: Any = None) -> None:
        """Hand the sink what it has room for."""
        self.relay.pump(self)

    def sink_aborted(self, reason: str) -> None:
        """This destination is gone; the others carry on."""
        self.relay.branch_gone(self, reason)


class Relay:
    """A stream arriving at the controller: the chunks kept, and the branches fed.

    ``table`` is the arriving connection's
    :class:`~ipkernel.wire.stream_table.StreamTable`.
    """

    def __init__(self, table: Any, sid: int, total: int, header: bytes) -> None:
        self.table = table
        # None once nothing more comes from upstream (an empty stream: at once).
        self.sid: int | None = sid if total else None
        self.total = total
        self.header = header
        # The chunks kept, from chunk number self.first on, and their sizes.
        self.chunks: collections.deque[Any] = collections.deque()
        self.sizes: collections.deque[int] = collections.deque()
        self.first = 0
        self.queued = 0  # bytes kept
        self.received = 0
        # Where each chunk ends (bytes), by chunk number: what a branch's position means.
        self._ends: list[int] = []
        self.acked_upstream = 0
        self.granted = min(total, FIRST_CREDIT)
        self.branches: list[Branch] = []
        # How many live branches are at each chunk number; the lowest such number.
        self._at: collections.Counter[int] = collections.Counter()
        self._low: int | None = None
        #: No branch can be added any more (the payload object is gone, or kept whole).
        self.sealed = False
        self.aborted: str | None = None
        if total:
            _relays.add(self)

    # Branches

    def branch(self, exclusive: bool = False) -> Branch:
        """A new destination, fed from the first byte. ``exclusive``: the only one ever
        (the payload is kept whole in the controller).

        :raises TransferError: if the relay is sealed, or ``exclusive`` and a branch exists.
        """
        if self.sealed or (exclusive and self.branches):
            raise TransferError("this payload has already been taken by the controller")
        branch = Branch(self)
        self.branches.append(branch)
        if exclusive:
            self.sealed = True
        return branch

    def attached(self, branch: Branch) -> None:
        if self.aborted is not None:
            branch.live = False
            abort_when_started = getattr(branch.sink, "abort_when_started", None)
            if abort_when_started is not None:
                abort_when_started(self.aborted)  # the message naming it still goes out
            else:
                branch.sink.abort(self.aborted, tell_peer=False)
            return
        # Every chunk is still here: nothing is let go before the relay is sealed.
        self._at[0] += 1
        self._low = 0
        self.pump(branch)

    def seal(self) -> None:
        """No more branches: the payload object is gone. Without any, the sender is
        told to stop; otherwise chunks every branch has taken are let go."""
        if self.sealed:
            return
        self.sealed = True
        if not self.branches:
            if self.aborted is None:
                self._upstream_abort("the payload was not delivered (its command was dropped)")
            return
        self._settle()

    def branch_gone(self, branch: Branch, reason: str) -> None:
        """A destination is gone (its connection, or its receiver aborted)."""
        if not branch.live:
            return
        branch.live = False
        if branch.sink is not None:  # counted since it was attached
            self._leave(branch.next)
        if self.aborted is not None:
            return
        if self.sealed and not any(b.live for b in self.branches):
            self._upstream_abort(reason)
            return
        self._settle()

    # Driven by the connection's StreamTable (as a ReceivedPayload is, the same methods).

    def chunk_target(self, offset: int, size: int) -> memoryview | None:
        """A fresh buffer for a chunk of ``size`` bytes, forwarded once it is full; or,
        when the stream is kept here (a sink with a ``target`` of its own), its place in
        the sink's buffers."""
        if self.aborted is not None or offset != self.received or offset + size > self.granted:
            return None
        if len(self.branches) == 1 and self.sealed and not self.chunks:
            in_place = getattr(self.branches[0].sink, "target", None)
            if in_place is not None:
                view = in_place(size)
                if view is not None:
                    return view
        return memoryview(bytearray(size))

    def chunk_received(self, offset: int, data: bytes | Landed) -> None:
        """A chunk from upstream: keep it, hand it to the branches that have room."""
        if isinstance(data, Landed):
            data = data.view  # type: ignore[assignment]
        size = _size(data)
        if offset != self.received or self.received + size > self.total:
            self._upstream_abort("a stream's chunks arrived out of order")
            return
        if self.received + size > self.granted:
            # The sender ignored its credit: the budget is what bounds the relay's memory.
            self._upstream_abort("a stream's sender went beyond its credit")
            return
        self.received += size
        _arrived[0] += size
        self._ends.append(self.received)
        self.chunks.append(data)
        self.sizes.append(size)
        self.queued += size
        waiting = [b for b in self.branches if b.live and b.sink is not None]
        for branch in waiting:
            self._feed(branch)
        self._settle()

    def pump(self, branch: Branch) -> None:
        """Hand ``branch``'s sink what it has room for, then let go of what every
        branch has taken and tell the sender."""
        self._feed(branch)
        self._settle()

    def sender_aborted(self, reason: str) -> None:
        """The sender is gone (or aborted): end every downstream stream, drop the chunks."""
        self._drop(reason)
        sid, self.sid = self.sid, None
        if sid is not None:
            self.table.forget_incoming(sid)
        for branch in self.branches:
            if branch.live and branch.sink is not None:
                branch.live = False
                branch.sink.abort(reason, tell_peer=True)

    # Inside

    def _feed(self, branch: Branch) -> None:
        if not branch.live or branch.sink is None or self.aborted is not None:
            return
        sink = branch.sink
        start = branch.next
        i = start - self.first
        chunks, sizes = self.chunks, self.sizes
        while i < len(chunks):
            size = sizes[i]
            if sink.room() < size:
                break
            sink.send(chunks[i])
            branch.forwarded += size
            i += 1
            if not branch.live:  # the sink aborted while sending
                return
        end = i + self.first
        if end != start:
            branch.next = end
            self._at[end] += 1
            self._leave(start)

    def _leave(self, index: int) -> None:
        """A live branch left chunk number ``index`` (moved on, or is gone)."""
        at = self._at
        at[index] -= 1
        if at[index] <= 0:
            del at[index]
            if index == self._low:
                self._low = min(at) if at else None

    def _settle(self) -> None:
        """Let go of the chunks no branch needs, and acknowledge upstream."""
        low = self._low
        if low is None:
            return
        if self.sealed:
            while self.first < low and self.chunks:
                self.chunks.popleft()
                self.queued -= self.sizes.popleft()
                self.first += 1
        sid = self.sid
        if sid is None:
            return
        taken = self._ends[low - 1] if low else 0
        if taken == self.total:
            self.sid = None
            _relays.discard(self)
            self.table.forget_incoming(sid)
            self.table.send_ack(sid, self.total, self.total)
        elif taken - self.acked_upstream >= ACK_EVERY or (
            taken == self.received and taken > self.acked_upstream
        ):
            self._grant(sid, taken)

    def _grant(self, sid: int, taken: int) -> None:
        """Acknowledge ``taken`` bytes and give the sender this stream's share of the
        relay budget beyond them."""
        share = max(CHUNK, min(WINDOW, RELAY_BUDGET // max(1, len(_relays))))
        self.granted = max(self.granted, min(self.total, taken + share))
        self.acked_upstream = taken
        self.table.send_ack(sid, taken, self.granted)

    def grant(self) -> None:
        """The first credit, once the stream reference has been read."""
        if self.sid is not None:
            self._grant(self.sid, 0)

    def _upstream_abort(self, reason: str) -> None:
        self._drop(reason)
        sid, self.sid = self.sid, None
        if sid is not None:
            self.table.forget_incoming(sid)
            self.table.send_abort(sid, reason)
        for branch in self.branches:
            if branch.live and branch.sink is not None:
                branch.live = False
                branch.sink.abort(reason, tell_peer=True)

    def _drop(self, reason: str) -> None:
        _relays.discard(self)
        if self.aborted is None:
            self.aborted = reason
        self.chunks.clear()
        self.sizes.clear()
        self.queued = 0


class RelayedPayload(Jellyable):
    """A stream passing through the controller; it stays opaque there.

    Pass it along like any argument; each message on another connection that carries
    it forwards the stream there, so one payload can go to many engines. Dropping the
    last reference to it ends the list of destinations: if there are none, the stream is
    aborted, so its sender stops and nothing is left held.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self.nbytes = relay.total
        weakref.finalize(self, relay.seal).atexit = False

    @property
    def relay(self) -> Relay:
        """The stream behind this payload (for a sink that keeps it, :mod:`ipkernel.wire.kept`)."""
        return self._relay

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        table = connection_streams(jellier)
        if table is None:
            raise TransferError("a relayed payload can only be forwarded on a connection")
        relay = self._relay
        branch = relay.branch()
        out = table.open_outgoing(relay.total, branch)
        # Twice in one message: sent once, the second a reference to the first.
        expression = jellier.prepare(self)
        expression.extend([STREAM_TYPE, out.sid, relay.total, relay.header])
        expression = jellier.preserve(self, expression)
        branch.attach(out)
        return expression
