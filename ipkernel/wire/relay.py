"""The controller's side of a stream: :class:`RelayedPayload`, relayed as it arrives.

A stream reference arriving at the controller (the server side of a connection) becomes
a :class:`RelayedPayload` over a :class:`Relay` (see
:mod:`ipkernel.wire.stream_protocol`). The controller passes the payload along without
looking inside; put in a message on another connection, the stream is forwarded there
chunk by chunk, each acknowledged upstream once written downstream. Every relayed
stream's credit comes out of one budget (:data:`~ipkernel.wire.stream_protocol.RELAY_BUDGET`),
so what the controller holds stays bounded. A payload the controller drops unforwarded
is aborted, so its sender stops.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any

from twisted.spread.jelly import Jellyable

from ipkernel.errors import TransferError
from ipkernel.wire.codec import Landed
from ipkernel.wire.outgoing import Outgoing, connection_streams
from ipkernel.wire.stream_protocol import (
    ACK_EVERY,
    CHUNK,
    FIRST_CREDIT,
    RELAY_BUDGET,
    STREAM_TYPE,
    WINDOW,
)

__all__ = ["Relay", "RelayedPayload", "relayed_bytes"]

# The relayed streams still receiving (they share RELAY_BUDGET).
_relays: weakref.WeakSet[Relay] = weakref.WeakSet()
# Bytes that have arrived in relayed streams since this process started.
_arrived = [0]


def relayed_bytes() -> int:
    """How many bytes of streams have come through (or been kept by) this process's
    relays since it started."""
    return _arrived[0]


class Relay:
    """A stream arriving at the controller: the chunks not yet forwarded, and where to.

    ``table`` is the arriving connection's
    :class:`~ipkernel.wire.stream_table.StreamTable`. The relay is the source of the
    downstream :class:`~ipkernel.wire.outgoing.Outgoing` stream it is attached to (its
    *sink*), or feeds a sink that keeps the payload (:mod:`ipkernel.wire.kept`).
    """

    def __init__(self, table: Any, sid: int, total: int, header: bytes) -> None:
        self.table = table
        # None once nothing more comes from upstream (an empty stream: at once).
        self.sid: int | None = sid if total else None
        self.total = total
        self.header = header
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.received = 0
        self.forwarded = 0
        self.acked_upstream = 0
        self.granted = min(total, FIRST_CREDIT)
        self.sink: Outgoing | None = None
        self.aborted: str | None = None
        if total:
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

    def attach(self, out: Outgoing) -> None:
        self.sink = out
        if self.aborted is not None:
            # The message carrying the reference still goes out; the stream ends at once.
            reason = self.aborted
            out.done.addErrback(lambda f: None)
            out.table.abort_after_start(out, reason)

    # Driven by the connection's StreamTable (as a ReceivedPayload is, the same methods).

    def chunk_target(self, offset: int, size: int) -> memoryview | None:
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

    def chunk_received(self, offset: int, data: bytes | Landed) -> None:
        """A chunk from upstream: queue it, forward what the sink can take."""
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
        _arrived[0] += size
        self.queue.append(data)  # type: ignore[arg-type]
        self.queued += size
        if self.sink is not None:
            self.pump(self.sink)

    def pump(self, out: Outgoing) -> None:
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

    def sender_aborted(self, reason: str) -> None:
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


class RelayedPayload(Jellyable):
    """A stream passing through the controller; it stays opaque there.

    Pass it along like any argument; putting it in a message on another connection
    forwards the stream there (once). Dropping the last reference to it before that
    aborts the stream, so its sender stops and nothing is left held.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self.nbytes = relay.total
        weakref.finalize(self, relay.orphaned).atexit = False

    @property
    def relay(self) -> Relay:
        """The stream behind this payload (for a sink that keeps it, :mod:`ipkernel.wire.kept`)."""
        return self._relay

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        table = connection_streams(jellier)
        if table is None:
            raise TransferError("a relayed payload can only be forwarded on a connection")
        relay = self._relay
        if relay.sink is not None:
            raise TransferError("a relayed payload can be forwarded only once")
        out = table.open_outgoing(relay.total, relay)
        relay.attach(out)
        return [STREAM_TYPE, out.sid, relay.total, relay.header]
