"""The MultiEngine client's payload policy in isolation: the shared-memory results it
opened are released through the reactor it was given, together, once per reactor turn."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.client.engine_payloads import EnginePayloads


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
