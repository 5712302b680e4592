"""Liveness: which engines the controller declares dead, and how fast (SPEC §6).

An engine process that dies is noticed at once (its connection closes, even while a
child it forked lives on); an engine whose host goes silent (here: an engine in a network
namespace whose link the test takes down) is declared dead after ``--engine-timeout``
seconds; an engine busy in a C call that holds the GIL is never silent, because its
kernel answers for it. The keepalive settings themselves are checked on real sockets.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from ipkernel import tap
from ipkernel.cli.ipcluster import StartOptions, controller_argv
from ipkernel.client.task_types import StringTask
from ipkernel.errors import CompositeError, EngineError
from ipkernel.wire.keepalive import (
    DEFAULT_PEER_TIMEOUT,
    PeerSilent,
    keepalive_settings,
    watch_peer,
    went_silent,
)
from tests.cluster import Cluster, poll, stop_process
from tests.test_tasks import task_client


class KeepaliveSettingsTests(SynchronousTestCase):
    def test_settings_reach_the_deadline(self) -> None:
        """Probes start after a third of the timeout and repeat every third; the probes
        counted and the kernel's user timeout both end the connection at the timeout."""
        for timeout in (2, 3, 7, 30, 600):
            idle, interval, count, user_ms = keepalive_settings(timeout)
            self.assertGreaterEqual(idle, 1)
            self.assertEqual(idle, interval)
            self.assertLessEqual(abs(idle - max(1, timeout / 3)), 0.5)
            self.assertGreaterEqual(idle + count * interval, timeout)
            self.assertLess(idle + (count - 1) * interval, timeout)
            self.assertEqual(user_ms, timeout * 1000)
        self.assertRaises(ValueError, keepalive_settings, 0)

    def test_watch_peer_sets_the_socket_options(self) -> None:
        """watch_peer turns keepalive on with those times; a live or cleanly closed
        connection does not count as silent."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        near = socket.create_connection(listener.getsockname())
        self.addCleanup(near.close)
        far, _ = listener.accept()
        self.addCleanup(far.close)
        self.assertTrue(watch_peer(near, 3))
        tcp = socket.IPPROTO_TCP
        self.assertEqual(near.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(near.getsockopt(tcp, socket.TCP_KEEPIDLE), 1)
        self.assertEqual(near.getsockopt(tcp, socket.TCP_KEEPINTVL), 1)
        self.assertEqual(near.getsockopt(tcp, socket.TCP_USER_TIMEOUT), 3000)
        self.assertFalse(went_silent(near, 3))
        far.close()
        self.assertEqual(near.recv(1), b"")
        self.assertFalse(went_silent(near, 3))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(udp.close)
        self.assertFalse(watch_peer(udp, 3))

    def test_peer_silent_says_how_long(self) -> None:
        """The error names the timeout and what silence means."""
        self.assertEqual(
            str(PeerSilent(2.0)),
            "its host sent nothing, not even a TCP acknowledgement, for 2 s",
        )

    def test_engine_timeout_option(self) -> None:
        """--engine-timeout defaults to 30 s, takes seconds from 1, and ipcluster passes a
        value given to it on to the controller."""
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["engine-timeout"], DEFAULT_PEER_TIMEOUT)
        options.parseOptions(["--engine-timeout", "2.5"])
        self.assertEqual(options["engine-timeout"], 2.5)
        for bad in ("0", "0.5", "soon"):
            with self.assertRaises(usage.UsageError):
                tap.Options().parseOptions(["--engine-timeout", bad])
        cluster = StartOptions()
        cluster.parseOptions(["--engine-timeout", "5"])
        argv = controller_argv(cluster)
        self.assertEqual(argv[argv.index("--engine-timeout") + 1], "5.0")
        cluster = StartOptions()
        cluster.parseOptions([])
        self.assertNotIn("--engine-timeout", controller_argv(cluster))


FORKED_CHILD_SCRIPT = """
import os, socket, sys, time
from ipkernel.wire import fork_safety

near, far = socket.socketpair()
fork_safety.register(near)
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(60)
    os._exit(0)
near.close()
far.settimeout(10)
start = time.monotonic()
try:
    print(repr(far.recv(1)), round(time.monotonic() - start), flush=True)
finally:
    os.kill(child, 9)
"""


class ForkSafetyTests(SynchronousTestCase):
    def test_forked_child_does_not_hold_connections(self) -> None:
        """A registered connection closes when its process closes it, though a child
        forked after registration still runs: the child does not hold it."""
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FORKED_CHILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "b'' 0\n")


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class DeadProcessTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_killed_engine_with_a_forked_child_is_noticed_at_once(self):
        """An engine killed while a child it forked lives on leaves at once (not after
        --engine-timeout): its running command fails with EngineError naming it."""
        cluster = Cluster(self, n=1)
        mec = yield cluster.start()
        yield mec.execute(
            "import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(120)\n"
            "    os._exit(0)\n"
        )
        [child] = yield mec.pull("child")
        self.addCleanup(_kill_pid, child)
        info = (yield mec.get_engine_info())[0]
        running = mec.execute("import time; time.sleep(60)")
        running.addErrback(lambda f: f.value)
        yield poll_pending(mec, "execute")
        start = time.monotonic()
        os.kill(info["pid"], signal.SIGKILL)
        error = yield running
        yield poll_ids(mec, [])
        self.assertLess(time.monotonic() - start, 10)
        self.assertIsInstance(error, CompositeError)
        engine_error = error.elist[0][2]
        self.assertIsInstance(engine_error, EngineError)
        self.assertIn("engine 0 died or disconnected while running execute", str(engine_error))


@inlineCallbacks
def poll_ids(mec, expected: list[int], deadline: float = 30.0):
    """Fire once the controller's ids are ``expected``."""
    end = time.monotonic() + deadline
    while True:
        ids = yield mec.get_ids()
        if ids == expected:
            return ids
        if time.monotonic() > end:
            raise AssertionError(f"engine ids {ids}, not {expected}, after {deadline} s")
        yield task.deferLater(reactor, 0.02, lambda: None)


@inlineCallbacks
def poll_pending(mec, command: str, targets: int = 0):
    """Fire once ``command`` is in flight on engine ``targets``."""
    end = time.monotonic() + 30
    while True:
        [(_, status)] = yield mec.queue_status(targets=targets)
        if status["pending"] == command:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{command} never reached engine {targets}: {status}")
        yield task.deferLater(reactor, 0.02, lambda: None)


GIL_HOLDING_CODE = """
import ctypes, time
open({marker!r}, "w").close()
start = time.monotonic()
ctypes.PyDLL(None).sleep({seconds})  # libc's sleep, called with the GIL held
held = time.monotonic() - start
"""


class BusyEngineTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_engine_holding_the_gil_is_not_declared_dead(self):
        """An engine stuck in a C call that holds the GIL for three times the
        --engine-timeout (its Python cannot answer anything meanwhile) stays registered,
        and its command completes."""
        cluster = Cluster(self, n=1, controller_args=("--engine-timeout", "2"))
        mec = yield cluster.start()
        marker = cluster.dir / "busy"
        code = GIL_HOLDING_CODE.format(marker=str(marker), seconds=6)
        running = mec.execute(code)
        yield poll(marker.exists, "the engine to start its C call")
        asked = time.monotonic()
        answered = mec.get_properties()
        seen = []
        while not answered.called:
            seen.append(tuple((yield mec.get_ids())))
            yield task.deferLater(reactor, 0.2, lambda: None)
        waited = time.monotonic() - asked
        yield running
        self.assertEqual(set(seen), {(0,)})
        self.assertEqual((yield mec.get_ids()), [0])
        [held] = yield mec.pull("held")
        self.assertGreater(held, 5.9)
        # The engine's Python answered only once the call was over: silence for Python,
        # not for the kernel.
        self.assertGreater(waited, 4)
        self.assertEqual((yield answered), [{}])


# --- an engine behind a link the test can take down --------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


class NetworkLink:
    """A network namespace joined to this one by a veth pair, removed in the cleanup.

    :attr:`host_ip` is this side's address, :attr:`namespace` the other side's name;
    :meth:`cut` takes the link down from inside the namespace, as a host that vanished.
    Raises :class:`SkipTest` naming what is missing when the machine cannot make one.
    """

    def __init__(self, testcase: TestCase) -> None:
        if shutil.which("ip") is None:
            raise SkipTest("needs the `ip` command (iproute2) to make a network namespace")
        if os.geteuid() != 0:
            raise SkipTest("needs root to make a network namespace")
        tag = f"{os.getpid() % 10000}{random.randrange(1000)}"
        self.namespace = f"ipk{tag}"
        self.host_if, self.engine_if = f"ipkh{tag}", f"ipke{tag}"
        made = _run("ip", "netns", "add", self.namespace)
        if made.returncode != 0:
            raise SkipTest(f"cannot make a network namespace: {made.stderr.strip()}")
        testcase.addCleanup(_run, "ip", "netns", "del", self.namespace)
        subnet = self._free_subnet()
        host, engine = list(subnet.hosts())
        self.host_ip = str(host)
        steps = [
            ("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.engine_if),
            ("ip", "link", "set", self.engine_if, "netns", self.namespace),
            ("ip", "addr", "add", f"{host}/{subnet.prefixlen}", "dev", self.host_if),
            ("ip", "link", "set", self.host_if, "up"),
            (
                *self.inside(),
                "ip",
                "addr",
                "add",
                f"{engine}/{subnet.prefixlen}",
                "dev",
                self.engine_if,
            ),
            (*self.inside(), "ip", "link", "set", self.engine_if, "up"),
        ]
        testcase.addCleanup(_run, "ip", "link", "del", self.host_if)
        for step in steps:
            done = _run(*step)
            if done.returncode != 0:
                raise SkipTest(f"cannot set up the link ({' '.join(step)}): {done.stderr}")

    def inside(self) -> tuple[str, ...]:
        """The prefix that runs a command in the namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def cut(self) -> None:
        """Take the link down from the namespace's side: nothing passes any more."""
        done = _run(*self.inside(), "ip", "link", "set", self.engine_if, "down")
        if done.returncode != 0:
            raise AssertionError(f"cannot take the link down: {done.stderr}")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = _run("ip", "-o", "-4", "addr", "show").stdout
        routes = _run("ip", "-4", "route", "show").stdout
        for _ in range(100):
            subnet = ipaddress.IPv4Network(
                (
                    f"10.{random.randrange(100, 250)}.{random.randrange(256)}."
                    f"{4 * random.randrange(64)}",
                    30,
                )
            )
            prefix = str(subnet.network_address).rsplit(".", 1)[0] + "."
            if prefix not in used and prefix not in routes:
                return subnet
        raise SkipTest("no free 10.x.y.z/30 subnet for the test link")


class NetworkCutTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_engine_whose_network_is_cut_is_declared_dead(self):
        """Engines whose link goes down (their processes alive, their connections never
        closed) are declared dead after --engine-timeout (3 s) of silence: the command
        running on one fails with EngineError saying so, the one queued behind it with
        EngineError, and the task the other was running is retried on another engine."""
        link = NetworkLink(self)
        cluster = Cluster(
            self, n=0, controller_args=("--ip", link.host_ip, "--engine-timeout", "3")
        )
        cluster.start_controller()
        remote = []
        for _ in range(2):
            engine = subprocess.Popen(
                [*link.inside(), sys.executable, "-m", "ipkernel.cli.ipengine"],
                env=cluster.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.addCleanup(stop_process, engine)
            remote.append(engine)
        mec = yield cluster.connect()
        yield cluster.wait_for_engines(mec, 2)
        tc = yield task_client(cluster)
        yield mec.push({"slow": True})
        slow_loop = "import time\nwhile globals().get('slow'):\n    time.sleep(0.05)\n"
        # Retried maybe twice: on the other engine, if it has not been declared dead yet.
        tid = yield tc.run(StringTask(slow_loop + "where = id", pull="where", retries=2))
        tasked = yield poll_pending_anywhere(mec, "run_task")
        other = 1 - tasked
        running = mec.execute(slow_loop, targets=other)
        running.addErrback(lambda f: f.value)
        yield poll_pending(mec, "execute", other)
        queued = mec.execute("a = 1", targets=other)
        queued.addErrback(lambda f: f.value)

        link.cut()
        start = time.monotonic()
        yield poll_ids(mec, [])
        elapsed = time.monotonic() - start
        # Nothing came from the engines' host since at most a keepalive interval (1 s)
        # before the cut; the kernel gives up 3 s after that.
        self.assertGreater(elapsed, 1.5)
        self.assertLess(elapsed, 15)
        errors = [(yield running), (yield queued)]
        for error in errors:
            self.assertIsInstance(error, CompositeError)
            self.assertIsInstance(error.elist[0][2], EngineError)
        message = str(errors[0].elist[0][2])
        self.assertIn(f"engine {other} stopped answering while running execute", message)
        self.assertIn("declared dead", message)
        self.assertIn("for 3 s", message)

        cluster.start_engine()
        result = yield tc.get_task_result(tid, block=True)
        self.assertIsNone(result.failure)
        self.assertEqual(result.ns.where, 2)
        self.assertEqual(result.engineid, 2)
        self.assertIn(result.attempts, (2, 3))
        self.assertEqual([e.poll() for e in remote], [None, None], "cut off, not dead")


@inlineCallbacks
def poll_pending_anywhere(mec, command: str):
    """Fire with the id of an engine that has ``command`` in flight."""
    end = time.monotonic() + 30
    while True:
        statuses = yield mec.queue_status()
        for engine_id, status in statuses:
            if status["pending"] == command:
                return engine_id
        if time.monotonic() > end:
            raise AssertionError(f"{command} never reached an engine: {statuses}")
        yield task.deferLater(reactor, 0.02, lambda: None)
