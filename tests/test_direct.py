"""Direct links between a client and an engine: certificates, payloads, fallback.

The link tests run both ends in this process over real loopback TLS (the engine's data
listener, the client's dial); the cluster tests start real ``ipcontroller`` and
``ipengine`` processes with ``IPKERNEL_TRANSPORT=stream`` and count the bytes the
controller relays.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
from twisted.internet import protocol, reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.spread.jelly import InsecureJelly
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client.direct_links import RETRY_AFTER, DirectLinks
from ipkernel.client.engine_payloads import EnginePayloads
from ipkernel.errors import TransferError
from ipkernel.security.peer_identity import PeerIdentity
from ipkernel.serialization import deserialize, dump
from ipkernel.wire.direct import DirectPayload, LinkBroker, dial_link
from ipkernel.wire.direct_listener import DataListener, LinkedEnginePayloads, parse_ports
from ipkernel.wire.direct_reference import PassedDirect, _DirectReference, link_between
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.stream_table import StreamTable
from tests.cluster import Cluster, poll

MB = 1_000_000


def _ignore(*args: object) -> None:
    pass


def connection(relay: bool) -> SimpleNamespace:
    """What jelly and unjelly see of a logged-in controller connection (the controller's
    side with ``relay``, a client's or an engine's otherwise)."""
    broker = SimpleNamespace(
        authenticated=True, streams=StreamTable(_ignore, _ignore, relay=relay, odd=not relay)
    )
    return SimpleNamespace(
        invoker=broker,
        prepare=lambda obj: [],
        preserve=lambda obj, expression: expression,
        jelly=lambda obj: obj,
    )


def unjelly(reference: list, relay: bool = False):
    return _DirectReference().unjellyFor(connection(relay), reference)


class _Silent(protocol.Protocol):
    """Accepts a TCP connection and never answers (a port that swallows the handshake)."""


class LinkTestCase(TestCase):
    """An engine's data listener on 127.0.0.1 in this process, stopped after the test
    with every link it or the test opened."""

    def setUp(self) -> None:
        self.listener = DataListener(reactor, interface="127.0.0.1")
        self.links: list[LinkBroker] = []
        self.addCleanup(self._close)

    @inlineCallbacks
    def _close(self):
        self.listener.stop()
        for link in self.links:
            link.close()
        yield poll(lambda: not any(link.open for link in self.links), "links to close")
        local = self.listener.local
        yield poll(lambda: not any(k[0] == local for k in _open_keys()), "the engine's ends")

    @inlineCallbacks
    def link(self, identity: PeerIdentity | None = None):
        """A link from a newly introduced client; fires with (client end, engine end)."""
        identity = identity or PeerIdentity.generate()
        host, port, fingerprint = self.listener.introduce(identity.certificate_pem)
        client = yield dial_link(reactor, identity, host, port, fingerprint, 10)
        self.links.append(client)
        yield poll(lambda: self.listener.link_to(client.local) is not None, "the engine's end")
        engine = self.listener.link_to(client.local)
        self.links.append(engine)
        return client, engine


def _open_keys() -> list:
    from ipkernel.wire.direct_reference import links

    return list(links)


class CertificateTests(LinkTestCase):
    @inlineCallbacks
    def test_introduced_client_links(self):
        """A client introduced to the engine links to it; each end knows the other by
        its certificate digest, and both ends are registered while the link is open."""
        identity = PeerIdentity.generate()
        client, engine = yield self.link(identity)
        self.assertTrue(client.open and engine.open)
        self.assertEqual(client.local, bytes.fromhex(identity.fingerprint))
        self.assertEqual(client.peer, self.listener.local)
        self.assertEqual((engine.local, engine.peer), (client.peer, client.local))
        self.assertIs(link_between(client.local, client.peer), client)
        client.close()
        yield poll(lambda: not engine.open, "the engine's end to close")

    @inlineCallbacks
    def test_client_with_another_certificate_is_refused(self):
        """A client showing a certificate the engine was not introduced to gets no link,
        and the engine registers none."""
        introduced, stranger = PeerIdentity.generate(), PeerIdentity.generate()
        host, port, fingerprint = self.listener.introduce(introduced.certificate_pem)
        with self.assertRaises(TransferError):
            yield dial_link(reactor, stranger, host, port, fingerprint, 10)
        self.assertIsNone(self.listener.link_to(bytes.fromhex(stranger.fingerprint)))
        self.assertEqual([k for k in _open_keys() if k[0] == self.listener.local], [])

    @inlineCallbacks
    def test_engine_with_another_certificate_is_refused(self):
        """A client dialling an engine that shows another certificate than the one it
        was told of opens no link, and says why."""
        identity = PeerIdentity.generate()
        host, port, _ = self.listener.introduce(identity.certificate_pem)
        other = PeerIdentity.generate().fingerprint
        with self.assertRaises(TransferError) as caught:
            yield dial_link(reactor, identity, host, port, other, 10)
        self.assertIn("another certificate", str(caught.exception))
        self.assertIsNone(link_between(bytes.fromhex(identity.fingerprint), bytes.fromhex(other)))

    @inlineCallbacks
    def test_silent_port_times_out(self):
        """A port that accepts TCP but never answers the handshake fails the dial after
        the connect timeout."""
        factory = protocol.Factory.forProtocol(_Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        identity = PeerIdentity.generate()
        fingerprint = self.listener.introduce(identity.certificate_pem)[2]
        with self.assertRaises(TransferError) as caught:
            yield dial_link(reactor, identity, "127.0.0.1", port.getHost().port, fingerprint, 0.2)
        self.assertIn("no connection within 0.2 s", str(caught.exception))

    @inlineCallbacks
    def test_closed_port_fails_at_once(self):
        """Dialling a port nobody listens on fails with TransferError."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = sock.getsockname()[1]
        identity = PeerIdentity.generate()
        fingerprint = self.listener.introduce(identity.certificate_pem)[2]
        with self.assertRaises(TransferError):
            yield dial_link(reactor, identity, "127.0.0.1", closed, fingerprint, 10)


class DirectPayloadTests(LinkTestCase):
    @inlineCallbacks
    def test_payload_crosses_the_link(self):
        """A payload put in a message becomes a small reference; the receiver turns the
        reference into the stream on its end of the link, and the bytes arrive whole."""
        client, engine = yield self.link()
        arr = np.random.default_rng(0).random(3 * MB // 8)
        payload = DirectPayload(dump({"a": arr}), client)
        reference = payload.jellyFor(connection(relay=False))
        self.assertEqual(reference[:3], [b"ipkernel.direct", client.local, client.peer])
        passed = unjelly(reference, relay=True)
        self.assertIsInstance(passed, PassedDirect)
        self.assertEqual(passed.jellyFor(None), reference)
        received = unjelly(passed.jellyFor(None))
        self.assertIsInstance(received, ReceivedPayload)
        yield received.when_received()
        self.assertTrue(np.array_equal(deserialize(received)["a"], arr))
        yield payload.when_sent()

    @inlineCallbacks
    def test_reference_to_a_closed_link_never_arrives(self):
        """A reference naming a link that has closed is a payload that fails with
        TransferError; so is the sender's stream."""
        client, engine = yield self.link()
        payload = DirectPayload(dump(b"x" * MB), client)
        reference = payload.jellyFor(connection(relay=False))
        client.close()
        yield poll(lambda: not engine.open, "the link to close")
        yield payload.when_sent()
        with self.assertRaises(TransferError):
            yield unjelly(reference).when_received()

    @inlineCallbacks
    def test_answer_nobody_asks_for_is_given_up(self):
        """An answer's stream without credit by its timeout is aborted (the engine's next
        command no longer waits for it); its reference, should it come late, fails."""
        client, engine = yield self.link()
        clock = Clock()
        payload = DirectPayload(dump(b"y" * MB), engine, clock, 5.0)
        reference = payload.jellyFor(connection(relay=False))
        clock.advance(4.9)
        self.assertFalse(payload.when_sent().called)
        clock.advance(0.2)
        self.assertTrue(payload.when_sent().called)
        yield poll(lambda: reference[3] in client.abandoned, "the abort to reach the client")
        with self.assertRaises(TransferError):
            yield unjelly(reference).when_received()

    @inlineCallbacks
    def test_closed_link_falls_back_to_the_message_connection(self):
        """A payload whose link closed before its message was written is sent as an
        ordinary stream on the message's own connection."""
        client, engine = yield self.link()
        client.close()
        yield poll(lambda: not client.open, "the link to close")
        reference = DirectPayload(dump(b"z" * MB), client).jellyFor(connection(relay=False))
        self.assertEqual(reference[0], b"ipkernel.stream")

    def test_references_are_refused_on_links(self):
        """A direct reference arriving on a link itself is refused."""
        on_link = connection(relay=False)
        on_link.invoker.is_link = True
        reference = [b"ipkernel.direct", b"a" * 32, b"b" * 32, 1, 10, b"h"]
        self.assertRaises(InsecureJelly, _DirectReference().unjellyFor, on_link, reference)
        bad = [b"ipkernel.direct", b"a" * 32, 7, 1, 10, b"h"]
        self.assertRaises(InsecureJelly, unjelly, bad)


class ListenerTests(SynchronousTestCase):
    def test_introductions_are_checked(self):
        """Only a PEM certificate is introduced; anything else is a ValueError."""
        listener = DataListener(reactor, interface="127.0.0.1")
        self.assertRaises(ValueError, listener.introduce, "not bytes")
        self.assertRaises(ValueError, listener.introduce, b"-----BEGIN CERTIFICATE-----\nxx")
        self.assertIsNone(listener._port)

    def test_port_range(self):
        """The listener takes the first free port of its range, and says when none is."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            listener = DataListener(reactor, interface="127.0.0.1", ports=(taken, taken + 1))
            try:
                host, port, _ = listener.introduce(PeerIdentity.generate().certificate_pem)
            except TransferError:
                raise self.skipTest(f"port {taken + 1} is in use here too") from None
            self.addCleanup(listener.stop)
            self.assertEqual((host, port), ("127.0.0.1", taken + 1))
            full = DataListener(reactor, interface="127.0.0.1", ports=(taken, taken))
            pem = PeerIdentity.generate().certificate_pem
            self.assertRaises(TransferError, full.introduce, pem)

    def test_advertised_host(self):
        """Clients are told the advertised host when one is given."""
        listener = DataListener(reactor, interface="127.0.0.1", advertise="engine.example")
        self.addCleanup(listener.stop)
        host, _, _ = listener.introduce(PeerIdentity.generate().certificate_pem)
        self.assertEqual(host, "engine.example")

    def test_parse_ports(self):
        """Ports are PORT or LOW-HIGH within 1-65535."""
        self.assertEqual(parse_ports("5000"), (5000, 5000))
        self.assertEqual(parse_ports("5000-5009"), (5000, 5009))
        for bad in ("0", "5009-5000", "x", "1-70000"):
            self.assertRaises(ValueError, parse_ports, bad)

    def test_relay_engine_takes_no_links(self):
        """An engine whose transport is 'relay' refuses introductions, and answers
        through the controller even when asked to use a link."""
        listener = DataListener(reactor, interface="127.0.0.1")
        payloads = LinkedEnginePayloads(None, lambda: 0, listener, Clock(), "relay")
        self.assertRaises(TransferError, payloads.introduce, b"")
        big = dump(b"x" * MB)
        self.assertIsInstance(payloads.pack(big, {"direct": b"c" * 32}), OutgoingPayload)
        self.assertIsNone(listener._port)


class _Links:
    """A client's links, faked: an open link to each engine in ``linked``."""

    def __init__(self, linked: set[int]) -> None:
        self.linked = linked
        self.closed = False
        self.any_open = bool(linked)
        self.digest = b"d" * 32
        self.opened: list[list[int]] = []

    def link(self, engine_id: int):
        return SimpleNamespace(engine=engine_id) if engine_id in self.linked else None

        self.opened: list[list[int]] = []

    def open(self, ids):
        self.opened.append(list(ids))


class _Avatar:
    def __init__(self) -> None:
        self.broker = SimpleNamespace(streams=None)

    def notifyOnDisconnect(self, callback) -> None:  # noqa: N802 - PB's name
        pass


class ClientPolicyTests(SynchronousTestCase):
    def policy(self, transport: str, linked: set[int]) -> EnginePayloads:
        payloads = EnginePayloads(_Avatar(), Clock(), transport)
        if payloads.links is not None:
            payloads.links = _Links(linked)  # type: ignore[assignment]
        payloads._engines = {0: {}, 1: {}, 2: {}}
        return payloads

    def test_one_engine_objects_take_links(self):
        """A large object for one engine goes over its link; one object for several
        engines, or for an engine without a link, goes through the controller; small
        ones travel inline."""
        payloads = self.policy("stream", {0, 1})
        a, b = dump(b"a" * MB), dump(b"b" * MB)
        kinds = [type(p) for p in payloads.pack([0, 1, 2], [a, b, dump(b"c" * MB)])]
        self.assertEqual(kinds, [DirectPayload, DirectPayload, OutgoingPayload])
        shared = payloads.pack([0, 1], [a, a])
        self.assertEqual([type(p) for p in shared], [OutgoingPayload, OutgoingPayload])
        self.assertIsInstance(payloads.pack([0], [dump(1)])[0], list)

    def test_reply_options_offer_links(self):
        """Commands with large answers offer the client's links once it has one; with
        transport 'relay' the client has no links at all."""
        payloads = self.policy("stream", {0})
        self.assertEqual(payloads.reply_options("pull", [0]), {"direct": b"d" * 32})
        self.assertEqual(payloads.links.opened, [[0]])  # type: ignore[union-attr]
        self.assertIsNone(payloads.reply_options("execute", [0]))
        self.assertIsNone(self.policy("stream", set()).reply_options("pull", []))
        relay = self.policy("relay", set())
        self.assertIsNone(relay.links)
        self.assertIsNone(relay.reply_options("pull", [0]))
        self.assertIsInstance(relay.pack([0], [dump(b"a" * MB)])[0], OutgoingPayload)


class _IntroducingAvatar:
    """Answers ``introduce`` with ``outcome`` for every engine; counts the calls."""

    def __init__(self, outcome: tuple) -> None:
        self.outcome = outcome
        self.introductions: list[list[int]] = []

    def callRemote(self, method: str, ids, command: str, args):  # noqa: N802 - PB's name
        self.introductions.append(list(ids))
        return succeed([(i, self.outcome) for i in ids])


class DirectLinksTests(SynchronousTestCase):
    def test_engine_without_links_is_retried_later(self):
        """An engine that refuses the introduction is left alone (its data relayed) for
        RETRY_AFTER seconds, then asked again; opening never fails."""
        refusal = ("error", ("ValueError", "unknown engine command 'introduce'"))
        avatar, clock = _IntroducingAvatar(refusal), Clock()
        links = DirectLinks(avatar, clock)
        self.assertIsNone(self.successResultOf(links.open([0, 1])))
        self.assertEqual(avatar.introductions, [[0, 1]])
        self.assertIsNone(links.link(0))
        self.assertFalse(links.any_open)
        links.open([0])
        clock.advance(RETRY_AFTER - 1)
        links.open([0])
        self.assertEqual(avatar.introductions, [[0, 1]])
        clock.advance(1)
        links.open([1])
        self.assertEqual(avatar.introductions, [[0, 1], [1]])

    def test_closed_links_open_nothing(self):
        """Once closed (the controller connection is gone), nothing is introduced."""
        avatar = _IntroducingAvatar(("ok", dump(["h", 1, "0" * 64]).frames()))
        links = DirectLinks(avatar, Clock())
        links.close()
        self.successResultOf(links.open([0]))
        self.assertEqual(avatar.introductions, [])


@inlineCallbacks
def relayed_during(mec, work):
    """The bytes the controller's relays took in while ``work()`` ran."""
    before = (yield mec.transfer_stats())["relayed"]
    yield work()
    after = (yield mec.transfer_stats())["relayed"]
    return after - before


class DirectLinkClusterTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_push_and_pull_over_direct_links(self):
        """With IPKERNEL_TRANSPORT=stream, push, pull, scatter and gather between
        real processes go over direct links: the controller relays no byte of them. One
        object pushed to both engines goes through the controller."""
        cluster = Cluster(self, n=2, env={"IPKERNEL_TRANSPORT": "stream"})
        mec = yield cluster.start()
        arr = np.random.default_rng(2).random(16 * MB // 8)
        matrix = np.arange(4 * MB // 8, dtype=np.float64).reshape(-1, 4)

        @inlineCallbacks
        def work():
            yield mec.push({"a": arr}, targets=0)
            [back] = yield mec.pull("a", targets=0)
            self.assertTrue(np.array_equal(back, arr))
            yield mec.scatter("m", matrix)
            self.assertTrue(np.array_equal((yield mec.gather("m")), matrix))

        relayed = yield relayed_during(mec, work)
        self.assertEqual(relayed, 0)
        both = yield relayed_during(mec, lambda: mec.push({"b": arr}, targets=[0, 1]))
        self.assertGreaterEqual(both, arr.nbytes)
        yield mec.execute("s = float(b.sum())")
        self.assertEqual((yield mec.pull("s")), [float(arr.sum())] * 2)

    @inlineCallbacks
    def test_unreachable_data_port_falls_back_to_the_relay(self):
        """An engine whose advertised data address cannot be reached still gets and
        answers large data, through the controller."""
        cluster = Cluster(self, n=1, env={"IPKERNEL_TRANSPORT": "stream"})
        cluster.start_controller()
        # It listens on 127.0.0.1 but clients are told 127.0.0.3, where nothing listens.
        cluster.start_engine("--data-address", "127.0.0.1", "--data-advertise", "127.0.0.3")
        mec = yield cluster.connect()
        yield cluster.wait_for_engines(mec, 1)
        arr = np.random.default_rng(3).random(16 * MB // 8)

        @inlineCallbacks
        def work():
            yield mec.push({"a": arr}, targets=0)
            [back] = yield mec.pull("a", targets=0)
            self.assertTrue(np.array_equal(back, arr))

        relayed = yield relayed_during(mec, work)
        self.assertGreaterEqual(relayed, 2 * arr.nbytes)
        self.assertEqual((yield mec.pull("id", targets=0)), [0])
