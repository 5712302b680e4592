"""Large data through real processes: both transports, bounded memory, killed processes.

Each test starts its own ``ipcontroller`` and ``ipengine`` processes (tests/cluster.py)
with ``IPKERNEL_TRANSPORT`` set for them and for the client, so the shared-memory path
(``auto``: client and engines share this host) and the network path (``stream``: over
direct links where the data goes to one engine; ``relay``: all through the controller)
are exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.errors import CompositeError, EngineError, TransferError
from ipkernel.wire.stream_table import stream_stats
from tests.cluster import Cluster, poll

MB = 1_000_000


def rss(pid: int) -> int:
    """A process's resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


#: Entries of /dev/shm that other programs make and remove at any time, ipkernel never:
#: multiprocessing's semaphores, and Open MPI's shared-memory segments (the MPI tests,
#: run beside these with ``trial -j``, make them).
_OTHERS = ("sem.mp-", "vader_segment.")


def dev_shm() -> set[str]:
    """The entries of /dev/shm, less those other programs make (``_OTHERS``)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if not name.startswith(_OTHERS)}


def held_segments(pid: int) -> list[str]:
    """The payload segments (not the probe) that process ``pid`` holds open."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("/memfd:ipkernel-") and "probe" not in link:
            held.append(link)
    return held


class RSSWatch:
    """Samples a process's RSS every few milliseconds in the reactor, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.005)

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, rss(self.pid))
        except (OSError, AssertionError):
            pass

    def stop(self) -> int:
        self._loop.stop()
        return self.peak


@inlineCallbacks
def uses_shared_memory(mec, engine_id: int):
    """Whether the engine has an ipkernel segment mapped (it received through one)."""
    yield mec.execute(
        "_maps = open('/proc/self/maps').read().count('memfd:ipkernel-')", targets=engine_id
    )
    [count] = yield mec.pull("_maps", targets=engine_id)
    return count > 0


@inlineCallbacks
def transfer_idle(mec):
    """Wait until the controller has no stream open and holds nothing for one."""
    stats = {}

    def idle():
        return stats.get("incoming") == 0 and stats.get("outgoing") == 0

    deadline = time.monotonic() + 30
    while True:
        stats = yield mec.transfer_stats()
        if idle():
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"the controller still holds streams: {stats}")
        yield task.deferLater(reactor, 0.02, lambda: None)


class BothPathsMixin:
    """Push, pull, scatter, gather and map of large objects; run once per transport."""

    transport = "auto"
    timeout = 120

    @inlineCallbacks
    def test_large_objects_round_trip(self):
        """Arrays and big in-band objects move whole both ways, on every engine."""
        cluster = Cluster(self, n=2, env={"IPKERNEL_TRANSPORT": self.transport})
        mec = yield cluster.start()
        arr = np.random.default_rng(0).random(8 * MB // 8)
        yield mec.push({"arr": arr, "small": 1})
        back = yield mec.pull("arr")
        self.assertTrue(all(np.array_equal(b, arr) for b in back))
        self.assertTrue(all(b.flags.writeable for b in back))
        shared = yield uses_shared_memory(mec, 0)
        self.assertEqual(shared, self.transport == "auto")
        # Changing the pushed array on one engine leaves the other's copy alone.
        yield mec.execute("arr[:] = id", targets=0)
        [other] = yield mec.pull("arr", targets=1)
        self.assertTrue(np.array_equal(other, arr))

        # Calls keep their order even when a large push must first ask for the engines'
        # hosts: the execute made after it sees the pushed value.
        pushed = mec.push({"late": arr}, targets=[1, 0])
        executed = mec.execute("late_sum = float(late.sum())", targets=[0, 1])
        yield pushed
        yield executed
        self.assertEqual((yield mec.pull("late_sum")), [float(arr.sum())] * 2)

        # A large in-band pickle (no out-of-band buffer at all), both ways.
        ints = list(range(1_000_000))
        yield mec.scatter("ints", ints)
        parts = yield mec.pull("ints")
        self.assertEqual([len(p) for p in parts], [500_000, 500_000])
        self.assertEqual((yield mec.gather("ints")), ints)

        # Arrays scatter and gather as arrays; map returns large results.
        matrix = np.arange(3 * MB // 8, dtype=np.float64).reshape(-1, 3)
        yield mec.scatter("m", matrix)
        joined = yield mec.gather("m")
        self.assertTrue(np.array_equal(joined, matrix))
        rows = yield mec.map(lambda n: np.full(n, n, dtype=np.int64), [100_000, 200_000])
        self.assertEqual([r.shape for r in rows], [(100_000,), (200_000,)])
        stats = yield transfer_idle(mec)
        self.assertEqual(stats["held"], 0)
        # Every segment was released once opened: none is held by either side.
        self.assertEqual(held_segments(os.getpid()), [], "client")
        for engine in cluster.engines:
            yield poll(lambda e=engine: not held_segments(e.pid), "the engines to release")


class SharedMemoryPathTests(BothPathsMixin, TestCase):
    transport = "auto"


class RelayPathTests(BothPathsMixin, TestCase):
    transport = "relay"


class StreamPathTests(BothPathsMixin, TestCase):
    transport = "stream"

    @inlineCallbacks
    def test_controller_memory_stays_bounded(self):
        """A 200 MB array goes to an engine and back, twice, through the controller: its
        RSS stays within 64 MiB of idle throughout and after; the engine holds one copy;
        fetched non-blocking results are not kept by the client."""
        cluster = Cluster(self, n=1, env={"IPKERNEL_TRANSPORT": "stream"})
        mec = yield cluster.start()
        yield mec.execute("x = 1")
        idle = rss(cluster.controller.pid)
        [engine] = cluster.engines
        engine_before = rss(engine.pid)
        arr = np.random.default_rng(1).random(200 * MB // 8)
        watch = RSSWatch(cluster.controller.pid)
        for _ in range(2):
            yield mec.push({"big": arr}, targets=0)
            self.assertLess(rss(engine.pid) - engine_before, 1.25 * arr.nbytes)
            [back] = yield mec.pull("big", targets=0)
            self.assertTrue(np.array_equal(back, arr))
            del back
        peak = watch.stop()
        yield transfer_idle(mec)
        after = rss(cluster.controller.pid)
        self.assertLess(peak - idle, 64 * 2**20, f"idle {idle}, peak {peak}")
        self.assertLess(after - idle, 64 * 2**20, f"idle {idle}, after {after}")
        cluster.run_script(FETCHED_NOT_KEPT)

    @inlineCallbacks
    def test_push_to_many_engines_leaves_the_client_once(self):
        """A push of one array to 4 engines, one of them busy, sends its bytes from the
        client once (counted by the kernel's write counter of this process, which is the
        client's); the controller fans it out, every engine gets it whole, and the
        controller holds nothing afterwards."""
        cluster = Cluster(self, n=4, env={"IPKERNEL_TRANSPORT": "stream"})
        mec = yield cluster.start()
        arr = np.random.default_rng(2).random(16 * MB // 8)
        yield mec.push({"warm": arr[:100_000]})
        busy = mec.execute("import time; time.sleep(0.5)", targets=3)
        before = bytes_written()
        yield mec.push({"arr": arr})
        sent = bytes_written() - before
        yield busy
        self.assertGreater(sent, arr.nbytes)
        self.assertLess(sent, 1.25 * arr.nbytes)
        sums = yield mec.execute("s = float(arr.sum())")
        self.assertEqual(len(sums), 4)
        self.assertEqual((yield mec.pull("s")), [float(arr.sum())] * 4)
        stats = yield transfer_idle(mec)
        self.assertEqual(stats["held"], 0)


def bytes_written() -> int:
    """The bytes this process has passed to ``write`` and kin (its TLS connections'
    records included), from ``/proc/self/io``."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


FETCHED_NOT_KEPT = """
import gc, weakref
from ipkernel import client
mec = client.MultiEngineClient(transport="stream")
refs = []
for _ in range(3):
    pending = mec.pull("big", targets=0, block=False)
    [value] = pending.get_result()
    refs.append(weakref.ref(value))
    del pending, value
gc.collect()
assert all(ref() is None for ref in refs), "a fetched result is still held"
"""


CLIENT_SCRIPT = """
import sys, time
import numpy as np
from ipkernel import client
mec = client.MultiEngineClient(transport=sys.argv[1])
# The engine is busy, so the push waits in its queue (its data held back, in flight).
mec.execute("import time; time.sleep(1.5)", targets=0, block=False)
pending = mec.push({"big": np.ones(int(sys.argv[2]))}, targets=0, block=False)
open(sys.argv[3], "w").close()
time.sleep(60)
"""


class KilledProcessTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def kill_client_mid_push(self, transport: str):
        cluster = Cluster(self, n=1, env={"IPKERNEL_TRANSPORT": transport})
        mec = yield cluster.start()
        before = dev_shm()
        marker = cluster.dir / "pushed"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(CLIENT_SCRIPT),
                transport,
                str(40 * MB // 8),
                str(marker),
            ],
            env=cluster.env,
        )
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        yield poll(marker.exists, "the client to send its push")
        if transport == "relay":
            # Held at the controller, mid-way: its engine is busy.
            yield poll_stats(mec, lambda s: s["incoming"] == 1, "the push to reach the controller")
        elif transport == "stream":
            # Waiting in the engine's queue; its bytes wait at the client, on the link.
            yield poll_queued(mec, "push")
        os.kill(child.pid, signal.SIGKILL)
        yield poll(lambda: child.poll() is not None, "the client to die")
        yield transfer_idle(mec)
        # The engine ran the orphaned push (it failed: nothing bound) and still works.
        yield poll_idle_queue(mec)
        keys = yield mec.keys(targets=0)
        self.assertNotIn("big", keys[0])
        self.assertEqual((yield mec.pull("id", targets=0)), [0])
        self.assertEqual(dev_shm(), before)

    def test_client_killed_mid_push_relayed(self):
        """A client killed while its pushed data streams through the controller: the
        controller frees the stream, the engine binds nothing and keeps serving."""
        return self.kill_client_mid_push("relay")

    def test_client_killed_mid_push_direct(self):
        """A client killed while its push, to go over its direct link, waits in the
        engine's queue: the link closes, the push fails on the engine without binding
        anything, and the engine keeps serving."""
        return self.kill_client_mid_push("stream")

    def test_client_killed_mid_push_shared(self):
        """A client killed while its shared-memory push waits: nothing is left anywhere."""
        return self.kill_client_mid_push("auto")

    def test_engine_killed_mid_relayed_transfer(self):
        """An engine killed while data streams to it and from it through the controller:
        its share fails with EngineError, the controller frees the streams, the other
        engine is unaffected."""
        return self.kill_engine_mid_transfer("relay")

    def test_engine_killed_mid_direct_transfer(self):
        """The same over direct links: the client's end of the link aborts its stream,
        the call fails for that engine alone."""
        return self.kill_engine_mid_transfer("stream")

    @inlineCallbacks
    def kill_engine_mid_transfer(self, transport: str):
        cluster = Cluster(self, n=2, env={"IPKERNEL_TRANSPORT": transport})
        mec = yield cluster.start()
        before = dev_shm()
        pids = yield mec.get_engine_info()
        procs = {p.pid: p for p in cluster.engines}
        victim = procs[pids[1]["pid"]]
        arr = np.ones(400 * MB // 8)
        d = mec.push({"big": arr}, targets=1)
        d.addErrback(lambda f: f.value)
        yield poll_streaming(mec, transport, "the push to stream")
        victim.send_signal(signal.SIGKILL)
        error = yield d
        self.assertIsInstance(error, CompositeError)
        self.assertIsInstance(error.elist[0][2], EngineError)
        yield transfer_idle(mec)

        # And engine → client: engine 0 makes a large array, dies while sending it.
        yield mec.execute("import numpy; big = numpy.ones(50_000_000)", targets=0)
        d = mec.pull("big", targets=0)
        d.addErrback(lambda f: f.value)
        yield poll_streaming(mec, transport, "the pull to stream")
        procs[pids[0]["pid"]].send_signal(signal.SIGKILL)
        error = yield d
        self.assertIsInstance(error, CompositeError)
        self.assertIsInstance(error.elist[0][2], (EngineError, TransferError))
        yield transfer_idle(mec)
        self.assertEqual(dev_shm(), before)


@inlineCallbacks
def poll_stats(mec, predicate, what: str):
    deadline = time.monotonic() + 30
    while True:
        stats = yield mec.transfer_stats()
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; stats {stats}")
        yield task.deferLater(reactor, 0.005, lambda: None)


def poll_streaming(mec, transport: str, what: str):
    """Fire once a stream runs: through the controller (``relay``), or over one of this
    process's direct links."""
    if transport == "relay":
        return poll_stats(mec, lambda s: s["incoming"] > 0, what)
    return poll(lambda: sum(stream_stats()[k] for k in ("incoming", "outgoing")) > 0, what)


@inlineCallbacks
def poll_queued(mec, command: str):
    deadline = time.monotonic() + 30
    while True:
        [(_, status)] = yield mec.queue_status(targets=0)
        if command in status["queue"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {command} in engine 0's queue: {status}")
        yield task.deferLater(reactor, 0.02, lambda: None)


@inlineCallbacks
def poll_idle_queue(mec):
    deadline = time.monotonic() + 30
    while True:
        [(_, status)] = yield mec.queue_status(targets=0)
        if status["pending"] is None and not status["queue"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"engine 0 stayed busy: {status}")
        yield task.deferLater(reactor, 0.02, lambda: None)
