"""The MultiEngine interface through real processes: ipcontroller, ipengine, the client."""

from __future__ import annotations

import os
import signal
import threading

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.errors import (
    CompositeError,
    EngineError,
    InvalidEngineID,
    NoEnginesRegistered,
    QueueCleared,
    SerializationError,
)
from tests.cluster import Cluster, poll

try:
    import numpy
except ImportError:  # pragma: no cover - numpy is a test dependency
    numpy = None


def sleep(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


class ExecuteTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_execute_results_and_namespace(self):
        """execute returns one result dict per target; namespaces persist and start with id."""
        mec = yield Cluster(self, n=2).start()
        results = yield mec.execute("a = id * 10\nprint('a is', a)\na + 1")
        self.assertEqual([r["id"] for r in results], [0, 1])
        first = results[0]
        self.assertEqual(first["number"], 1)
        self.assertEqual(
            first["input"], {"raw": first["input"]["raw"], "translated": first["input"]["raw"]}
        )
        self.assertEqual(first["stdout"], "a is 0\n1\n")
        self.assertEqual(results[1]["stdout"], "a is 10\n11\n")
        self.assertIn("<Results List>", repr(results))
        self.assertIn("[1] In [1]: a = id * 10", repr(results))
        again = yield mec.execute("import sys; _ = sys.stderr.write('warn\\n'); b = a", targets=1)
        self.assertEqual(again[0]["number"], 2)
        self.assertEqual(again[0]["stderr"], "warn\n")
        self.assertEqual(again[0]["stdout"], "")
        values = yield mec.pull("b", targets=[1])
        self.assertEqual(values, [10])
        stored = yield mec.get_result(1, targets=[1, 0])
        self.assertEqual([r["id"] for r in stored], [1, 0])
        self.assertEqual(stored[0]["stdout"], "a is 10\n11\n")
        keys = yield mec.keys()
        self.assertEqual(
            [sorted(k) for k in keys], [["a", "id", "mpi"], ["_", "a", "b", "id", "mpi", "sys"]]
        )
        yield mec.reset(targets=0)
        keys = yield mec.keys(targets=0)
        self.assertEqual(sorted(keys[0]), ["id", "mpi"])
        ids = yield mec.pull("id")
        self.assertEqual(ids, [0, 1])

    @inlineCallbacks
    def test_failures_are_composite_and_lose_nothing(self):
        """A failing engine's exception sits beside the other engines' results."""
        mec = yield Cluster(self, n=2).start()
        try:
            yield mec.execute("x = 1\nif id == 1: 1/0\ny = 2")
        except CompositeError as exc:
            error = exc
        else:
            self.fail("no CompositeError")
        self.assertIn("[1:execute]: ZeroDivisionError: division by zero", str(error))
        self.assertEqual(len(error.elist), 1)
        self.assertEqual(error.results[0]["stdout"], "")
        self.assertIsInstance(error.results[1], ZeroDivisionError)
        self.assertIn("1/0", error.results[1].remote_traceback)
        self.assertRaises(ZeroDivisionError, error.raise_exception)
        # Statements before the failure kept their effect, those after did not run.
        pulled = yield mec.pull(["x"], targets=1)
        self.assertEqual(pulled, [[1]])
        try:
            yield mec.pull("y", targets=1)
        except CompositeError as exc:
            self.assertIsInstance(exc.elist[0][2], NameError)
        else:
            self.fail("y should not exist on engine 1")
        # A SyntaxError anywhere runs nothing, and still counts an execution.
        try:
            yield mec.execute("z = 1\n1 +", targets=0)
        except CompositeError as exc:
            self.assertIsInstance(exc.elist[0][2], SyntaxError)
        keys = yield mec.keys(targets=0)
        self.assertNotIn("z", keys[0])
        last = yield mec.get_result(targets=0)
        self.assertEqual(last[0]["number"], 2)
        # A command that fails does not affect the ones queued behind it.
        calls = [mec.execute("1/0", targets=0), mec.execute("w = 5", targets=0)]
        first, second = yield gatherResults([c.addErrback(lambda f: f.value) for c in calls])
        self.assertIsInstance(first, CompositeError)
        self.assertEqual(second[0]["number"], 4)


class DataTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_push_pull_and_friends(self):
        """push/pull of one and several names, zip_pull, functions and dict-style data."""
        mec = yield Cluster(self, n=2).start()
        result = yield mec.push({"a": 1.03234, "b": 3453})
        self.assertEqual(result, [None, None])
        self.assertEqual((yield mec.pull("a")), [1.03234, 1.03234])
        self.assertEqual((yield mec.pull("b", targets=0)), [3453])
        self.assertEqual((yield mec.pull(("a", "b"))), [[1.03234, 3453], [1.03234, 3453]])
        self.assertEqual((yield mec.zip_pull(("a", "b"))), [(1.03234, 1.03234), (3453, 3453)])
        factor = 3

        def f(x):
            return x * factor

        yield mec.push_function({"f": f})
        yield mec.execute("y = f(4.0)")
        self.assertEqual((yield mec.pull("y")), [12.0, 12.0])
        [g] = yield mec.pull_function("f", targets=1)
        self.assertEqual(g(2), 6)
        yield mec.push({"h": lambda v: v + factor})
        yield mec.execute("hv = h(id)")
        self.assertEqual((yield mec.pull("hv")), [3, 4])

    @inlineCallbacks
    def test_scatter_gather_and_map(self):
        """scatter splits near-equally, larger parts first, in target order; gather joins."""
        mec = yield Cluster(self, n=2).start()
        yield mec.scatter("a", list(range(5)))
        self.assertEqual((yield mec.pull("a")), [[0, 1, 2], [3, 4]])
        yield mec.scatter("a", range(4), targets=[1, 0])
        self.assertEqual((yield mec.pull("a", targets=[1, 0])), [[0, 1], [2, 3]])
        self.assertEqual((yield mec.gather("a", targets=[1, 0])), [0, 1, 2, 3])
        yield mec.scatter("a", [7])
        self.assertEqual((yield mec.pull("a")), [[7], []])
        self.assertEqual((yield mec.gather("a")), [7])
        if numpy is not None:
            arr = numpy.arange(15.0).reshape(5, 3)
            yield mec.scatter("m", arr)
            parts = yield mec.pull("m")
            self.assertEqual([p.shape for p in parts], [(3, 3), (2, 3)])
            joined = yield mec.gather("m")
            self.assertIsInstance(joined, numpy.ndarray)
            self.assertTrue((joined == arr).all())
        # Large parts leave one after the other; a part that cannot be pickled fails the
        # call with SerializationError, after the parts before it have been bound.
        big = list(range(200_000))
        yield mec.scatter("big", big)
        self.assertEqual((yield mec.gather("big")), big)
        with self.assertRaises(SerializationError) as raised:
            yield mec.scatter("bad", [*big, threading.Lock()])
        # The message names the key and the part's type as the user knows it.
        self.assertIn("'bad': object of type 'list'", str(raised.exception))
        self.assertEqual((yield mec.pull("bad", targets=0)), [big[:100_001]])
        before = yield mec.keys()
        squares = yield mec.map(lambda x: x**10, range(32))
        self.assertEqual(squares, [x**10 for x in range(32)])
        self.assertEqual((yield mec.map(str, [])), [])
        self.assertEqual((yield mec.map(abs, [-1])), [1])
        self.assertEqual((yield mec.map(abs, [-1, -2, -3], targets=[1])), [1, 2, 3])
        self.assertEqual((yield mec.keys()), before)

    @inlineCallbacks
    def test_large_numpy_array_round_trip(self):
        """A 100 MB array pushes to one engine and pulls back equal (chunked on the wire)."""
        if numpy is None:
            self.skipTest("numpy is not installed")
        mec = yield Cluster(self, n=1).start()
        arr = numpy.random.default_rng(0).random(100_000_000 // 8)
        yield mec.push({"big": arr}, targets=0)
        [total] = yield mec.execute("s = float(big.sum())", targets=0)
        self.assertEqual(total["stdout"], "")
        self.assertEqual((yield mec.pull("s")), [float(arr.sum())])
        [back] = yield mec.pull("big", targets=0)
        self.assertTrue(numpy.array_equal(back, arr))

    @inlineCallbacks
    def test_unpicklable_objects(self):
        """An object that cannot be pickled fails on its own side, naming its type."""
        mec = yield Cluster(self, n=2).start()
        try:
            mec.push({"g": (i for i in range(3))})
        except SerializationError as exc:
            self.assertIn("generator", str(exc))
            self.assertIn("'g'", str(exc))
        else:
            self.fail("pushing a generator did not fail")
        yield mec.execute("import threading; lock = threading.Lock()")
        try:
            yield mec.pull("lock")
        except CompositeError as exc:
            self.assertIn("lock", str(exc))
            self.assertEqual(len(exc.elist), 2)
        else:
            self.fail("pulling a lock did not fail")
        # Nothing else was affected.
        self.assertEqual((yield mec.pull("id")), [0, 1])


class TargetsAndEnginesTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_targets_errors(self):
        """Bad targets values, unknown ids and an empty controller give their own errors."""
        cluster = Cluster(self, n=0)
        cluster.start_controller()
        mec = yield cluster.connect()
        self.assertEqual((yield mec.get_ids()), [])
        yield self.assertFailure(mec.execute("a=1"), NoEnginesRegistered)
        cluster.start_engine()
        yield cluster.wait_for_engines(mec, 1)
        yield self.assertFailure(mec.execute("a=1", targets=[0, 5]), InvalidEngineID)
        for bad in ("some", 1.5, [0, "1"]):
            try:
                mec.execute("a=1", targets=bad)
            except ValueError as exc:
                self.assertIn(repr(bad), str(exc))
            else:
                self.fail(f"targets={bad!r} accepted")
        self.assertEqual((yield mec.pull("id", targets=0)), [0])

    @inlineCallbacks
    def test_properties(self):
        """Properties come from --property, from clients, and from code on the engine."""
        cluster = Cluster(self, n=0)
        cluster.start_controller()
        cluster.start_engine("--property", "RAM=17179869184", "--property", "gpu=True")
        mec = yield cluster.connect()
        yield cluster.wait_for_engines(mec, 1)
        props = yield mec.get_properties()
        self.assertEqual(props, [{"RAM": 2**34, "gpu": True}])
        yield mec.set_properties({"site": "lab"})
        yield mec.execute("from ipkernel.engine import properties\nproperties['ncores'] = 4")
        self.assertEqual(
            (yield mec.get_properties(["site", "ncores"])), [{"site": "lab", "ncores": 4}]
        )
        self.assertEqual((yield mec.has_properties(["gpu", "tpu"])), [[True, False]])
        yield mec.del_properties("gpu")
        self.assertEqual((yield mec.has_properties("gpu")), [False])
        yield mec.clear_properties()
        self.assertEqual((yield mec.get_properties()), [{}])

    @inlineCallbacks
    def test_busy_engine_queue_and_kill(self):
        """A busy engine queues work, still answers direct calls, and can be cleared or killed."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        long = mec.execute("import time; time.sleep(3)", targets=0)
        queued = mec.execute("after = 1", targets=0)
        long.addErrback(lambda f: None)  # it dies with the engines below
        queued.addErrback(lambda f: f.value)
        yield poll_status(mec, lambda s: s[0][1]["queue"] == ["execute"])
        status = yield mec.queue_status(targets=0)
        self.assertEqual(status, [(0, {"queue": ["execute"], "pending": "execute"})])
        # Engine 0 is busy; its properties still answer, and engine 1 is not blocked.
        self.assertEqual((yield mec.get_properties(targets=0)), [{}])
        self.assertEqual((yield mec.pull("id", targets=1)), [1])
        yield mec.clear_queue(targets=0)
        dropped = yield queued
        self.assertIsInstance(dropped, CompositeError)
        self.assertIsInstance(dropped.elist[0][2], QueueCleared)
        engine1 = yield engine_process(cluster, mec, 1)
        yield mec.kill(targets=1)
        yield poll(lambda: engine1.poll() is not None, "engine 1 to exit")
        yield poll_ids(mec, [0])
        yield mec.kill(controller=True)
        yield poll(lambda: cluster.controller.poll() is not None, "controller to exit")
        yield poll(lambda: all(e.poll() is not None for e in cluster.engines), "engines to exit")

    @inlineCallbacks
    def test_dead_engine_is_an_engine_error(self):
        """An engine killed mid-call fails its share with EngineError; others' results stay."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        engine1 = yield engine_process(cluster, mec, 1)
        d = mec.execute("import time; time.sleep(0.5 + 20 * (id == 1)); done = True")
        d.addErrback(lambda f: f.value)
        yield poll_status(mec, lambda s: s[1][1]["pending"] == "execute", targets=[0, 1])
        yield sleep(1.0)  # let engine 0 finish its half second
        os.kill(engine1.pid, signal.SIGKILL)
        error = yield d
        self.assertIsInstance(error, CompositeError)
        self.assertEqual(error.results[0]["number"], 1)
        [(engine_id, method, exc)] = error.elist
        self.assertEqual(engine_id, 1)
        self.assertIsInstance(exc, EngineError)
        self.assertIn("engine 1", str(exc))
        yield poll_ids(mec, [0])
        self.assertEqual((yield mec.pull("done")), [True])

    @inlineCallbacks
    def test_engine_waits_for_controller_and_reconnects(self):
        """An engine started first waits; after a --reuse-keys restart it comes back as itself."""
        cluster = Cluster(self, n=0)
        cluster.start_engine()
        yield sleep(0.3)
        self.assertIsNone(cluster.engines[0].poll())
        cluster.start_controller("--reuse-keys")
        mec = yield cluster.connect()
        yield cluster.wait_for_engines(mec, 1)
        yield mec.execute("kept = 'state'")
        furls = {p.name: p.read_bytes() for p in cluster.security.glob("*.furl")}
        mec.disconnect()
        from tests.cluster import stop_process

        stop_process(cluster.controller)
        cluster.start_controller("--reuse-keys")
        yield poll(
            lambda: all(p.exists() for p in (cluster.security / n for n in furls)), "key files"
        )
        mec = yield cluster.connect()
        yield cluster.wait_for_engines(mec, 1)
        self.assertEqual({p.name: p.read_bytes() for p in cluster.security.glob("*.furl")}, furls)
        self.assertEqual((yield mec.get_ids()), [0])
        self.assertEqual((yield mec.pull("kept")), ["state"])


@inlineCallbacks
def engine_process(cluster, mec, engine_id):
    """The Popen of the engine registered as ``engine_id`` (ids follow registration order)."""
    yield mec.execute("import os; pid = os.getpid()", targets=engine_id)
    [pid] = yield mec.pull("pid", targets=engine_id)
    [proc] = [p for p in cluster.engines if p.pid == pid]
    return proc


@inlineCallbacks
def poll_status(mec, predicate, targets=0):
    for _ in range(1500):
        status = yield mec.queue_status(targets=targets)
        if predicate(status):
            return status
        yield sleep(0.02)
    raise AssertionError(f"queue status never matched; last {status}")


@inlineCallbacks
def poll_ids(mec, expected):
    for _ in range(1500):
        ids = yield mec.get_ids()
        if ids == expected:
            return
        yield sleep(0.02)
    raise AssertionError(f"engine ids stayed {ids}, expected {expected}")
