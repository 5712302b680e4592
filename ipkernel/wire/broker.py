"""The PB broker and factories every ipkernel connection uses.

The wire format is stock Banana/PB, byte for byte. :class:`Broker` is PB's broker over
:class:`~ipkernel.wire.codec.BananaCodec` (linear-time decoding, per-connection limits,
small until login: see :mod:`ipkernel.wire.codec`), and adds:

Login
    :meth:`Broker.raise_limits` lifts the codec's limits once the login gate has checked
    the peer's secret, and marks the connection authenticated.

Streams
    Each broker owns a :class:`~ipkernel.wire.stream_table.StreamTable`: large payloads
    cross as ``ipk_data`` / ``ipk_ack`` / ``ipk_abort`` messages beside the PB calls that
    name them (see :mod:`ipkernel.wire.stream_protocol`). They are accepted only after
    login. The server side of a connection (the controller) relays streams, the client
    side (clients and engines) receives them. A large chunk's data is decrypted straight
    into the place its stream names for it.

Packed calls
    Calls whose arguments and answers are plain values travel packed into one string
    (:mod:`ipkernel.wire.packed_calls`), after login.

Refused calls
    A call whose message cannot be encoded raises
    :class:`~twisted.spread.banana.BananaError` from ``callRemote``, as stock does, and
    forgets its pending answer and the streams it named.
"""

from __future__ import annotations

import contextlib

from twisted.python.failure import Failure
from twisted.spread import banana, jelly, pb
from twisted.spread.banana import BananaError

from ipkernel.wire import direct_reference  # noqa: F401 - registers direct references
from ipkernel.wire.codec import (
    POST_AUTH_PENDING_LIMIT,
    POST_AUTH_SIZE_LIMIT,
    BananaCodec,
    prefix,
)
from ipkernel.wire.packed_calls import PackedCalls
from ipkernel.wire.stream_table import StreamTable

__all__ = ["Broker", "ClientFactory", "ServerFactory"]

# Stream chunks at least this large are written straight into their destination.
_DIRECT_MIN = 32 * 1024


class Broker(BananaCodec, PackedCalls, pb.Broker):
    """A PB broker with a linear-time decoder, per-connection limits and streams.

    Drop-in for :class:`twisted.spread.pb.Broker` (same constructor, same wire format);
    the limits are :class:`~ipkernel.wire.codec.BananaCodec`'s.
    """

    def __init__(
        self,
        isClient: bool = True,  # noqa: N803 - PB's factories pass it by this name
        security: jelly.SecurityOptions = jelly.globalSecurity,
    ) -> None:
        super().__init__(isClient, security)
        #: True once the peer has logged in (see raise_limits); streams need it.
        self.authenticated = False
        #: Why the connection ended, once it has (a Failure; its value is a
        #: :class:`~ipkernel.wire.keepalive.PeerSilent` when the peer's host went silent).
        self.lost_reason: Failure | None = None
        #: This connection's large-payload streams.
        self.streams = StreamTable(
            self._send_expression, self.send_stream_data, relay=not isClient, odd=isClient
        )

    def raise_limits(
        self,
        size_limit: int = POST_AUTH_SIZE_LIMIT,
        pending_limit: int | None = POST_AUTH_PENDING_LIMIT,
    ) -> None:
        """Switch this connection to its post-login limits.

        Call it on each end once the peer is known: the server when the secret checks
        out, the client when its login call answers. Applies to the next item decoded and
        the next message encoded.
        """
        self.sizeLimit = size_limit
        self.pending_limit = pending_limit
        self.authenticated = True

    def connectionMade(self) -> None:
        """Ask for ``TCP_NODELAY`` where the transport has it, then start as stock does."""
        # With a few calls in flight and windowed acks, Nagle plus delayed ACK stalls the
        # stream. Under TLS the call is forwarded to the TCP transport underneath.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):  # not a TCP socket after all
                set_no_delay(True)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        """Free any unfinished message, abort this connection's streams, tear down as stock."""
        self.lost_reason = reason
        self._forget_partial()
        self.streams.connection_lost(f"the connection was lost ({reason.getErrorMessage()})")
        super().connectionLost(reason)

    # Streams (ipkernel.wire.stream_table)

    def proto_ipk_data(self, sid: object, offset: object, data: object) -> None:
        """A chunk of a stream the peer sends (``data``: bytes, or Landed in place)."""
        if self._stream_allowed():
            self.streams.data_received(sid, offset, data)

    def proto_ipk_ack(self, sid: object, upto: object, limit: object = None) -> None:
        """The peer has taken ``upto`` bytes of a stream this side sends; send to ``limit``."""
        if self._stream_allowed():
            self.streams.ack_received(sid, upto, limit)

    def proto_ipk_abort(self, sid: object, reason: object) -> None:
        """The peer ended a stream (in either direction) early."""
        if self._stream_allowed():
            self.streams.abort_received(sid, reason)

    def _stream_allowed(self) -> bool:
        if not self.authenticated:
            self._refuse("a stream message before login")
            return False
        return True

    def _send_expression(self, expression: list) -> None:
        if not self.disconnected and self.transport is not None:
            self.sendEncoded(expression)

    def send_stream_data(self, sid: int, offset: int, data: object) -> None:
        """Send ``[b"ipk_data", sid, offset, data]`` without copying ``data`` here.

        ``data`` is any bytes-like object (a view of the sender's buffer). The banana
        prefix and the data go to the transport as a sequence: the TLS transport
        encrypts each straight from its buffer.
        """
        if self.disconnected or self.transport is None:
            return
        size = memoryview(data).nbytes  # type: ignore[arg-type]
        if size > self.sizeLimit:
            raise BananaError(f"stream chunk too long to send ({size} bytes)")
        pieces: list = []
        self._encode([b"ipk_data", sid, offset], pieces.append)
        # The list prefix says 3 items; a chunk's list has 4, the data last.
        pieces[0] = prefix(4)
        pieces.append(prefix(size))
        pieces.append(banana.STRING)
        self.transport.writeSequence([b"".join(pieces), data])

    def _string_target(self, num: int) -> memoryview | None:
        """The destination of a stream chunk of ``num`` bytes just announced, if any.

        Only the data string of a top-level ``[b"ipk_data", sid, offset, data]`` qualifies.
        """
        if num < _DIRECT_MIN or len(self.listStack) != 1 or not self.authenticated:
            return None
        length, items = self.listStack[0]
        if length != 4 or len(items) != 3 or items[0] != b"ipk_data":
            return None
        return self.streams.data_target(items[1], items[2], num)

    def sendCall(self, *exp: object) -> None:  # noqa: N802 - PB's name
        """Send one PB expression; if it cannot be encoded, forget its pending answer.

        ``callRemote`` registers the call's answer Deferred before encoding, so a call
        refused here (the :class:`BananaError` still propagates to the caller) would
        otherwise stay registered until the connection closes, then errback unheard.
        """
        try:
            super().sendCall(*exp)
        except BananaError as exc:
            self.streams.message_failed(f"the message naming the stream was refused: {exc}")
            if len(exp) > 1 and exp[0] in (b"message", b"cachemessage", b"ipk_call"):
                if self.waitingForAnswers:
                    self.waitingForAnswers.pop(exp[1], None)
            raise
        # Streams named in this message may start now: their chunks follow it.
        self.streams.message_sent()


class ServerFactory(pb.PBServerFactory):
    """``PBServerFactory`` whose connections use :class:`Broker`, pre-login limits first."""

    protocol = Broker
    noisy = False


class ClientFactory(pb.PBClientFactory):
    """``PBClientFactory`` whose connection uses :class:`Broker`, pre-login limits first."""

    protocol = Broker
    noisy = False
