"""What users see of the clients: a TaskResult's values by key, ``NoEnginesRegistered``
from the calls that split work by engine, the clients' ``repr()``, and the blocking
Task client's forwarding.

Most tests run in one process: the asynchronous clients over in-memory PB
(:class:`tests.test_inmemory.Grid`, :class:`tests.test_tasks_core.Grid`) and the blocking
``TaskClient`` over a fake bridge; one test runs the blocking clients against a real
cluster.
"""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks, maybeDeferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client import progress
from ipkernel.client.connection import ControllerConnection, describe
from ipkernel.client.results import PendingResult
from ipkernel.client.task_blocking import TaskClient
from ipkernel.client.task_types import StringTask, TaskResult, task_to_wire
from ipkernel.engine.core import EngineCore
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.errors import NoEnginesRegistered
from ipkernel.security import read_key_file
from tests.cluster import Cluster
from tests.test_inmemory import Grid as MultiEngineGrid
from tests.test_tasks_core import Grid as TaskGrid


class TaskResultItemTests(SynchronousTestCase):
    def test_values_by_key_as_by_attribute(self):
        """``tr['a']`` is ``tr.ns.a`` and ``tr.results['a']``; ``in`` says what was pulled."""
        tr = TaskResult(3, results={"a": 73, "b": [1]})
        self.assertEqual((tr["a"], tr["b"]), (tr.ns.a, tr.results["b"]))
        self.assertIn("a", tr)
        self.assertNotIn("c", tr)

    def test_missing_key_names_it_and_the_pulled_names(self):
        """A name the task did not pull raises KeyError naming it and the names there are."""
        tr = TaskResult(3, results={"a": 1, "b": 2})
        error = self.assertRaises(KeyError, lambda: tr["c"])
        self.assertEqual(str(error), "\"'c' is not a name task 3 pulled (its names: 'a', 'b')\"")
        error = self.assertRaises(KeyError, lambda: TaskResult(4)["a"])
        self.assertIn("its names: none", str(error))

    def test_failed_task_raises_its_failure(self):
        """Reading a value of a failed task, or asking whether it has one, raises the
        task's failure, as ``tr.ns`` and ``tr.results`` do."""
        tr = TaskResult(5, failure=ZeroDivisionError("division by zero"))
        for reader in (lambda: tr["a"], lambda: "a" in tr, lambda: tr.ns, lambda: tr.results):
            self.assertRaises(ZeroDivisionError, reader)

    def test_not_iterable(self):
        """Item access does not make a TaskResult a sequence: iter() refuses it."""
        self.assertRaises(TypeError, iter, TaskResult(1, results={"a": 1}))

    def test_item_access_through_the_task_interface(self):
        """A result fetched from the controller gives its pulled values by key."""
        grid = TaskGrid(self, n=1)
        tc = grid.client
        tid = grid.result(tc.run(StringTask("a = id + 1\nb = 'x'", pull=["a", "b"])))
        tr = grid.result(tc.get_task_result(tid, block=True))
        self.assertEqual((tr["a"], tr["b"]), (1, "x"))
        failed = grid.result(tc.run(StringTask("1/0", pull="a")))
        tr = grid.result(tc.get_task_result(failed, block=True))
        self.assertRaises(ZeroDivisionError, lambda: tr["a"])


class NoEnginesTests(SynchronousTestCase):
    def test_split_calls_raise_the_controllers_error(self):
        """With no engine registered, scatter, map and gather fail with
        NoEnginesRegistered and the controller's message, not a ValueError."""
        grid = MultiEngineGrid(self, n=0)
        mec = grid.client()
        # The controller's own message, from a call it resolves itself.
        expected = str(grid.failure(mec.execute("a = 1"), NoEnginesRegistered).value)
        self.assertIn("ipengine", expected)
        for call in (
            lambda: mec.scatter("x", range(10)),
            lambda: mec.map(abs, range(10)),
            lambda: mec.gather("x"),
            lambda: mec.scatter("x", range(10), targets=[0]),
        ):
            failure = grid.failure(call(), NoEnginesRegistered)
            self.assertEqual(str(failure.value), expected)

    def test_split_calls_work_once_an_engine_registers(self):
        """The same client scatters and maps as soon as an engine is there."""
        grid = MultiEngineGrid(self, n=0)
        mec = grid.client()
        grid.failure(mec.map(abs, [-1]), NoEnginesRegistered)
        grid.service.register_engine(EngineCore(Interpreter(), Properties()))
        grid.result(mec.scatter("x", [1, 2]))
        self.assertEqual(grid.result(mec.map(abs, [-1, -2])), [1, 2])

    def test_task_map_waits_for_engines(self):
        """The Task client's map with no engine registered queues its chunks, as any
        task waits for an engine; it finishes once one registers."""
        grid = TaskGrid(self, n=0)
        d = grid.client.map(abs, [-1, -2, -3])
        grid.settle()
        self.assertNoResult(d)
        grid.service.register_engine(EngineCore(Interpreter(), Properties()))
        self.assertEqual(grid.result(d), [1, 2, 3])


def _avatar(peer: object, disconnected: bool = False) -> SimpleNamespace:
    """A stand-in for a logged-in avatar whose connection's peer is ``peer``."""
    transport = SimpleNamespace(getPeer=lambda: peer, loseConnection=lambda: None)
    return SimpleNamespace(broker=SimpleNamespace(transport=transport, disconnected=disconnected))


class ReprTests(SynchronousTestCase):
    def test_describe(self):
        """The text names the controller, the engines last seen and the settings."""
        connection = ControllerConnection(_avatar(IPv4Address("TCP", "127.0.0.1", 40123)))
        connection.last_engine_count = 4
        self.assertEqual(
            describe("MultiEngineClient", connection, targets="all", block=True),
            "<MultiEngineClient 127.0.0.1:40123, 4 engines, targets='all', block=True>",
        )
        connection.last_engine_count = 1
        self.assertEqual(repr(connection), "<ControllerConnection 127.0.0.1:40123, 1 engine>")
        connection.last_engine_count = None
        self.assertEqual(
            repr(connection), "<ControllerConnection 127.0.0.1:40123, engines unknown>"
        )
        connection.disconnect()
        self.assertEqual(repr(connection), "<ControllerConnection 127.0.0.1:40123, closed>")

    def test_ipv6_and_lost_connection(self):
        """An IPv6 address is bracketed; a connection the other side ended says so."""
        connection = ControllerConnection(_avatar(IPv6Address("TCP", "::1", 9), True))
        self.assertEqual(repr(connection), "<ControllerConnection [::1]:9, disconnected>")

    def test_async_multiengine_client(self):
        """The asynchronous MultiEngine client counts the engines of its calls on
        ``'all'`` (no call of its own), 0 after NoEnginesRegistered, and says closed."""
        grid = MultiEngineGrid(self, n=3)
        mec = grid.client()
        self.assertEqual(repr(mec), "<AsyncMultiEngineClient address unknown, engines unknown>")
        grid.result(mec.execute("a = 1", targets=[0]))
        self.assertIn("engines unknown", repr(mec))
        grid.result(mec.execute("a = 1"))
        self.assertEqual(repr(mec), "<AsyncMultiEngineClient address unknown, 3 engines>")
        grid.result(mec.scatter("x", range(4)))
        self.assertIn(", 3 engines>", repr(mec))
        mec.disconnect()
        self.assertEqual(repr(mec), "<AsyncMultiEngineClient address unknown, closed>")
        empty = MultiEngineGrid(self, n=0)
        mec = empty.client()
        empty.failure(mec.gather("x"), NoEnginesRegistered)
        self.assertIn(", 0 engines>", repr(mec))

    def test_async_task_client(self):
        """The asynchronous Task client shows the engine count its last map saw."""
        grid = TaskGrid(self, n=2)
        tc = grid.client
        self.assertEqual(repr(tc), "<AsyncTaskClient address unknown, engines unknown>")
        grid.result(tc.map(abs, [-1, 2]))
        self.assertEqual(repr(tc), "<AsyncTaskClient address unknown, 2 engines>")


class _Bridge:
    """Runs each call at once in this thread, as the reactor thread would; counts them."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.testcase = testcase
        self.calls: list[str] = []

    def call(self, fn, *args, **kwargs):
        self.calls.append(fn.__name__)
        return self.testcase.successResultOf(maybeDeferred(fn, *args, **kwargs))

    def submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        self.calls.append(fn.__name__)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(self.call(fn, *args, **kwargs))
        return future


class _AsyncTasks:
    """The asynchronous Task client's methods the blocking one uses, recording calls."""

    def __init__(self, reserved: list[int]) -> None:
        self.reserved = reserved
        self.sent: list[tuple[int, list]] = []
        self.maps: list[tuple] = []
        self.closed = False

    def take_id(self) -> int | None:
        return self.reserved.pop(0) if self.reserved else None

    def next_id(self):
        return succeed(100)

    def send(self, taskid: int, wire: list) -> None:
        self.sent.append((taskid, wire))

    def map(self, func, seq, chunksize=None, retries=1):
        self.maps.append((chunksize, retries))
        return succeed([func(x) for x in seq])

    def close(self):
        self.closed = True
        return succeed(None)


class BlockingTaskClientTests(SynchronousTestCase):
    def _client(self, reserved: list[int]) -> tuple[TaskClient, _Bridge]:
        """A TaskClient over a fake bridge and asynchronous client (no connection)."""
        tc = TaskClient.__new__(TaskClient)
        # The fake bridge only runs calls: no progress bar, even when stderr is a terminal.
        self.patch(progress, "wanted", lambda show=True: False)
        bridge = _Bridge(self)
        tc._bridge, tc._async, tc.block, tc._pending = bridge, _AsyncTasks(reserved), True, set()
        tc._atexit = lambda: None
        return tc, bridge

    def test_run_takes_a_reserved_id_without_the_reactor(self):
        """run names the task by an id reserved ahead, with no call into the reactor
        thread; with none left it asks for one there."""
        tc, bridge = self._client([7])
        task = StringTask("a = 1")
        self.assertEqual(tc.run(task), 7)
        self.assertEqual(bridge.calls, [])
        self.assertEqual(tc.run(task), 100)
        self.assertEqual(bridge.calls, ["next_id"])
        self.assertEqual(tc._async.sent, [(7, task_to_wire(task)), (100, task_to_wire(task))])

    def test_map_block_default_and_override(self):
        """map blocks by the client's ``block`` unless the call says otherwise; a
        non-blocking map returns a PendingResult; mapper and parallel pass their settings."""
        tc, _ = self._client([])
        self.assertEqual(tc.map(abs, [-1]), [1])
        pending = tc.map(abs, [-2], block=False)
        self.assertIsInstance(pending, PendingResult)
        self.assertEqual(pending.get_result(), [2])
        tc.block = False
        self.assertIsInstance(tc.map(abs, [-3]), PendingResult)
        self.assertEqual(tc.mapper(chunksize=2, retries=0, block=True).map(abs, [-4]), [4])
        self.assertEqual(tc.parallel(block=True)(abs)([-5]), [5])
        self.assertEqual(tc._async.maps[-2:], [(2, 0), (None, 1)])

    def test_close_closes_the_asynchronous_client(self):
        """close waits for the asynchronous client's close."""
        tc, bridge = self._client([])
        tc.close()
        self.assertTrue(tc._async.closed)
        self.assertEqual(bridge.calls, ["close"])


SCRIPT_NO_ENGINES = r"""
from ipkernel import client
mec = client.MultiEngineClient()
tc = client.TaskClient()
head, tail = 'MultiEngineClient ' + {where!r}, "targets='all', block=True"
assert repr(mec) == f'<{{head}}, engines unknown, {{tail}}>', repr(mec)
try:
    mec.execute('a = 1')
except client.NoEnginesRegistered as exc:
    expected = str(exc)
else:
    raise AssertionError('execute with no engines did not fail')
calls = {{
    'scatter': lambda: mec.scatter('x', range(10)),
    'map': lambda: mec.map(abs, range(10)),
    'gather': lambda: mec.gather('x'),
    'mapper': lambda: mec.mapper().map(abs, range(10)),
    'parallel': lambda: mec.parallel()(abs)(range(10)),
    'scatter, block=False': lambda: mec.scatter('x', range(10), block=False).r,
}}
for name, call in calls.items():
    try:
        call()
    except client.NoEnginesRegistered as exc:
        assert str(exc) == expected, (name, str(exc))
    else:
        raise AssertionError(f'{{name}} with no engines did not fail')
assert repr(mec) == f'<{{head}}, 0 engines, {{tail}}>', repr(mec)
print(tc.run(client.Task("a = 'late'", pull='a')))
assert repr(tc).startswith('<TaskClient 127.0.0.1:') and repr(tc).endswith(
    ', engines unknown, block=True>'), repr(tc)
tc.close()
mec.close()
assert repr(tc).endswith(', closed, block=True>'), repr(tc)
assert repr(mec) == f'<{{head}}, closed, {{tail}}>', repr(mec)
"""

SCRIPT_ONE_ENGINE = r"""
from ipkernel import client
tc = client.TaskClient()
tr = tc.get_task_result({tid}, block=True)
assert tr['a'] == tr.ns.a == tr.results['a'] == 'late'
assert 'a' in tr and 'b' not in tr
try:
    tr['b']
except KeyError as exc:
    assert "'b'" in str(exc) and "'a'" in str(exc), str(exc)
else:
    raise AssertionError('tr[missing] did not raise KeyError')
failed = tc.get_task_result(tc.run(client.Task('1/0', pull='a')), block=True)
try:
    failed['a']
except ZeroDivisionError:
    pass
else:
    raise AssertionError('a failed task gave a value')
assert tc.map(abs, [-1, -2]) == [1, 2]
assert repr(tc).endswith(', 1 engine, block=True>'), repr(tc)
mec = client.MultiEngineClient()
mec.targets = [0]
mec.block = False
mec.get_ids()
assert repr(mec).endswith(', 1 engine, targets=[0], block=False>'), repr(mec)
print('ONE OK')
"""


class ClusterTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_blocking_clients_without_and_with_engines(self):
        """Through real processes: with no engine, every splitting call of the blocking
        MultiEngine client raises the controller's NoEnginesRegistered, the clients' reprs
        name the controller, the engines seen and closed; a task queued then runs once an
        engine registers, and its result gives its values by key."""
        cluster = Cluster(self, n=0)
        mec = yield cluster.start()
        key = read_key_file(cluster.mec_furl)
        self.assertEqual(key.host, "127.0.0.1")
        result = cluster.run_script(SCRIPT_NO_ENGINES.format(where=f"{key.host}:{key.port}"))
        tid = int(result.stdout.strip())
        cluster.start_engine()
        yield cluster.wait_for_engines(mec, 1)
        result = cluster.run_script(SCRIPT_ONE_ENGINE.format(tid=tid))
        self.assertIn("ONE OK", result.stdout)
