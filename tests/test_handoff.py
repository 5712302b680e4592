"""Tests for ipkernel.wire.handoff: calls run in the calling thread while the reactor waits,
hand-overs run when the reactor is about to wait, nothing is reordered or lost."""

from __future__ import annotations

import os
import signal
import threading

from twisted.internet.epollreactor import EPollReactor
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire.handoff import ReactorHandoff

#: How long a test waits for the reactor thread before it fails (it never sleeps).
WAIT = 10.0


class RunningHandoff(SynchronousTestCase):
    """A fresh epoll reactor run by a ReactorHandoff in a thread of its own."""

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.handoff = ReactorHandoff(self.reactor)
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self.thread = threading.Thread(target=self.handoff.run, daemon=True)
        self.thread.start()
        self.assertTrue(started.wait(WAIT))
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(WAIT)
        self.assertFalse(self.thread.is_alive())
        self.assertFalse(self.handoff.active)
        self.reactor.waker.connectionLost(None)
        self.reactor._poller.close()

    def in_reactor(self, fn) -> object:
        """Run ``fn`` in the reactor thread and wait for its result."""
        done = threading.Event()
        box: list = []
        self.reactor.callFromThread(lambda: (box.append(fn()), done.set()))
        self.assertTrue(done.wait(WAIT))
        return box[0]

    def settle(self) -> None:
        """Wait until the reactor thread has gone back to waiting for events."""
        self.in_reactor(lambda: None)
        self.assertTrue(self.handoff.lock.acquire(timeout=WAIT))
        self.handoff.lock.release()

    def test_runs_in_the_calling_thread_while_the_reactor_waits(self) -> None:
        """With the reactor waiting for events, a call runs at once in the caller's
        thread, holding the lock the reactor thread needs to run."""
        self.settle()
        seen = []
        self.handoff.call_from_thread(
            lambda: seen.append((threading.current_thread(), self.handoff.lock.locked()))
        )
        self.assertEqual(seen, [(threading.current_thread(), True)])

    def test_falls_back_while_the_reactor_runs(self) -> None:
        """While the reactor thread holds the lock, a call goes through callFromThread
        and runs in the reactor thread."""
        self.settle()
        entered, release = threading.Event(), threading.Event()
        self.reactor.callFromThread(lambda: (entered.set(), release.wait(WAIT)))
        self.assertTrue(entered.wait(WAIT))
        threads: list[threading.Thread] = []
        ran = threading.Event()
        self.handoff.call_from_thread(
            lambda: (threads.append(threading.current_thread()), ran.set())
        )
        release.set()
        self.assertTrue(ran.wait(WAIT))
        self.assertEqual(threads, [self.thread])

    def test_queued_calls_run_first(self) -> None:
        """Calls given to callFromThread earlier run before the call, in order."""
        self.settle()
        order: list[str] = []
        with self.handoff.lock:  # keep the reactor thread from taking them meanwhile
            self.reactor.callFromThread(order.append, "queued 1")
            self.reactor.callFromThread(order.append, "queued 2")
        self.handoff.call_from_thread(order.append, "direct")
        self.in_reactor(lambda: None)
        self.assertEqual(order[-3:], ["queued 1", "queued 2", "direct"])
        self.assertEqual(len(order), 3)

    def test_wakes_the_reactor_for_timed_calls(self) -> None:
        """A call that schedules a timed call wakes the reactor, which runs it (it was
        waiting with no timeout at all)."""
        self.settle()
        fired = threading.Event()
        self.handoff.call_from_thread(self.reactor.callLater, 0, fired.set)
        self.assertTrue(fired.wait(WAIT))

    def test_hand_overs_wait_until_the_reactor_blocks(self) -> None:
        """A hand-over made by reactor code runs after that code, before the reactor
        waits for events again; from a call run in another thread, before it returns."""
        order: list[str] = []

        def callback() -> None:
            self.handoff.before_block(lambda: order.append("hand-over"))
            order.append("callback done")

        self.in_reactor(callback)
        self.settle()
        self.assertEqual(order, ["callback done", "hand-over"])
        self.handoff.call_from_thread(callback)
        self.assertEqual(order[2:], ["callback done", "hand-over"])

    def test_sigint_held_until_the_call_is_done(self) -> None:
        """Ctrl-C arriving while the main thread runs reactor code raises
        KeyboardInterrupt only once that code has finished; the handler is restored."""
        self.settle()
        # Python's own handler, whatever the test runner installed (trial's workers
        # have theirs), so that the signal this test sends raises KeyboardInterrupt.
        handler = signal.default_int_handler
        self.addCleanup(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, handler))
        steps: list[str] = []

        def reactor_code() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # plenty of bytecodes for the handler to run
                pass
            steps.append("finished")

        self.assertRaises(KeyboardInterrupt, self.handoff.call_from_thread, reactor_code)
        self.assertEqual(steps, ["finished"])
        self.assertIs(signal.getsignal(signal.SIGINT), handler)


class _NoPollReactor:
    """A reactor without an epoll poller: callFromThread and run only."""

    def __init__(self) -> None:
        self.from_thread: list[tuple] = []

    def callFromThread(self, fn, *args) -> None:  # noqa: N802 - Twisted's name
        self.from_thread.append((fn, args))

    def run(self, installSignalHandlers: bool = True) -> None:  # noqa: N803
        pass


class InactiveHandoffTests(SynchronousTestCase):
    """Without an epoll poller (or before the reactor runs) nothing changes."""

    def test_falls_back_without_a_poller(self) -> None:
        """Calls go through callFromThread and hand-overs run at once."""
        reactor = _NoPollReactor()
        handoff = ReactorHandoff(reactor)
        handoff.run()
        self.assertFalse(handoff.active)
        self.assertFalse(handoff.lock.locked())
        handoff.call_from_thread(print, "x")
        self.assertEqual(reactor.from_thread, [(print, ("x",))])
        ran = []
        handoff.before_block(lambda: ran.append(True))
        self.assertEqual(ran, [True])
