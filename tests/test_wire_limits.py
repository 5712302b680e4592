"""No size limit of the wire reaches a user (SPEC §9), through real processes.

Code, arguments and results of any size that fits in memory work: large data travels
by the data path (streams or shared memory, beside the messages), and what stays inline
in a PB message (a long code string, a long list of names) is bounded by nothing once
the peer has logged in. Each case runs on both transports.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.spread import pb
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client.task_types import MapTask, StringTask
from ipkernel.wire.broker import ClientFactory, ServerFactory
from tests.cluster import Cluster
from tests.test_tasks import task_client

MiB = 2**20


def total_length(a: bytes, b: bytes) -> int:
    return len(a) + len(b)


class Echo(pb.Root):
    def remote_echo(self, value: object) -> object:
        return value


class BrokerLimitTests(SynchronousTestCase):
    def test_no_size_limit_after_login(self) -> None:
        """Once both ends have raised their limits, a string beyond any earlier limit
        (64 KiB before login, 640 KiB in stock Banana, 4 MiB once after login) goes there
        and back."""
        server_factory = ServerFactory(Echo())
        client_factory = ClientFactory()
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
        )
        d = client_factory.getRootObject()
        pump.flush()
        root = self.successResultOf(d)
        client.raise_limits()
        server.raise_limits()
        text = "x" * (9 * MiB)
        d = root.callRemote("echo", text)
        pump.flush()
        self.assertEqual(self.successResultOf(d), text)


class WireLimitsMixin:
    transport = "auto"
    timeout = 120

    @inlineCallbacks
    def start(self):
        cluster = Cluster(self, n=2, env={"IPKERNEL_TRANSPORT": self.transport})
        mec = yield cluster.start()
        return cluster, mec

    @inlineCallbacks
    def test_execute_of_a_10_mib_code_string(self):
        """``execute`` of 10 MiB of code (once a raw BananaError) runs on every engine."""
        cluster, mec = yield self.start()
        code = "x = 1\n" + "#" * (10 * MiB) + "\ny = x + 1\n"
        results = yield mec.execute(code)
        self.assertEqual([r["input"]["raw"] == code for r in results], [True, True])
        self.assertEqual((yield mec.pull("y")), [2, 2])

    @inlineCallbacks
    def test_push_of_100000_names(self):
        """A push of a dict with 100,000 small keys binds every one on every engine."""
        cluster, mec = yield self.start()
        namespace = {f"k{i}": i for i in range(100_000)}
        self.assertEqual((yield mec.push(namespace)), [None, None])
        yield mec.execute("n = sum(v for k, v in list(globals().items()) if k[:1] == 'k')")
        total = sum(namespace.values())
        self.assertEqual((yield mec.pull(["n", "k99999"])), [[total, 99_999]] * 2)

    @inlineCallbacks
    def test_large_task_bodies_and_results(self):
        """A StringTask pushing 50 MB, a MapTask whose arguments are 200 MB and a task
        whose result is 200 MB all succeed, with the right values."""
        cluster, mec = yield self.start()
        tc = yield task_client(cluster)
        pushed = yield tc.run(
            StringTask("n = len(data)", push={"data": b"p" * 50_000_000}, pull="n")
        )
        args = (b"a" * 100_000_000, b"b" * 100_000_000)
        mapped = yield tc.run(MapTask(total_length, args=args))
        del args
        made = yield tc.run(StringTask("r = b'r' * 200_000_000", pull="r"))
        results = yield tc.get_task_results([pushed, mapped, made], block=True)
        self.assertEqual([r.failure for r in results], [None, None, None])
        self.assertEqual(results[0].ns.n, 50_000_000)
        self.assertEqual(results[1].result, 200_000_000)
        result = results[2].ns.r
        self.assertEqual(len(result), 200_000_000)
        self.assertEqual(result[:1] + result[-1:], b"rr")


class SharedMemoryWireLimitsTests(WireLimitsMixin, TestCase):
    transport = "auto"


class StreamWireLimitsTests(WireLimitsMixin, TestCase):
    transport = "stream"
