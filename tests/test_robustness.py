"""What a user sees when something is wrong, and what bad input does to a real controller."""

from __future__ import annotations

import os
import socket
import stat

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel import paths
from ipkernel.client.multiengine_async import AsyncMultiEngineClient
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.errors import ControllerUnreachable, KeyFileNotFound, StaleKeyFile, WrongKeyFile
from ipkernel.security import KeyFile, read_key_file, roles, write_key_file
from ipkernel.wire.connect import login
from tests.cluster import Cluster, poll
from tests.tlshelpers import client_tls_options


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Sender(protocol.Protocol):
    """Sends ``payload`` once connected and fires ``closed`` when the peer hangs up."""

    def __init__(self, payload: bytes, chunk: int = 64 * 1024) -> None:
        self.payload = payload
        self.chunk = chunk
        self.closed: Deferred = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        for start in range(0, len(self.payload), self.chunk):
            self.transport.write(self.payload[start : start + self.chunk])

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.closed.callback(None)


def send_tls(keyfile: KeyFile, payload: bytes) -> Deferred:
    """Open a properly pinned TLS connection and send ``payload`` instead of PB."""
    sender = Sender(payload)
    factory = protocol.ClientFactory.forProtocol(lambda: sender)
    reactor.connectSSL(keyfile.host, keyfile.port, factory, client_tls_options(keyfile.fingerprint))
    return sender.closed


def send_tcp(keyfile: KeyFile, payload: bytes) -> Deferred:
    sender = Sender(payload)
    factory = protocol.ClientFactory.forProtocol(lambda: sender)
    reactor.connectTCP(keyfile.host, keyfile.port, factory)
    return sender.closed


class KeyFileTests(TestCase):
    timeout = 120

    def connect(self, keyfile: KeyFile) -> Deferred:
        return AsyncMultiEngineClient.connect(reactor, keyfile, "test key")

    @inlineCallbacks
    def test_key_file_errors(self):
        """Missing, unreachable, stale and wrong-role key files each say what is wrong: a
        key file of another role (the Task key to a MultiEngine client, the engine key to
        a client, a client key to an engine) names the key file, the role it grants and
        the role needed, instead of failing on the first call."""
        cluster = Cluster(self, n=1)
        mec = yield cluster.start()
        security = cluster.security
        # Files and directory are private.
        self.assertEqual(stat.S_IMODE(security.stat().st_mode), 0o700)
        for name in (paths.ENGINE_FURL, paths.MEC_FURL, paths.TC_FURL, paths.KEY_FILE):
            self.assertEqual(stat.S_IMODE((security / name).stat().st_mode), 0o600)
        good = read_key_file(cluster.mec_furl)
        engine_key = read_key_file(security / paths.ENGINE_FURL)

        missing = security / "nothing.furl"
        exc = self.assertRaises(KeyFileNotFound, read_key_file, missing)
        self.assertIn(str(missing), str(exc))
        self.assertIn("ipcluster", str(exc))

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free_port = s.getsockname()[1]
        unreachable = KeyFile(good.fingerprint, "127.0.0.1", free_port, good.secret)
        error = yield self.assertFailure(self.connect(unreachable), ControllerUnreachable)
        self.assertIn(f"127.0.0.1:{free_port}", str(error))

        wrong_secret = KeyFile(good.fingerprint, good.host, good.port, "x" * 43)
        error = yield self.assertFailure(self.connect(wrong_secret), StaleKeyFile)
        self.assertIn("stale", str(error))

        wrong_cert = KeyFile("0" * 64, good.host, good.port, good.secret)
        error = yield self.assertFailure(self.connect(wrong_cert), StaleKeyFile)
        self.assertIn("certificate", str(error))

        # Roles are separate: the engine secret opens nothing on the client port,
        # and the MultiEngine secret opens nothing on the engine port.
        engine_secret_on_client_port = KeyFile(
            good.fingerprint, good.host, good.port, engine_key.secret
        )
        yield self.assertFailure(self.connect(engine_secret_on_client_port), StaleKeyFile)
        client_secret_on_engine_port = KeyFile(
            good.fingerprint, engine_key.host, engine_key.port, good.secret
        )
        yield self.assertFailure(self.connect(client_secret_on_engine_port), StaleKeyFile)

        # The key file of another role is refused naming the file, the role it grants
        # and the one needed, for clients and engines alike.
        tc_file = security / paths.TC_FURL
        error = yield self.assertFailure(cluster.connect(tc_file), WrongKeyFile)
        self.assertIn(
            f"{tc_file} is the key file for a Task client (ipcontroller-tc.furl), but a "
            "MultiEngine client (ipcontroller-mec.furl) needs its own",
            str(error),
        )
        error = yield self.assertFailure(self.connect(engine_key), WrongKeyFile)
        self.assertIn(
            "test key is the key file for an engine (ipcontroller-engine.furl)", str(error)
        )
        error = yield self.assertFailure(
            AsyncTaskClient.connect(reactor, good, "test key"), WrongKeyFile
        )
        self.assertIn("but a Task client (ipcontroller-tc.furl) needs its own", str(error))
        error = yield self.assertFailure(
            login(reactor, good, roles.ENGINE, source="engine key"), WrongKeyFile
        )
        self.assertIn("but an engine (ipcontroller-engine.furl) needs its own", str(error))

        # A stale file on disk is reported with its path.
        stale = security / "stale.furl"
        write_key_file(stale, wrong_secret)
        error = yield self.assertFailure(cluster.connect(stale), StaleKeyFile)
        self.assertIn("stale.furl", str(error))

        # Nothing above disturbed the controller.
        self.assertEqual((yield mec.pull("id")), [0])


class BadInputTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_garbage_and_oversized_input_is_dropped(self):
        """Garbage, oversized and endless messages drop their connection and nothing else."""
        cluster = Cluster(self, n=1)
        mec = yield cluster.start()
        client_key = read_key_file(cluster.mec_furl)
        engine_key = read_key_file(cluster.security / paths.ENGINE_FURL)
        garbage = os.urandom(256 * 1024)
        for key in (client_key, engine_key):
            # Not even TLS.
            yield send_tcp(key, garbage)
            # TLS, then bytes that are not PB.
            yield send_tls(key, b"\xff" * 100 + garbage)
            # A string header claiming 100 MB before login.
            yield send_tls(key, bytes([0, 0, 0, 0x30]) + b"\x82" + b"x" * 1000)
        # One endless unfinished message of small ints, before login: about 8 MB of it.
        before = rss_kib(cluster.controller.pid)
        endless = b"\x7f\x7f\x7f\x7f\x80" + b"\x01\x81" * (4 * 1024 * 1024)
        yield send_tls(client_key, endless)
        grown = rss_kib(cluster.controller.pid) - before
        self.assertLess(grown, 8 * 1024, f"controller grew by {grown} KiB")
        # Everyone else is still served.
        self.assertEqual((yield mec.pull("id")), [0])
        other = yield cluster.connect()
        self.assertEqual((yield other.get_ids()), [0])
        self.assertIsNone(cluster.controller.poll())

    @inlineCallbacks
    def test_client_vanishing_mid_call(self):
        """A client that disconnects while its call runs leaves the controller serving."""
        cluster = Cluster(self, n=1)
        mec = yield cluster.start()
        doomed = yield cluster.connect()
        d = doomed.execute("import time; time.sleep(0.5)")
        d.addErrback(lambda f: None)
        doomed.disconnect()
        yield poll(lambda: d.called, "the abandoned call to fail")
        self.assertEqual((yield mec.execute("x = 1"))[0]["number"], 2)
