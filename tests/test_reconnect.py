"""Clients across a controller restart, without processes: the pieces one by one.

- :class:`ControllerConnection`: a call in flight when the connection drops fails with
  ``ControllerRestarted``; the next call logs in again (time on a Clock);
- the Task client's batches: a batch lost with the connection is kept and sent again
  under the same ids, or failed;
- ids: what a client claims again, and the adapter's check that they were handed out.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.adapters.pb_task import TaskAdapter
from ipkernel.client.connection import ControllerConnection
from ipkernel.client.task_batches import TaskBatches
from ipkernel.client.task_ids import IdPool, as_ranges
from ipkernel.client.task_payloads import TaskPayloads
from ipkernel.controller.service import ControllerService
from ipkernel.errors import ControllerRestarted, ControllerUnreachable, StaleKeyFile
from ipkernel.interfaces.records import TASK_SUBMIT
from ipkernel.wire.errors import WireError


class FakeBroker:
    def __init__(self) -> None:
        self.disconnected = False
        self.transport = SimpleNamespace(getPeer=lambda: None, loseConnection=self.lose)

    def lose(self) -> None:
        self.disconnected = True


class FakeAvatar:
    """A logged-in avatar whose calls stay unanswered until the test answers them."""

    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.calls: list[tuple[str, tuple, Deferred]] = []

    def callRemote(self, method, *args):  # noqa: N802 - PB's name
        if self.broker.disconnected:
            raise pb.DeadReferenceError("dead")
        d: Deferred = Deferred()
        self.calls.append((method, args, d))
        return d

    def drop(self) -> None:
        """The connection is lost: calls in flight fail as PB makes them fail."""
        self.broker.disconnected = True
        calls, self.calls = self.calls, []
        for _, _, d in calls:
            d.errback(Failure(pb.PBConnectionLost("lost")))


class FakeRelogin:
    """Logs in again: fails ``failures`` times (controller not back yet), then succeeds."""

    def __init__(self, clock: Clock, failures: int = 0, error: Exception | None = None):
        self.reactor = clock
        self.failures = failures
        self.error = error or ControllerUnreachable("connection refused")
        self.avatars: list[FakeAvatar] = []

    def __call__(self) -> Deferred:
        if self.failures:
            self.failures -= 1
            return fail(self.error)
        avatar = FakeAvatar()
        self.avatars.append(avatar)
        return succeed(avatar)


class Reconnecting(ControllerConnection):
    reconnect_timeout = 5.0

    def __init__(self, avatar, relogin) -> None:
        super().__init__(avatar)
        self._relogin = relogin
        self.reconnected = 0

    def _reconnected(self):
        self.reconnected += 1


class ConnectionTests(SynchronousTestCase):
    def test_call_in_flight_at_the_loss_says_the_controller_restarted(self):
        """A call whose connection drops fails with ControllerRestarted, naming the
        method and saying that a call again works."""
        avatar = FakeAvatar()
        connection = ControllerConnection(avatar)
        d = connection._remote("get_ids")
        avatar.drop()
        error = self.failureResultOf(d, ControllerRestarted).value
        self.assertIn("get_ids", str(error))
        self.assertIn("call again", str(error).lower())
        self.assertIsInstance(error, ControllerUnreachable)

    def test_next_call_logs_in_again(self):
        """After the loss, the next call logs in again (retrying with back-off on a
        Clock until the controller is back), runs the subclass's hook, then goes to the
        new connection; concurrent calls share one login."""
        clock = Clock()
        relogin = FakeRelogin(clock, failures=3)
        old = FakeAvatar()
        connection = Reconnecting(old, relogin)
        old.drop()
        first, _ = connection._remote("a"), connection._remote("b")
        self.assertNoResult(first)
        clock.pump([0.05, 0.1, 0.2, 0.4])
        [avatar] = relogin.avatars
        self.assertEqual(connection.reconnected, 1)
        self.assertEqual([m for m, _, _ in avatar.calls], ["a", "b"])
        avatar.calls[0][2].callback("answer")
        self.assertEqual(self.successResultOf(first), "answer")

    def test_login_gives_up_after_the_timeout(self):
        """A controller not back within reconnect_timeout fails the call with
        ControllerUnreachable; with a timeout of 0 the first failed login does."""
        clock = Clock()
        old = FakeAvatar()
        connection = Reconnecting(old, FakeRelogin(clock, failures=1000))
        old.drop()
        d = connection._remote("a")
        clock.pump([0.5] * 20)
        error = self.failureResultOf(d, ControllerUnreachable).value
        self.assertNotIsInstance(error, ControllerRestarted)
        self.assertIn("logging in again failed", str(error))
        connection.reconnect_timeout = 0
        self.failureResultOf(connection._remote("a"), ControllerUnreachable)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_new_keys_are_a_stale_key_file(self):
        """A controller back with new keys (no --reuse-keys) fails the call at once
        with StaleKeyFile."""
        clock = Clock()
        old = FakeAvatar()
        connection = Reconnecting(old, FakeRelogin(clock, 1, StaleKeyFile("stale")))
        old.drop()
        self.failureResultOf(connection._remote("a"), StaleKeyFile)

    def test_disconnect_stops_waiting(self):
        """disconnect() while waiting for the controller ends the wait (no call left on
        the clock) with ControllerUnreachable."""
        clock = Clock()
        old = FakeAvatar()
        connection = Reconnecting(old, FakeRelogin(clock, failures=1000))
        old.drop()
        d = connection._remote("a")
        connection.disconnect()
        self.failureResultOf(d, ControllerUnreachable)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_a_key_file_there_is_no_login_again(self):
        """A connection not made from a key file cannot log in again: the next call
        fails with ControllerUnreachable, as before."""
        avatar = FakeAvatar()
        connection = ControllerConnection(avatar)
        avatar.drop()
        self.assertRaises(ControllerUnreachable, connection._remote, "a")
        self.failureResultOf(connection.reconnect(), ControllerUnreachable)


class FakeCalls:
    """``call_remote`` for TaskBatches: each call waits for the test's answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], Deferred]] = []
        self.rest: list[tuple] = []  # the arguments after the message, per call

    def __call__(self, method: str, message: list, *rest) -> Deferred:
        ids = [fields[0] for fields, _ in TASK_SUBMIT.unpack(message) if fields[0] != -1]
        d: Deferred = Deferred()
        self.calls.append((ids, d))
        self.rest.append(rest)
        return d


class LaterReactor:
    """Leaves the flush TaskBatches asks for to the test (or its next call)."""

    def callFromThread(self, f, *args):  # noqa: N802 - Twisted's name
        pass


def wire() -> list:
    return [[0, [b"body"], None]]


class LostBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls = FakeCalls()
        self.lost = 0
        self.batches = TaskBatches(self.calls, TaskPayloads("stream"), LaterReactor(), self.on_lost)

    def on_lost(self) -> None:
        self.lost += 1

    def test_lost_batch_is_sent_again_under_the_same_ids(self):
        """A batch lost with the connection is kept (acks and sync wait), reported once,
        and sent again under the same ids; a refusal of the copy as 'already in use'
        (the controller had committed it) counts as accepted."""
        acks = [Deferred(), Deferred()]
        self.batches.send(5, wire(), acks[0])
        self.batches.send(6, wire(), acks[1])
        synced = self.batches.sync()
        [(ids, d)] = self.calls.calls
        self.assertEqual(ids, [5, 6])
        d.errback(ControllerRestarted("lost"))
        self.assertEqual((self.lost, self.batches.lost_ids()), (1, [5, 6]))
        self.assertNoResult(acks[0])
        self.assertNoResult(synced)
        self.batches.resend_lost()
        [_, (ids, d)] = self.calls.calls
        self.assertEqual(ids, [5, 6])
        d.callback([[5, "ValueError", "task id 5 is already in use"]])
        self.successResultOf(acks[0])
        self.successResultOf(acks[1])
        self.successResultOf(synced)
        self.assertIsNone(self.batches.refusal([5, 6]))

    def test_a_batch_someone_waits_for_says_so(self):
        """A batch with a task whose acceptance is waited for (the asynchronous run())
        asks the controller to answer at once; a batch nobody waits for does not."""
        self.batches.send(1, wire())
        self.batches.flush()
        self.batches.send(2, wire(), Deferred())
        self.batches.flush()
        self.assertEqual(self.calls.rest, [(), (None, True)])

    def test_lost_batch_fails_if_the_controller_does_not_come_back(self):
        """fail_lost fails the lost tasks with the error given; later calls naming them
        get it."""
        ack: Deferred = Deferred()
        self.batches.send(9, wire(), ack)
        self.batches.flush()
        self.calls.calls[0][1].errback(ControllerRestarted("lost"))
        self.batches.fail_lost(ControllerUnreachable("gone"))
        self.failureResultOf(ack, ControllerUnreachable)
        self.failureResultOf(self.batches.refusal([9]), ControllerUnreachable)
        self.assertEqual(self.batches.lost_ids(), [])

    def test_first_send_refused_as_in_use_is_refused(self):
        """On a first send, 'already in use' is a refusal like any other."""
        ack: Deferred = Deferred()
        self.batches.send(3, wire(), ack)
        self.batches.flush()
        self.calls.calls[0][1].callback([[3, "ValueError", "task id 3 is already in use"]])
        self.failureResultOf(ack, ValueError)


class IdTests(SynchronousTestCase):
    def test_unused_ids_and_ranges(self):
        """The pool tells its unused ids, forgets them on drop(); ids merge into
        [first, count] runs."""
        pool = IdPool()
        pool.add(16, 8)
        pool.take()
        self.assertEqual(pool.unused(), range(17, 24))
        pool.drop()
        self.assertEqual(list(pool.unused()), [])
        self.assertEqual(as_ranges([7, 3, 4, 5, 9, 8, 20]), [[3, 3], [7, 3], [20, 1]])

    def test_adapter_takes_back_ids_handed_out_only(self):
        """reclaim_ids makes ids the store handed out (before a restart) this client's
        again, so tasks under them are accepted; ids never handed out are refused with
        ValueError, malformed ranges with TypeError."""
        tasks = ControllerService(clock=Clock()).tasks
        first = tasks.reserve_ids(10)  # by a client before the restart
        adapter = TaskAdapter(tasks)
        adapter.remote_reclaim_ids([[first + 2, 3]])
        message = TASK_SUBMIT.pack([((first + 3, 0), ([b"body"], None))])
        self.assertEqual(self.successResultOf(adapter.remote_run_tasks(message)), [])
        message = TASK_SUBMIT.pack([((first + 6, 0), ([b"body"], None))])
        [[_, type_name, _]] = self.successResultOf(adapter.remote_run_tasks(message))
        self.assertEqual(type_name, "ValueError")
        error = self.assertRaises(WireError, adapter.remote_reclaim_ids, [[first + 8, 5]])
        self.assertEqual(error.type_name, "ValueError")
        self.assertIn("--db", error.message)
        error = self.assertRaises(WireError, adapter.remote_reclaim_ids, [[1]])
        self.assertEqual(error.type_name, "TypeError")
