"""``push(..., share=True)``: one read-only copy in shared memory for every local engine.

Real ``ipcontroller`` and ``ipengine`` processes (tests/cluster.py). What is pinned down:
the machine's memory grows by one copy however many engines get the data (PSS summed over
the engines, from ``/proc/<pid>/smaps_rollup``), the data is read-only on every engine
(also when it came over the network), and its pages are freed once no engine refers to
it any more, with nothing left in ``/dev/shm`` after the cluster stops.
"""

from __future__ import annotations

import numpy as np
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.errors import CompositeError
from tests.cluster import Cluster, poll
from tests.test_bigdata import dev_shm

MiB = 2**20
ENGINES = 3


def pss_mib(pid: int) -> float:
    """A process's proportional set size in MiB: shared pages count 1/N in each of N."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no Pss for {pid}")


def mapped_segments(pid: int) -> int:
    """How many mappings of ipkernel segments process ``pid`` has."""
    with open(f"/proc/{pid}/maps") as f:
        return sum("memfd:ipkernel-" in line for line in f)


class SharedPushTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.cluster = Cluster(self, n=ENGINES, env={"IPKERNEL_TRANSPORT": "auto"})
        self.shm_before = dev_shm()
        self.mec = yield self.cluster.start()
        infos = yield self.mec.get_engine_info()
        self.pids = [infos[i]["pid"] for i in sorted(infos)]

    @inlineCallbacks
    def test_one_copy_for_every_engine(self):
        """64 MiB pushed with share=True to 3 engines, read in full by each, adds about
        64 MiB to the engines' PSS summed, not 3 x 64 MiB: they map the same pages."""
        data = np.random.default_rng(0).random(64 * MiB // 8)
        yield self.mec.execute("import numpy")  # its pages counted before, not in the growth
        before = sum(pss_mib(pid) for pid in self.pids)
        yield self.mec.push({"a": data}, share=True)
        yield self.mec.execute("total = float(a.sum())")  # every page read by every engine
        totals = yield self.mec.pull("total")
        self.assertEqual(totals, [float(data.sum())] * ENGINES)
        growth = sum(pss_mib(pid) for pid in self.pids) - before
        self.assertGreater(growth, 60)
        self.assertLess(growth, 64 * 1.25, f"the engines' PSS grew by {growth:.0f} MiB")

    @inlineCallbacks
    def test_read_only_everywhere(self):
        """Shared arrays are read-only on the engines, whether they came through shared
        memory or over the network; bytes arrive as read-only memoryviews. A write raises
        ValueError and the engine keeps serving."""
        stream = yield self.cluster.connect(transport="stream")
        data = np.arange(1_000_000, dtype=np.int64)
        blob = bytes(range(256)) * 4096
        yield self.mec.push({"a": data, "b": blob}, targets=0, share=True)
        yield stream.push({"a": data, "b": blob}, targets=1, share=True)
        yield self.mec.execute(
            "w = bool(a.flags.writeable); kind = type(b).__name__; ro = b.readonly; "
            "same = bytes(b) == bytes(range(256)) * 4096",
            targets=[0, 1],
        )
        rows = yield self.mec.pull(["w", "kind", "ro", "same"], targets=[0, 1])
        self.assertEqual(rows, [[False, "memoryview", True, True]] * 2)
        for engine in (0, 1):
            try:
                yield self.mec.execute("a[0] = 7", targets=engine)
            except CompositeError as exc:
                [(_, _, error)] = exc.elist
                self.assertIn("assignment destination is read-only", str(error))
            else:
                self.fail("writing to a shared array did not raise")
        pulled = yield self.mec.pull("a", targets=[0, 1])
        for value in pulled:
            np.testing.assert_array_equal(value, data)
        # An ordinary push still gives a writable array.
        yield self.mec.push({"c": data}, targets=0)
        yield self.mec.execute("c[0] = 7", targets=0)

    @inlineCallbacks
    def test_freed_when_no_engine_holds_it(self):
        """The segment's pages go once the last engine lets go of the array (del, reset),
        and nothing of it is left in /dev/shm after the cluster stops."""
        yield self.mec.push({"a": np.ones(16 * MiB // 8)}, share=True)
        self.assertTrue(all(mapped_segments(pid) for pid in self.pids))
        yield self.mec.execute("del a", targets=0)
        yield self.mec.reset(targets=[1, 2])
        yield poll(
            lambda: not any(mapped_segments(pid) for pid in self.pids),
            "the engines to unmap the shared segment",
        )
        yield self.cluster.stop()
        self.assertEqual(dev_shm() - self.shm_before, set())
