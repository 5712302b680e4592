"""ipkernel.wire.tls: TLS transports over real sockets on 127.0.0.1."""

from __future__ import annotations

import ssl
from socket import IPPROTO_TCP, TCP_CORK

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.security import ControllerIdentity
from ipkernel.wire.tls import ClientPin, client_context, connect_tls, listen_tls, server_context
from tests.cluster import poll

IDENTITY = ControllerIdentity.generate()
OTHER = ControllerIdentity.generate()


class Collector(protocol.Protocol):
    """Collects what it receives; echoes ``b"echo:"``-prefixed messages back."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.connected_d: Deferred = Deferred()
        self.lost: Deferred = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.connected_d.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.data += data

    def connectionLost(self, reason) -> None:  # noqa: N802 - Twisted's name
        self.reason = reason
        self.lost.callback(None)


class BufferedCollector(Collector):
    """Takes its data in place, into one preallocated buffer."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.buffer = bytearray(size)
        self.filled = 0
        self.calls = 0

    def get_buffer(self, hint: int) -> memoryview:
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        self.calls += 1


class HeaderThenData(Collector):
    """Takes a 3-byte header into a buffer of its size, then the data straight into place."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scratch = bytearray(3)
        self.header = bytearray()
        self.buffer = bytearray(size)
        self.filled = 0

    def get_buffer(self, hint: int) -> memoryview:
        if len(self.header) < 3 or self.filled == len(self.buffer):
            return memoryview(self.scratch)
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if len(self.header) < 3 or self.filled == len(self.buffer):
            self.header += self.scratch[:nbytes]
        else:
            self.filled += nbytes


class Factory(protocol.ClientFactory):
    def __init__(self, make) -> None:
        self.make = make
        self.built: list = []
        self.failures: list = []

    def buildProtocol(self, addr):  # noqa: N802 - Twisted's name
        p = self.make()
        self.built.append(p)
        return p

    def clientConnectionFailed(self, connector, reason):  # noqa: N802
        self.failures.append(reason)

    def clientConnectionLost(self, connector, reason):  # noqa: N802
        self.failures.append(reason)


class TLSTests(TestCase):
    timeout = 60

    def listen(self, make_server, identity=IDENTITY):
        server_factory = Factory(make_server)
        port = listen_tls(reactor, 0, server_factory, server_context(identity), "127.0.0.1")
        self.addCleanup(port.stopListening)
        return server_factory, port.getHost().port

    @inlineCallbacks
    def test_data_both_ways_pinned(self):
        """With the right pin, bytes and large buffers cross both ways, whole and in order."""
        servers, port = self.listen(lambda: BufferedCollector(3_000_000))
        clients = Factory(Collector)
        pin = connect_tls(reactor, "127.0.0.1", port, clients, IDENTITY.fingerprint)
        yield poll(lambda: clients.built and servers.built, "both sides")
        client = yield clients.built[0].connected_d
        server = yield servers.built[0].connected_d
        self.assertFalse(pin.mismatch_seen)
        self.assertEqual(pin.presented_fingerprint, IDENTITY.fingerprint)
        big = bytes(range(256)) * 10_000
        client.transport.write(b"hello ")
        client.transport.writeSequence([memoryview(big), b"!"])
        total = 6 + len(big) + 1
        yield poll(lambda: server.filled == total, "the data to arrive")
        self.assertEqual(bytes(server.buffer[:total]), b"hello " + big + b"!")
        server.transport.write(b"back")
        yield poll(lambda: bytes(client.data) == b"back", "the answer")
        client.transport.loseConnection()
        yield client.lost
        yield server.lost

    @inlineCallbacks
    def test_buffer_is_filled_up_to_its_size(self):
        """A buffered protocol's buffer is filled up to its size and never beyond, so it
        can put the next bytes elsewhere: the data after a header (in the same record)
        lands in place, none of it in the buffer the header went to. A large write
        leaves the socket uncorked."""
        size = 256 * 8000
        servers, port = self.listen(lambda: HeaderThenData(size))
        clients = Factory(Collector)
        connect_tls(reactor, "127.0.0.1", port, clients, IDENTITY.fingerprint)
        yield poll(lambda: clients.built and servers.built, "both sides")
        client = yield clients.built[0].connected_d
        server = yield servers.built[0].connected_d
        data = bytes(range(256)) * (size // 256)
        client.transport.writeSequence([b"HDR", memoryview(data)])
        self.assertEqual(client.transport.socket.getsockopt(IPPROTO_TCP, TCP_CORK), 0)
        yield poll(lambda: server.filled == size, "the data to arrive")
        self.assertEqual(bytes(server.header), b"HDR")
        self.assertEqual(bytes(server.buffer), data)
        self.assertEqual(client.transport.socket.getsockopt(IPPROTO_TCP, TCP_CORK), 0)
        client.transport.loseConnection()
        yield client.lost
        yield server.lost

    @inlineCallbacks
    def test_wrong_pin_connects_nothing(self):
        """A server showing another certificate: no protocol is built on the client, the
        pin says so, and the server side never connects its protocol either."""
        servers, port = self.listen(Collector, identity=OTHER)
        clients = Factory(Collector)
        pin = connect_tls(reactor, "127.0.0.1", port, clients, IDENTITY.fingerprint)
        yield poll(lambda: clients.failures, "the connection to fail")
        self.assertTrue(pin.mismatch_seen)
        self.assertEqual(pin.presented_fingerprint, OTHER.fingerprint)
        self.assertEqual(clients.built, [])
        yield poll(lambda: not servers.built or servers.built[0].lost.called, "the server side")


class ContextTests(SynchronousTestCase):
    def test_contexts(self):
        """Both ends insist on TLS 1.2 or later; the client checks no CA or host name."""
        server, client = server_context(IDENTITY), client_context()
        for ctx in (server, client):
            self.assertGreaterEqual(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
        self.assertFalse(client.check_hostname)
        self.assertEqual(client.verify_mode, ssl.CERT_NONE)

    def test_pin(self):
        """A pin accepts exactly its certificate; a malformed pin is refused."""
        from cryptography.hazmat.primitives import serialization

        der = IDENTITY.certificate.public_bytes(serialization.Encoding.DER)
        pin = ClientPin(IDENTITY.fingerprint.upper())
        self.assertTrue(pin.accepts(der))
        self.assertFalse(pin.accepts(OTHER.certificate.public_bytes(serialization.Encoding.DER)))
        self.assertTrue(pin.mismatch_seen)
        self.assertFalse(pin.accepts(None))
        for bad in ("", "xyz", "0" * 63):
            self.assertRaises(ValueError, ClientPin, bad)
