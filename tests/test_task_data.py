"""Large task bodies and results through real processes, on both transports.

A task whose body or result is large travels apart from its batch (streamed, or through
shared memory) and the controller keeps it: the body until the task is finished (a retry
sends it again), the result until ``clear()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.client.task_types import MapTask, StringTask
from tests.cluster import Cluster, poll
from tests.test_bigdata import (
    MB,
    dev_shm,
    held_segments,
    poll_stats,
    rss,
    transfer_idle,
    uses_shared_memory,
)
from tests.test_tasks import task_client, wait_for_status


def double(x):
    return x * 2


class TaskDataMixin:
    transport = "auto"
    timeout = 120

    @inlineCallbacks
    def start(self, n: int = 2):
        cluster = Cluster(self, n=n, env={"IPKERNEL_TRANSPORT": self.transport})
        mec = yield cluster.start()
        tc = yield task_client(cluster)
        self.assertEqual(tc._payloads.share, self.transport == "auto")
        return cluster, mec, tc

    @inlineCallbacks
    def test_large_arguments_and_results(self):
        """A MapTask's large argument and return value, a StringTask's large push and
        pull: all come back equal, and a result can be fetched again."""
        cluster, mec, tc = yield self.start()
        arr = np.random.default_rng(1).random(5 * MB // 8)
        tid = yield tc.run(MapTask(double, args=(arr,)))
        tr = yield tc.get_task_result(tid, block=True)
        np.testing.assert_array_equal(tr.result, arr * 2)
        self.assertTrue(tr.result.flags.writeable)

        tid2 = yield tc.run(StringTask("b = a + 1", push={"a": arr}, pull=["a", "b"]))
        tr2 = yield tc.get_task_result(tid2, block=True)
        np.testing.assert_array_equal(tr2.ns.a, arr)
        np.testing.assert_array_equal(tr2.ns.b, arr + 1)

        # Fetched again, by id, with many small ones in between.
        small = []
        for i in range(20):
            small.append((yield tc.run(StringTask(f"c = {i}", pull="c"))))
        results = yield tc.get_task_results([tid, *small, tid2], block=True)
        np.testing.assert_array_equal(results[0].result, arr * 2)
        self.assertEqual([r.ns.c for r in results[1:-1]], list(range(20)))
        np.testing.assert_array_equal(results[-1].ns.b, arr + 1)

        # The engines received the bodies the way the transport says.
        engine = tr2.engineid
        shared = yield uses_shared_memory(mec, engine)
        self.assertEqual(shared, self.transport == "auto")
        yield transfer_idle(mec)

    @inlineCallbacks
    def test_map_over_large_items(self):
        """``map`` sends its chunks without waiting for each to be accepted and then asks
        for their results: large chunks still streaming must not make those unknown."""
        cluster, mec, tc = yield self.start()
        items = [np.full(2 * MB // 8, float(i)) for i in range(6)]
        sums = yield tc.map(np.sum, items, chunksize=1)
        self.assertEqual(sums, [float(i) * (2 * MB // 8) for i in range(6)])

    @inlineCallbacks
    def test_clear_frees_kept_results(self):
        """The controller keeps large results until clear(): then its memory and the
        segments it held go."""
        cluster, mec, tc = yield self.start(n=1)
        controller = cluster.controller.pid
        yield tc.get_task_result((yield tc.run(StringTask("a = 1"))), block=True)
        idle = rss(controller)
        tids = []
        for _ in range(3):
            tid = yield tc.run(MapTask(lambda n: __import__("numpy").ones(n), args=(5 * MB,)))
            tids.append(tid)
        results = yield tc.get_task_results(tids, block=True)
        for tr in results:
            self.assertEqual(tr.result.shape, (5 * MB,))
        if self.transport == "auto":
            # Three segments (each in one or more pieces, one descriptor each).
            names = [link.split(" ")[0] for link in held_segments(controller)]
            tokens = {name.split("ipkernel-")[1].split("-")[0] for name in names}
            self.assertEqual(len(tokens), 3)
        else:
            self.assertGreater(rss(controller) - idle, 100 * MB)
        del results, tr
        yield tc.clear()
        # Large segments are closed by a background thread: poll, with a deadline.
        yield poll(lambda: held_segments(controller) == [], "the kept segments to go")
        yield poll(lambda: rss(controller) - idle < 64 * 2**20, "the kept bytes to go")
        with self.assertRaises(IndexError):
            yield tc.get_task_result(tids[0])

    @inlineCallbacks
    def test_retry_sends_the_kept_body_again(self):
        """A task whose engine dies on its first attempt runs again, on the other engine,
        with the same large body, kept by the controller meanwhile."""
        cluster, mec, tc = yield self.start()
        marker = str(cluster.dir / "first-attempt")
        pids = {proc.pid for proc in cluster.engines}

        def die_once(a, marker=marker, pids=pids):
            import os

            if not os.path.exists(marker):
                open(marker, "w").close()
                if os.getpid() in pids:
                    os.kill(os.getpid(), 9)
            return float(a.sum())

        arr = np.arange(3 * MB // 8, dtype=np.float64)
        tid = yield tc.run(MapTask(die_once, args=(arr,), retries=1))
        tr = yield tc.get_task_result(tid, block=True)
        self.assertEqual(tr.result, float(arr.sum()))
        self.assertEqual(tr.attempts, 2)
        if self.transport == "auto":
            # The finished task's body is no longer held.
            controller = cluster.controller.pid
            yield poll(lambda: held_segments(controller) == [], "the kept body to go")


class SharedMemoryTaskDataTests(TaskDataMixin, TestCase):
    transport = "auto"


class StreamTaskDataTests(TaskDataMixin, TestCase):
    transport = "stream"


UPLOAD_SCRIPT = """
import sys, numpy
from ipkernel.client import TaskClient, MapTask
tc = TaskClient(transport=sys.argv[1])
open(sys.argv[2], "w").close()
tc.run(MapTask(len, args=(numpy.ones(200_000_000 // 8),)))
"""


class KilledUploaderTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_client_killed_mid_upload(self):
        """A client killed while a large task body streams to the controller: the stream
        is freed, the task never exists, the controller keeps serving."""
        cluster = Cluster(self, n=1, env={"IPKERNEL_TRANSPORT": "stream"})
        mec = yield cluster.start()
        before = dev_shm()
        marker = cluster.dir / "connected"
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(UPLOAD_SCRIPT), "stream", str(marker)],
            env=cluster.env,
        )
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        yield poll(marker.exists, "the client to connect")
        yield poll_stats(mec, lambda s: s["incoming"] == 1, "the body to reach the controller")
        os.kill(child.pid, signal.SIGKILL)
        yield poll(lambda: child.poll() is not None, "the client to die")
        yield transfer_idle(mec)
        tc = yield task_client(cluster)
        status = yield wait_for_status(tc, lambda s: True, "the queue status")
        self.assertEqual(status, {"scheduled": [], "pending": [], "succeeded": [], "failed": []})
        tr = yield tc.get_task_result((yield tc.run(StringTask("a = 2", pull="a"))), block=True)
        self.assertEqual(tr.ns.a, 2)
        self.assertEqual(dev_shm(), before)
