"""The MultiEngine client's payload policy in isolation: the shared-memory results it
opened are released through the reactor it was given, together, once per reactor turn;
one large object for several engines is packed as one stream."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.client.engine_payloads import EnginePayloads
from ipkernel.serialization import dump
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.transfer import INLINE_LIMIT


class _Avatar:
    """A stand-in for a logged-in avatar: records its calls; its broker has a stream table."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.broker = SimpleNamespace(
            disconnected=False, streams=SimpleNamespace(on_shared_opened=None)
        )

    def callRemote(self, method: str, *args: object):  # noqa: N802 - PB's name
        self.calls.append((method, *args))
        return succeed(None)

    def notifyOnDisconnect(self, callback) -> None:  # noqa: N802 - PB's name
        pass


class ReleaseTests(SynchronousTestCase):
    def test_releases_wait_for_the_given_reactor(self):
        """Segments opened while an answer is read are released in one ``call_each``
        scheduled on the client's own reactor, grouped by the engine that made them."""
        avatar, clock = _Avatar(), Clock()
        EnginePayloads(avatar, clock, "auto")
        opened = avatar.broker.streams.on_shared_opened
        opened(1, "a")
        opened(2, "b")
        opened(1, "c")
        self.assertEqual(avatar.calls, [])
        clock.advance(0)
        self.assertEqual(
            avatar.calls, [("call_each", [1, 2], "release_shm", [[["a", "c"]], [["b"]]])]
        )
        clock.advance(0)
        self.assertEqual(len(avatar.calls), 1)

    def test_no_release_over_a_closed_connection(self):
        """Nothing is sent once the connection is gone (the engine closed its segments)."""
        avatar, clock = _Avatar(), Clock()
        EnginePayloads(avatar, clock, "auto")
        avatar.broker.streams.on_shared_opened(1, "a")
        avatar.broker.disconnected = True
        clock.advance(0)
        self.assertEqual(avatar.calls, [])


class PackTests(SynchronousTestCase):
    def test_one_stream_for_every_engine_that_gets_the_same_object(self):
        """Over the network, one large object for several engines is one stream (the
        controller fans it out); different objects are different streams; small ones
        travel inline."""
        payloads = EnginePayloads(_Avatar(), Clock(), "stream")
        big, other = dump(bytes(INLINE_LIMIT)), dump(bytes(INLINE_LIMIT + 1))
        packed = payloads.pack([0, 1, 2, 3], [big, big, other, big])
        self.assertIsInstance(packed[0], OutgoingPayload)
        self.assertEqual([p is packed[0] for p in packed], [True, True, False, True])
        self.assertIsInstance(packed[2], OutgoingPayload)
        small = payloads.pack([0, 1], [dump(1), dump(1)])
        self.assertEqual([type(p) for p in small], [list, list])
        payloads.sent(packed)
