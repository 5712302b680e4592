"""Tests for ipkernel.wire.lazy_wake and its use by TaskBatches: work asked for from any
thread runs as reactor code after a delay unless done first, and asking wakes nobody."""

from __future__ import annotations

import select
import threading

from twisted.internet.defer import Deferred
from twisted.internet.epollreactor import EPollReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ipkernel.client.task_batches import TaskBatches
from ipkernel.client.task_payloads import TaskPayloads
from ipkernel.interfaces.records import TASK_SUBMIT
from ipkernel.wire import lazy_wake
from ipkernel.wire.lazy_wake import LazyWake

#: How long a test waits for a timer or a thread before it fails.
WAIT = 10.0
DELAY = 0.001


class FakeReactor:
    """Records readers and calls from threads, runs nothing."""

    def __init__(self) -> None:
        self.readers: list = []
        self.from_thread: list = []

    def addReader(self, reader) -> None:  # noqa: N802 - Twisted's name
        self.readers.append(reader)

    def removeReader(self, reader) -> None:  # noqa: N802 - Twisted's name
        self.readers.remove(reader)

    def callFromThread(self, f, *args) -> None:  # noqa: N802 - Twisted's name
        self.from_thread.append(f)


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def needs_timerfd() -> None:
    if lazy_wake._TIMERFD is None:
        raise SkipTest("no timerfd_create in this libc")


class LazyWakeTests(SynchronousTestCase):
    def make(self, fn) -> tuple[FakeReactor, LazyWake]:
        reactor = FakeReactor()
        wake = LazyWake(reactor, fn, DELAY)
        self.addCleanup(wake.close)
        return reactor, wake

    def test_armed_timer_runs_the_function_after_the_delay(self):
        """arm() asks nothing of the reactor at once; once the delay is over the timer
        is readable, and reading it runs the function."""
        needs_timerfd()
        calls = []
        reactor, wake = self.make(lambda: calls.append(1))
        self.assertEqual(reactor.readers, [wake])
        wake.arm()
        self.assertEqual(reactor.from_thread, [])
        self.assertTrue(readable(wake.fileno(), WAIT))
        wake.doRead()
        self.assertEqual(calls, [1])

    def test_disarmed_timer_stays_quiet(self):
        """disarm() before the delay is over: the timer never becomes readable, and a
        read the poller reported anyway runs nothing."""
        needs_timerfd()
        calls = []
        _, wake = self.make(lambda: calls.append(1))
        wake.arm()
        wake.disarm()
        self.assertFalse(readable(wake.fileno(), 20 * DELAY))
        wake.doRead()
        self.assertEqual(calls, [])

    def test_arm_again_only_after_disarm(self):
        """A second arm() while armed changes nothing; after disarm() it arms again."""
        needs_timerfd()
        calls = []
        _, wake = self.make(lambda: calls.append(1))
        wake.arm()
        wake.arm()
        self.assertTrue(readable(wake.fileno(), WAIT))
        wake.doRead()
        wake.disarm()
        wake.arm()
        self.assertTrue(readable(wake.fileno(), WAIT))
        wake.doRead()
        self.assertEqual(calls, [1, 1])

    def test_without_a_poller_arm_is_call_from_thread(self):
        """A reactor that takes no readers (a fake, another event loop's): arm() hands
        the function to callFromThread at once."""

        class CallsOnly:
            def __init__(self) -> None:
                self.from_thread: list = []

            def callFromThread(self, f, *args) -> None:  # noqa: N802 - Twisted's name
                self.from_thread.append(f)

        reactor = CallsOnly()

        def fn() -> None:
            pass

        wake = LazyWake(reactor, fn, DELAY)
        wake.arm()
        wake.disarm()
        wake.close()
        self.assertEqual(reactor.from_thread, [fn])

    def test_close_takes_the_timer_out_of_the_reactor(self):
        """close() removes the reader and closes its descriptor."""
        needs_timerfd()
        reactor, wake = self.make(lambda: None)
        wake.close()
        self.assertEqual((reactor.readers, wake.fileno()), ([], -1))


class InReactorTests(SynchronousTestCase):
    def test_function_runs_in_the_reactor_thread(self):
        """Armed from another thread, the function runs in the reactor's thread once the
        delay is over, with no call from a thread queued."""
        needs_timerfd()
        reactor = EPollReactor()
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        thread.start()
        self.assertTrue(started.wait(WAIT))
        ran = threading.Event()
        where = []
        made = []
        ready = threading.Event()

        def make() -> None:  # reactor code: it adds a reader
            fn = lambda: (where.append(threading.current_thread()), ran.set())  # noqa: E731
            made.append(LazyWake(reactor, fn, DELAY))
            ready.set()

        reactor.callFromThread(make)
        self.assertTrue(ready.wait(WAIT))
        [wake] = made
        try:
            wake.arm()
            self.assertEqual(reactor.threadCallQueue, [])
            self.assertTrue(ran.wait(WAIT))
            self.assertEqual(where, [thread])
        finally:
            done = threading.Event()
            reactor.callFromThread(lambda: (wake.close(), done.set()))
            self.assertTrue(done.wait(WAIT))
            reactor.callFromThread(reactor.stop)
            thread.join(WAIT)


class SendWithinTests(SynchronousTestCase):
    def setUp(self) -> None:
        needs_timerfd()
        self.sent: list[list[int]] = []
        self.answers: list[Deferred] = []
        self.ran_now: list = []
        self.reactor = FakeReactor()
        self.batches = TaskBatches(self.call, TaskPayloads("stream"), self.reactor)
        self.batches.send_within(DELAY, self.run_now)
        self.addCleanup(self.batches.close)
        [self.timer] = self.reactor.readers

    def call(self, method: str, message: list, *rest) -> Deferred:
        self.sent.append([fields[0] for fields, _ in TASK_SUBMIT.unpack(message)])
        d: Deferred = Deferred()
        self.answers.append(d)
        return d

    def run_now(self, fn) -> None:
        self.ran_now.append(fn)
        fn()

    def test_task_with_nothing_on_its_way_leaves_at_once(self):
        """A task queued while no batch is unanswered is sent at once through run_now,
        with no call from a thread and no timer."""
        self.batches.send(1, [[0, [b"body"], None]])
        self.assertEqual((self.ran_now, self.sent), ([self.batches.flush], [[1]]))
        self.assertEqual(self.reactor.from_thread, [])
        self.assertFalse(readable(self.timer.fileno(), 20 * DELAY))

    def test_tasks_behind_a_batch_leave_with_the_next_call(self):
        """Tasks queued while a batch is unanswered wait, waking nobody, and leave
        together with the next call to the controller, which disarms the timer."""
        self.batches.send(1, [[0, [b"body"], None]])
        self.batches.send(2, [[0, [b"body"], None]])
        self.batches.send(3, [[0, [b"body"], None]])
        self.assertEqual((len(self.ran_now), self.reactor.from_thread), (1, []))
        self.batches.after_sent(lambda: Deferred())
        self.assertEqual(self.sent, [[1], [2, 3]])
        self.assertFalse(readable(self.timer.fileno(), 20 * DELAY))

    def test_tasks_behind_a_batch_leave_when_the_timer_fires(self):
        """With no call after them, tasks queued behind a batch leave once the timer
        fires; once every batch is answered, the next task leaves at once again."""
        self.batches.send(1, [[0, [b"body"], None]])
        self.batches.send(2, [[0, [b"body"], None]])
        self.assertTrue(readable(self.timer.fileno(), WAIT))
        self.timer.doRead()
        self.assertEqual(self.sent, [[1], [2]])
        for d in self.answers:
            d.callback([])
        self.batches.send(3, [[0, [b"body"], None]])
        self.assertEqual((self.sent[-1], len(self.ran_now)), ([3], 2))

    def test_close_goes_back_to_the_next_reactor_turn(self):
        """After close() the timer is gone and a queued task asks for a reactor turn."""
        self.batches.close()
        self.assertEqual(self.reactor.readers, [])
        self.batches.send(4, [[0, [b"body"], None]])
        self.assertEqual(self.reactor.from_thread, [self.batches.flush])
