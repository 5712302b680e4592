"""Tests for ipkernel.wire.broker and .codec: stock-compatible Banana, linear decoding, limits."""

from __future__ import annotations

import errno

from twisted.internet.testing import StringTransport
from twisted.spread import banana, pb
from twisted.spread.banana import BananaError
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire.broker import Broker, ClientFactory, ServerFactory
from ipkernel.wire.codec import (
    PENDING_ITEM_COST,
    POST_AUTH_PENDING_LIMIT,
    POST_AUTH_SIZE_LIMIT,
    PRE_AUTH_PENDING_LIMIT,
    PRE_AUTH_SIZE_LIMIT,
)

MiB = 1024 * 1024

#: One value of every kind Banana carries, with the edges where its encoding changes.
SAMPLES: list[object] = [
    0,
    1,
    127,
    128,
    2**31 - 1,  # largest INT
    2**31,  # smallest LONGINT
    2**400,
    -1,
    -(2**31),  # smallest NEG
    -(2**31) - 1,  # largest LONGNEG
    -(2**400),
    True,
    1.5,
    -0.0,
    float("inf"),
    b"",
    b"x",
    b"\x80\xff" * 200,
    b"version",  # in PB's vocabulary
    b"not in the vocabulary",
    [],
    [[], [[]], [[], []]],
    (1, b"two", [3.0, -4, (b"five",)]),
    [b"message", 7, 1, b"echo", 1, [b"tuple", b"data"], [b"dictionary"]],
]


def _codec(cls: type[pb.Broker], dialect: bytes = b"pb") -> tuple[pb.Broker, StringTransport, list]:
    """A broker of ``cls`` on a StringTransport, past negotiation, collecting expressions."""
    broker = cls()
    transport = StringTransport()
    broker.makeConnection(transport)
    broker.currentDialect = dialect
    received: list[object] = []
    broker.expressionReceived = received.append
    transport.clear()
    return broker, transport, received


def _encode(cls: type[pb.Broker], obj: object, dialect: bytes = b"pb") -> bytes:
    """``obj`` as a fresh ``cls`` broker sends it."""
    broker, transport, _ = _codec(cls, dialect)
    if isinstance(broker, Broker):
        broker.raise_limits()
    broker.sendEncoded(obj)
    return transport.value()


def _decode(cls: type[pb.Broker], data: bytes, dialect: bytes = b"pb") -> list[object]:
    """The expressions a fresh ``cls`` broker decodes from ``data``."""
    broker, _, received = _codec(cls, dialect)
    broker.dataReceived(data)
    return received


def _header(size: int, type_byte: bytes) -> bytes:
    """A Banana header: ``size`` as prefix digits, then ``type_byte``."""
    digits: list[bytes] = []
    banana.int2b128(size, digits.append)
    return b"".join(digits) + type_byte


class StockCompatibilityTests(SynchronousTestCase):
    """Our broker speaks stock Banana byte for byte."""

    def test_encoding_is_byte_identical(self) -> None:
        """Every sample encodes to exactly stock's bytes, in dialects pb and none."""
        for dialect in (b"pb", b"none"):
            for obj in SAMPLES:
                self.assertEqual(
                    _encode(Broker, obj, dialect), _encode(pb.Broker, obj, dialect), (obj, dialect)
                )

    def test_decodes_stock_encoding(self) -> None:
        """What stock encodes, we decode to what stock decodes, and the other way round."""
        for dialect in (b"pb", b"none"):
            for obj in SAMPLES:
                stock_bytes = _encode(pb.Broker, obj, dialect)
                our_bytes = _encode(Broker, obj, dialect)
                expected = _decode(pb.Broker, stock_bytes, dialect)
                self.assertEqual(len(expected), 1)
                self.assertEqual(_decode(Broker, stock_bytes, dialect), expected, obj)
                self.assertEqual(_decode(pb.Broker, our_bytes, dialect), expected, obj)

    def test_too_large_int_refused_like_stock(self) -> None:
        """An int beyond the 64-digit prefix raises BananaError on encode, as in stock."""
        for cls in (pb.Broker, Broker):
            broker, transport, _ = _codec(cls)
            self.assertRaises(BananaError, broker.sendEncoded, 2**500)
            self.assertRaises(BananaError, broker.sendEncoded, "text")
            self.assertEqual(transport.value(), b"")

    def test_one_byte_at_a_time(self) -> None:
        """A stream fed one byte per call decodes to the same messages as fed at once."""
        stream = b"".join(_encode(pb.Broker, obj) for obj in SAMPLES)
        expected = _decode(pb.Broker, stream)
        broker, transport, received = _codec(Broker)
        for i in range(len(stream)):
            broker.dataReceived(stream[i : i + 1])
        self.assertEqual(received, expected)
        self.assertFalse(transport.disconnecting)

    def test_every_split_point(self) -> None:
        """Cut in two at any byte, the stream decodes to the same messages."""
        stream = b"".join(_encode(pb.Broker, obj) for obj in SAMPLES)
        expected = _decode(pb.Broker, stream)
        for cut in range(len(stream) + 1):
            broker, _, received = _codec(Broker)
            broker.dataReceived(stream[:cut])
            broker.dataReceived(stream[cut:])
            self.assertEqual(received, expected, cut)

    def test_module_global_untouched(self) -> None:
        """banana.SIZE_LIMIT keeps its stock value; our limits live on the instance."""
        broker, _, _ = _codec(Broker)
        broker.raise_limits()
        self.assertEqual(banana.SIZE_LIMIT, 640 * 1024)
        self.assertEqual(broker.sizeLimit, POST_AUTH_SIZE_LIMIT)
        self.assertEqual(Broker.sizeLimit, PRE_AUTH_SIZE_LIMIT)


class LimitTests(SynchronousTestCase):
    """Decode and encode limits are per connection and small until login."""

    def test_string_at_limit_accepted(self) -> None:
        """Before login a string of exactly PRE_AUTH_SIZE_LIMIT bytes is accepted."""
        broker, transport, received = _codec(Broker)
        data = b"s" * PRE_AUTH_SIZE_LIMIT
        broker.dataReceived(_encode(pb.Broker, data))
        self.assertEqual(received, [data])
        self.assertFalse(transport.disconnecting)

    def test_string_over_limit_drops_connection(self) -> None:
        """Before login a longer string drops the connection on its header alone."""
        broker, transport, received = _codec(Broker)
        broker.dataReceived(_header(PRE_AUTH_SIZE_LIMIT + 1, banana.STRING))
        self.assertTrue(transport.disconnecting)
        broker.dataReceived(b"s" * 100 + _encode(pb.Broker, 1))
        self.assertEqual(received, [])

    def test_list_over_limit_drops_connection(self) -> None:
        """Before login a list announcing more than PRE_AUTH_SIZE_LIMIT items is refused."""
        broker, transport, _ = _codec(Broker)
        broker.dataReceived(_header(PRE_AUTH_SIZE_LIMIT + 1, banana.LIST))
        self.assertTrue(transport.disconnecting)

    def test_unfinished_message_bounded(self) -> None:
        """A stream of small ints in an unfinished list is dropped well before 2 MiB.

        Each two-byte int counts PENDING_ITEM_COST, so the pre-login pending bound trips
        after about PRE_AUTH_PENDING_LIMIT / PENDING_ITEM_COST items, and the items held
        so far are released.
        """
        broker, transport, received = _codec(Broker)
        broker.dataReceived(_header(60000, banana.LIST))
        piece = _encode(pb.Broker, 1) * 2048
        sent = 0
        while not transport.disconnecting and sent < 4 * MiB:
            broker.dataReceived(piece)
            sent += len(piece)
        self.assertTrue(transport.disconnecting)
        self.assertLess(sent, 2 * MiB)
        self.assertGreater(sent, PRE_AUTH_PENDING_LIMIT // PENDING_ITEM_COST)
        self.assertEqual(broker.listStack, [])
        broker.dataReceived(piece)
        self.assertEqual(received, [])

    def test_deep_nesting_bounded(self) -> None:
        """Lists nested ever deeper count against the same pending bound."""
        broker, transport, _ = _codec(Broker)
        piece = _header(1, banana.LIST) * 4096
        sent = 0
        while not transport.disconnecting and sent < 4 * MiB:
            broker.dataReceived(piece)
            sent += len(piece)
        self.assertTrue(transport.disconnecting)
        self.assertLess(sent, 2 * MiB)

    def test_finished_messages_release_their_count(self) -> None:
        """Many complete messages pass, however much they total: the count is per message."""
        broker, transport, received = _codec(Broker)
        message = _encode(pb.Broker, [1] * 1000)
        count = 2 * PRE_AUTH_PENDING_LIMIT // (1000 * PENDING_ITEM_COST)
        broker.dataReceived(message * count)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(received), count)

    def test_raise_limits_lifts_decode_bounds(self) -> None:
        """After raise_limits a long list of ints and a 1 MiB string are accepted."""
        self.assertIsNone(POST_AUTH_PENDING_LIMIT)
        broker, transport, received = _codec(Broker)
        broker.raise_limits()
        ints = [1] * 100_000
        data = b"d" * MiB
        broker.dataReceived(_encode(pb.Broker, ints) + _encode(Broker, [data]))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(received, [ints, [data]])

    def test_raise_limits_applies_mid_chunk(self) -> None:
        """Limits raised while handling one message apply to the next, in the same chunk."""
        broker, transport, received = _codec(Broker)

        def handle(expression: object) -> None:
            received.append(expression)
            broker.raise_limits()

        broker.expressionReceived = handle
        big = b"b" * (PRE_AUTH_SIZE_LIMIT + 1)
        broker.dataReceived(_encode(pb.Broker, [b"login"]) + _encode(pb.Broker, big))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(received, [[b"login"], big])

    def test_encode_uses_instance_limit(self) -> None:
        """Sending over the instance's limit raises BananaError; raise_limits allows it."""
        broker, transport, _ = _codec(Broker)
        data = b"e" * MiB
        self.assertRaises(BananaError, broker.sendEncoded, [data])
        self.assertRaises(BananaError, broker.sendEncoded, [0] * (PRE_AUTH_SIZE_LIMIT + 1))
        self.assertEqual(transport.value(), b"")
        broker.raise_limits()
        broker.sendEncoded([data])
        # Stock would refuse this too (its global is 640 KiB), so spell the bytes out.
        expected = _header(1, banana.LIST) + _header(len(data), banana.STRING) + data
        self.assertEqual(transport.value(), expected)

    def test_subclass_limits(self) -> None:
        """A subclass's sizeLimit governs both directions."""

        class Tiny(Broker):
            sizeLimit = 10

        broker, transport, received = _codec(Tiny)
        broker.dataReceived(_encode(pb.Broker, b"0123456789"))
        self.assertEqual(received, [b"0123456789"])
        self.assertRaises(BananaError, broker.sendEncoded, b"0123456789!")
        broker.dataReceived(_encode(pb.Broker, b"0123456789!"))
        self.assertTrue(transport.disconnecting)


class MalformedInputTests(SynchronousTestCase):
    """Input stock Banana would choke on drops the connection."""

    def assert_dropped(self, data: bytes, dialect: bytes = b"pb") -> None:
        """Feed ``data`` to a fresh broker; it must drop the connection, delivering nothing."""
        broker, transport, received = _codec(Broker, dialect)
        broker.dataReceived(data)
        self.assertTrue(transport.disconnecting, data)
        self.assertEqual(received, [])

    def test_unknown_type_byte(self) -> None:
        """A type byte Banana does not define drops the connection."""
        self.assert_dropped(b"\x01\x88")

    def test_prefix_too_long(self) -> None:
        """More than prefixLimit prefix digits drop the connection; prefixLimit wait."""
        self.assert_dropped(b"\x01" * 65)
        broker, transport, _ = _codec(Broker)
        broker.dataReceived(b"\x01" * 64)
        self.assertFalse(transport.disconnecting)

    def test_vocabulary_outside_pb(self) -> None:
        """A vocabulary entry is refused outside dialect pb, and unknown ones always."""
        self.assert_dropped(b"\x01" + banana.VOCAB, dialect=b"none")
        self.assert_dropped(b"\x7f" + banana.VOCAB)

    def test_handler_error_stops_stream(self) -> None:
        """An error from expressionReceived propagates, and later data is ignored."""
        broker, _, _ = _codec(Broker)
        seen: list[object] = []

        def handle(expression: object) -> None:
            seen.append(expression)
            raise pb.ProtocolError("no")

        broker.expressionReceived = handle
        two = _encode(pb.Broker, 1) + _encode(pb.Broker, 2)
        self.assertRaises(pb.ProtocolError, broker.dataReceived, two)
        broker.dataReceived(two)
        self.assertEqual(seen, [1])


class LinearityTests(SynchronousTestCase):
    """Decoding cost grows with the bytes received, not with bytes times pieces."""

    def test_drip_of_large_string(self) -> None:
        """A 4 MiB string in 64-byte pieces decodes; each byte is kept once, not re-copied.

        Stock re-concatenates its buffer per piece: about 137 GB of copying here, far past
        trial's timeout; ours keeps views of the pieces and joins them once.
        """
        broker, transport, received = _codec(Broker)
        broker.raise_limits()
        data = bytes(range(256)) * (4 * MiB // 256)
        stream = _encode(Broker, data)
        for start in range(0, len(stream), 64):
            broker.dataReceived(stream[start : start + 64])
        self.assertEqual(received, [data])
        self.assertFalse(transport.disconnecting)


class _TCPTransport(StringTransport):
    """A StringTransport with TCP's setTcpNoDelay, which may fail like a non-TCP socket."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.no_delay: bool | None = None
        self._fail = fail

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        if self._fail:
            raise OSError(errno.EOPNOTSUPP, "not a TCP socket")
        self.no_delay = enabled


class ConnectionTests(SynchronousTestCase):
    """Connection set-up and the factories."""

    def test_tcp_no_delay(self) -> None:
        """connectionMade turns TCP_NODELAY on when the transport has it."""
        transport = _TCPTransport()
        Broker(isClient=False).makeConnection(transport)
        self.assertIs(transport.no_delay, True)

    def test_tcp_no_delay_optional(self) -> None:
        """Without TCP (no method, or one that fails) the server still greets the peer."""
        for transport in (StringTransport(), _TCPTransport(fail=True)):
            Broker(isClient=False).makeConnection(transport)
            self.assertEqual(transport.value(), _encode(pb.Broker, [b"pb", b"none"], b"none"))


class Echo(pb.Root):
    """A root object that answers with its argument."""

    def remote_echo(self, value: object) -> object:
        return value


class PBRoundTripTests(SynchronousTestCase):
    """Our factories talk PB to each other in memory."""

    def connect(self) -> tuple[Broker, Broker, IOPump, pb.RemoteReference]:
        """Client broker, server broker, their pump, and the server's root reference."""
        server_factory = ServerFactory(Echo())
        client_factory = ClientFactory()
        client, server, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
        )
        self.assertIsInstance(client, Broker)
        self.assertIsInstance(server, Broker)
        d = client_factory.getRootObject()
        pump.flush()
        return client, server, pump, self.successResultOf(d)

    def test_large_call_after_raise_limits(self) -> None:
        """With limits raised on both ends a 3 MiB bytes argument goes there and back."""
        client, server, pump, root = self.connect()
        client.raise_limits()
        server.raise_limits()
        data = bytes(range(256)) * (3 * MiB // 256)
        d = root.callRemote("echo", data)
        pump.flush()
        self.assertEqual(self.successResultOf(d), data)

    def test_large_call_refused_before_login(self) -> None:
        """Before login callRemote raises BananaError at once and leaves no pending call."""
        client, _, pump, root = self.connect()
        self.assertRaises(BananaError, root.callRemote, "echo", b"x" * MiB)
        self.assertEqual(client.waitingForAnswers, {})
        d = root.callRemote("echo", b"small")
        pump.flush()
        self.assertEqual(self.successResultOf(d), b"small")

    def test_server_drops_oversized_call(self) -> None:
        """A server still at its pre-login limits drops a client that sends 1 MiB."""
        client, _, pump, root = self.connect()
        client.raise_limits()
        d = root.callRemote("echo", b"x" * MiB)
        pump.flush()
        self.failureResultOf(d, pb.PBConnectionLost)
        self.assertTrue(client.disconnected)
