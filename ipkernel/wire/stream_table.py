"""One connection's streams: :class:`StreamTable`, and how a stream reference unjellies.

Each broker (:class:`ipkernel.wire.broker.Broker`) owns a table and hands it the
``ipk_data`` / ``ipk_ack`` / ``ipk_abort`` messages (see
:mod:`ipkernel.wire.stream_protocol`). The table numbers the streams this side sends
(:class:`~ipkernel.wire.outgoing.Outgoing`), starts them once the message naming them is
written, and turns each stream reference that arrives into a
:class:`~ipkernel.wire.relay.RelayedPayload` (the controller's side of a connection) or a
:class:`~ipkernel.wire.received.ReceivedPayload` (a client's or an engine's side).
References are accepted only on a connection that has logged in.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.spread.jelly import InsecureJelly, setUnjellyableForClass

from ipkernel.wire.codec import Landed
from ipkernel.wire.outgoing import Outgoing
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.relay import Relay, RelayedPayload, relayed_bytes
from ipkernel.wire.stream_protocol import STREAM_TYPE, WINDOW

__all__ = ["StreamTable", "authenticated_table", "stream_stats"]

_log = Logger()
_tables: weakref.WeakSet[StreamTable] = weakref.WeakSet()


class StreamTable:
    """The streams of one broker (one connection), in both directions.

    ``relay`` (the controller's side) turns arriving stream references into
    :class:`RelayedPayload` objects, otherwise into :class:`ReceivedPayload` objects.
    ``odd`` says which stream ids this side gives its own streams. ``window`` is the
    credit a receiving side grants beyond what it has taken (relays grant from
    :data:`~ipkernel.wire.stream_protocol.RELAY_BUDGET` instead). ``send`` writes one
    banana expression; ``send_data`` writes one ``ipk_data`` message (the broker's fast
    path). ``on_shared_opened(owner, token)``, if set, is told of every engine-made
    :class:`~ipkernel.wire.shared.SharedPayload` this side has opened, so that the engine
    can be asked to release it.
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
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming: dict[int, ReceivedPayload | Relay] = {}
        self._pending: list[Outgoing] = []
        self._aborts_after_start: list[tuple[Outgoing, str]] = []
        self._refused: collections.deque[int] = collections.deque(maxlen=64)
        # The relays of streams that arrived here: one may hold bytes after its sender is
        # done, for a destination still to come.
        self._relays: weakref.WeakSet[Relay] = weakref.WeakSet()
        self.lost = False
        self.on_shared_opened: Callable[[int, str], None] | None = None
        _tables.add(self)

    # Sending side

    def open_outgoing(self, total: int, source: Any) -> Outgoing:
        """A new outgoing stream; it starts once the message naming it has been sent."""
        sid = self._next_sid
        self._next_sid += 2
        out = Outgoing(self, sid, total, source)
        if self.lost:
            out.abort("the connection is closed", tell_peer=False)
            return out
        self.outgoing[sid] = out
        self._pending.append(out)
        return out

    def abort_after_start(self, out: Outgoing, reason: str) -> None:
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
            relay = Relay(self, sid, total, header)
            self._relays.add(relay)
            if relay.sid is not None:  # an empty stream has nothing to relay
                self.incoming[sid] = relay
                relay.grant()
            return RelayedPayload(relay)
        payload = ReceivedPayload(self, sid, total, header)
        if payload.error is None:
            self.incoming[sid] = payload
            payload.start()
        return payload

    def data_target(self, sid: object, offset: object, size: int) -> memoryview | None:
        """Where the broker should write an arriving chunk in place, if anywhere.

        Asked when the chunk's header has arrived and its data has not; the chunk then
        comes to :meth:`data_received` as :class:`~ipkernel.wire.codec.Landed`.
        """
        if not (isinstance(sid, int) and isinstance(offset, int)):
            return None
        stream = self.incoming.get(sid)
        return None if stream is None else stream.chunk_target(offset, size)

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
        stream.chunk_received(offset, data)

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
        if stream is not None:
            stream.sender_aborted(text)

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
            stream.sender_aborted(reason)

    def stats(self) -> dict[str, int]:
        """Streams open in each direction, and the bytes the relays of streams that
        arrived here hold."""
        held = sum(relay.queued for relay in list(self._relays))
        return {"incoming": len(self.incoming), "outgoing": len(self.outgoing), "held": held}


def stream_stats() -> dict[str, int]:
    """Totals of :meth:`StreamTable.stats` over every live connection of this process,
    and ``relayed``: the bytes its relays have taken in since it started."""
    totals = {"connections": 0, "incoming": 0, "outgoing": 0, "held": 0}
    for table in list(_tables):
        if table.lost:
            continue
        totals["connections"] += 1
        for key, value in table.stats().items():
            totals[key] += value
    totals["relayed"] = relayed_bytes()
    return totals


def streams_in_flight() -> list[dict[str, Any]]:
    """Every stream open on a live connection of this process, as plain dicts.

    Keys: ``connection`` (a number naming the connection, the same for each of its
    streams while it lives), ``sid``, ``direction`` (``'in'``: arriving here, ``'out'``:
    sent from here), ``total`` (bytes), ``done`` (bytes received, for an arriving stream;
    acknowledged by the receiver, for a sent one) and ``held`` (bytes a relay holds, not
    yet forwarded; 0 otherwise).
    """
    streams: list[dict[str, Any]] = []
    for table in list(_tables):
        if table.lost:
            continue
        connection = id(table)
        for sid, stream in table.incoming.items():
            relay = isinstance(stream, Relay)
            streams.append(
                {
                    "connection": connection,
                    "sid": sid,
                    "direction": "in",
                    "total": stream.total if relay else stream.nbytes,
                    "done": stream.received if relay else stream.bytes_received,
                    "held": stream.queued if relay else 0,
                }
            )
        for sid, out in table.outgoing.items():
            streams.append(
                {
                    "connection": connection,
                    "sid": sid,
                    "direction": "out",
                    "total": out.total,
                    "done": out.acked,
                    "held": 0,
                }
            )
    return streams


# Unjelly: what a stream reference becomes on arrival.


class _StreamReference:
    """Unjellies ``[b"ipkernel.stream", sid, size, header]`` (registered below)."""

    def unjellyFor(self, unjellier: Any, obj: list) -> Any:  # noqa: N802 - jelly's name
        table = authenticated_table(unjellier)
        if len(obj) != 4:
            raise InsecureJelly("malformed stream reference")
        return table.open_incoming(obj[1], obj[2], obj[3])


def authenticated_table(unjellier: Any) -> StreamTable:
    """The stream table of the connection ``unjellier`` reads from.

    :raises InsecureJelly: unless that connection is one of our brokers, logged in.
    """
    broker = getattr(unjellier, "invoker", None)
    table = getattr(broker, "streams", None)
    if not isinstance(table, StreamTable) or not getattr(broker, "authenticated", False):
        raise InsecureJelly("payload references are accepted only after login")
    return table


setUnjellyableForClass(STREAM_TYPE, _StreamReference)
