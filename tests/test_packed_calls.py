"""Tests for ipkernel.wire.plain and ipkernel.wire.packed_calls: plain values packed into one
string, and PB calls that carry them, with the meaning and failures of stock calls."""

from __future__ import annotations

import enum

from twisted.internet.defer import Deferred
from twisted.spread import flavors, pb
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire import plain
from ipkernel.wire.broker import Broker, ClientFactory, ServerFactory
from ipkernel.wire.errors import WireError
from ipkernel.wire.packed_calls import call_remote

#: Plain values, with the edges where their encoding or type matters.
PLAIN: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    float("inf"),
    "",
    "héllo ☃",
    b"",
    b"\x00\xff" * 300,
    [],
    (),
    {},
    [1, (2, [3, (4,)])],
    ("ok", [b"header", b"stream"]),
    [(0, ("ok", [b"h", b"p"])), (1, ("error", ("EngineError", "gone")))],
    {"reply_to": [b"id", 7, "x"], 3: None, b"k": 1.0},
]


class Flag(enum.IntEnum):
    ON = 1


class PlainTests(SynchronousTestCase):
    """plain.pack / plain.unpack."""

    def test_round_trip_keeps_values_and_types(self) -> None:
        """Every plain value comes back equal and of the same types (lists stay lists,
        tuples tuples, booleans booleans)."""
        for value in PLAIN:
            back = plain.unpack(plain.pack(value))
            self.assertEqual(back, value)
            self.assertEqual(repr(back), repr(value))

    def test_not_plain(self) -> None:
        """Values of other types, subclasses, ints past 64 bits, strings that cannot be
        UTF-8 and nesting past MAX_DEPTH are not plain: pack returns None."""
        deep: list = []
        for _ in range(plain.MAX_DEPTH + 1):
            deep = [deep]
        for value in [
            object(),
            bytearray(b"x"),
            memoryview(b"x"),
            Flag.ON,
            2**63,
            -(2**63) - 1,
            "\ud800",
            {1, 2},
            [1, object()],
            {"k": object()},
            deep,
        ]:
            self.assertIsNone(plain.pack(value), repr(value)[:60])

    def test_malformed_input(self) -> None:
        """Truncated strings, unknown tags, lying counts and lengths, leftovers, bad UTF-8,
        excessive nesting, unhashable keys and non-bytes raise ValueError."""
        good = plain.pack(("execute", ["a=1"]))
        assert good is not None
        cases = [
            b"",
            good[:-1],
            good + b"N",
            b"?",
            b"i\x00",
            b"s\xff\xff\xff\x00abc",
            b"l\xff\xff\xff\x00N",
            b"s\x02\x00\x00\x00\xff\xfe",
            b"l\x01\x00\x00\x00" * (plain.MAX_DEPTH + 1) + b"N",
            b"m\x01\x00\x00\x00l\x00\x00\x00\x00N",
        ]
        for data in cases:
            self.assertRaises(ValueError, plain.unpack, data)
        self.assertRaises(ValueError, plain.unpack, bytearray(good))


class Service(pb.Root):
    """The server's root: answers plainly, not plainly, later, or fails."""

    def __init__(self) -> None:
        self.later: Deferred = Deferred()
        self.calls: list[tuple] = []

    def remote_echo(self, *args: object) -> object:
        self.calls.append(args)
        return args[0] if len(args) == 1 else list(args)

    def remote_reference(self) -> pb.Referenceable:
        return pb.Referenceable()

    def remote_view(self) -> pb.Viewable:
        return pb.Viewable()

    def remote_later(self) -> Deferred:
        return self.later

    def remote_refuse(self, text: str) -> None:
        raise WireError("ValueError", text)

    def remote_crash(self) -> None:
        raise RuntimeError("boom")


class PackedCallTests(SynchronousTestCase):
    """call_remote between two of our brokers, pumped in memory."""

    def setUp(self) -> None:
        self.service = Service()
        server_factory = ServerFactory(self.service)
        client_factory = ClientFactory()
        client, server, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
        )
        d = client_factory.getRootObject()
        pump.flush()
        self.client: Broker = client
        self.server: Broker = server
        self.pump: IOPump = pump
        self.root: pb.RemoteReference = self.successResultOf(d)
        self.received: list[bytes] = []
        stock = server.expressionReceived

        def record(expression: list) -> None:
            self.received.append(expression[0])
            stock(expression)

        server.expressionReceived = record

    def login(self) -> None:
        self.client.raise_limits()
        self.server.raise_limits()

    def call(self, method: str, *args: object) -> Deferred:
        d = call_remote(self.root, method, *args)
        self.pump.flush()
        return d

    def test_plain_call_is_packed(self) -> None:
        """After login a call with plain arguments travels as one ipk_call and gets the
        plain answer, equal to what a stock call gets."""
        self.login()
        args = (0, "execute", ["a=1"], {"reply_to": [b"p", 3]})
        packed = self.successResultOf(self.call("echo", *args))
        self.assertEqual(self.received, [b"ipk_call"])
        stock = self.root.callRemote("echo", *args)
        self.pump.flush()
        self.assertEqual(packed, self.successResultOf(stock))
        self.assertEqual(self.service.calls, [args, args])

    def test_stock_before_login(self) -> None:
        """Before login call_remote makes a stock PB call."""
        self.assertEqual(self.successResultOf(self.call("echo", "x")), "x")
        self.assertEqual(self.received, [b"message"])

    def test_stock_for_arguments_not_plain(self) -> None:
        """Arguments that are not plain (a PB reference) go as a stock call."""
        self.login()
        self.successResultOf(self.call("echo", pb.Referenceable()))
        self.assertEqual(self.received, [b"message"])

    def test_answer_not_plain(self) -> None:
        """An answer that is not plain comes back jellied, as a stock answer would."""
        self.login()
        reference = self.successResultOf(self.call("reference"))
        self.assertIsInstance(reference, pb.RemoteReference)

    def test_deferred_answer(self) -> None:
        """A remote method's Deferred answers the packed call when it fires."""
        self.login()
        d = self.call("later")
        self.assertNoResult(d)
        self.service.later.callback(("ok", [b"frames"]))
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), ("ok", [b"frames"]))

    def test_errors_as_stock(self) -> None:
        """A pb.Error, an unexpected exception and an unknown method fail the packed call
        as they fail a stock call (same failure type and text), and the connection
        keeps serving."""
        self.login()
        for method, args in (("refuse", ("no",)), ("crash", ()), ("nothing", ())):
            packed = self.failureResultOf(self.call(method, *args))
            stock = self.root.callRemote(method, *args)
            self.pump.flush()
            expected = self.failureResultOf(stock)
            self.assertEqual(packed.type, expected.type)
            self.assertEqual(packed.getErrorMessage(), expected.getErrorMessage())
        self.flushLoggedErrors(RuntimeError, flavors.NoSuchMethod)
        self.assertEqual(self.successResultOf(self.call("echo", 1)), 1)

    def test_malformed_arguments_answered_with_error(self) -> None:
        """Packed arguments that do not unpack fail that call only."""
        self.login()
        request_id = self.client.newRequestID()
        d: Deferred = Deferred()
        self.client.waitingForAnswers[request_id] = d
        self.client.sendCall(b"ipk_call", request_id, self.root.luid, b"echo", b"?")
        self.pump.flush()
        self.assertIn("malformed packed value", self.failureResultOf(d).getErrorMessage())
        self.flushLoggedErrors(ValueError)
        self.assertEqual(self.successResultOf(self.call("echo", 2)), 2)

    def test_lost_connection_fails_pending(self) -> None:
        """A packed call waiting for its answer fails with PBConnectionLost when the
        connection drops, and a later one raises DeadReferenceError."""
        self.login()
        d = self.call("later")
        self.client.transport.loseConnection()
        self.pump.flush()
        self.failureResultOf(d, pb.PBConnectionLost)
        self.assertRaises(pb.DeadReferenceError, call_remote, self.root, "echo", 1)

    def test_packed_call_before_login_drops_connection(self) -> None:
        """A server that has not checked the peer's secret drops a packed call."""
        self.client.raise_limits()
        d = self.call("echo", 1)
        self.failureResultOf(d, pb.PBConnectionLost)
        self.assertEqual(self.service.calls, [])
        self.flushLoggedErrors()

    def test_answer_to_no_call_drops_connection(self) -> None:
        """A packed answer naming no pending call drops the connection."""
        self.login()
        self.server.sendCall(b"ipk_answer", 999, plain.pack(None))
        self.pump.flush()
        self.assertTrue(self.client.disconnected)
        self.flushLoggedErrors()

    def test_only_stock_referenceables(self) -> None:
        """A packed call to no object, or to one that dispatches its own way (a
        Viewable's view point), fails like an invalid object id."""
        self.login()
        view = self.successResultOf(self.call("view"))
        failed = self.failureResultOf(self.call_id(view.luid, "view_echo"))
        self.assertIn("Invalid Object ID", failed.getErrorMessage())
        failed = self.failureResultOf(self.call_id(12345, "echo"))
        self.assertIn("Invalid Object ID", failed.getErrorMessage())

    def call_id(self, object_id: object, method: str) -> Deferred:
        """A packed call of ``method`` with no arguments on the server's ``object_id``."""
        request_id = self.client.newRequestID()
        d: Deferred = Deferred()
        self.client.waitingForAnswers[request_id] = d
        self.client.sendCall(b"ipk_call", request_id, object_id, method.encode(), plain.pack(()))
        self.pump.flush()
        return d
