"""Tests for ipkernel.wire.handoff: calls run in the calling thread while the reactor waits,
hand-overs run when the reactor is about to wait, nothing is reordered or lost."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from twisted.internet import main
from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire.handoff import ReactorHandoff

#: How long a test waits for the reactor thread before it fails (it never sleeps).
WAIT = 10.0


class _RunningReactor(SynchronousTestCase):
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


class RunningHandoffTests(_RunningReactor):
    """call_from_thread and before_block with the reactor running."""

    def test_runs_in_the_calling_thread_while_the_reactor_waits(self) -> None:
        """With the reactor waiting for events, a call runs at once in the caller's
        thread, holding the lock the reactor thread needs to run."""
        self.settle()
        seen = []
        self.handoff.call_from_thread(
            lambda: seen.append((threading.current_thread(), self.handoff.lock.locked()))
        )
        self.assertEqual(seen, [(threading.current_thread(), True)])

    def test_knows_reactor_code(self) -> None:
        """in_reactor_code() is true in the reactor thread and in a call run in its
        stead, false elsewhere."""
        self.settle()
        seen: list[bool] = []
        self.handoff.call_from_thread(lambda: seen.append(self.handoff.in_reactor_code()))
        self.assertEqual(seen, [True])
        self.assertFalse(self.handoff.in_reactor_code())
        self.assertTrue(self.in_reactor(self.handoff.in_reactor_code))

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

    def test_trusted_sigint_handler_left_in_place(self) -> None:
        """With the current SIGINT handler trusted (one that never raises there), reactor
        code run in the main thread leaves it in place; any other is swapped meanwhile."""
        self.settle()

        def handler(signum: int, frame: object) -> None:
            pass

        self.addCleanup(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, handler))
        seen: list[object] = []
        self.handoff.call_from_thread(lambda: seen.append(signal.getsignal(signal.SIGINT)))
        self.assertIsNot(seen[-1], handler)
        self.handoff.trust_sigint_handler(handler)
        self.addCleanup(self.handoff.trust_sigint_handler, None)
        self.handoff.call_from_thread(lambda: seen.append(signal.getsignal(signal.SIGINT)))
        self.assertIs(seen[-1], handler)


class _Reader:
    """One end of a socket pair, read by whichever thread the reactor code runs in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.reads: list[tuple[threading.Thread, bytes]] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "reader"

    def doRead(self) -> object:  # noqa: N802 - Twisted's name
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            # The reactor may still hold an event from before the connection was taken
            # (and given back): nothing to read, as for any transport.
            return None
        if not data:
            return main.CONNECTION_DONE
        self.reads.append((threading.current_thread(), data))
        return None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self.connected = False
        self.disconnected = True
        self.lost.append(reason)


class ServeUntilTests(_RunningReactor):
    """serve_until: a waiting thread reads its own connections."""

    def setUp(self) -> None:
        super().setUp()
        mine, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.addCleanup(mine.close)
        self.reader = _Reader(mine)
        self.in_reactor(lambda: self.reactor.addReader(self.reader))
        self.addCleanup(self.in_reactor, lambda: self.reactor.removeReader(self.reader))

    def test_answer_read_by_the_waiting_thread(self) -> None:
        """What arrives while a thread waits is read by that thread, which returns as
        soon as it is ready; the connection goes back to the reactor afterwards."""
        checks: list[bool] = []

        def ready() -> bool:
            # The first check runs before the connection is taken, holding the lock: the
            # answer sent then cannot be read by the reactor thread.
            if not checks:
                self.peer.send(b"answer")
            checks.append(True)
            return bool(self.reader.reads)

        self.assertTrue(self.handoff.serve_until(ready, [self.reader]))
        self.assertEqual(self.reader.reads, [(threading.current_thread(), b"answer")])
        self.assertIn(self.reader, self.in_reactor(self.reactor.getReaders))
        self.peer.send(b"later")
        self.settle()
        while len(self.reader.reads) < 2:
            self.in_reactor(lambda: None)
        self.assertEqual(self.reader.reads[1], (self.thread, b"later"))

    def test_transports_taken_after_first(self) -> None:
        """``transports`` is iterated once ``first`` has run, in the same turn: a lazy
        iterable may name the connections by what ``first`` started, and the answer
        sent during ``first`` is read by the waiting thread."""
        order: list[str] = []

        def first() -> None:
            order.append("first")
            self.peer.send(b"answer")

        def transports():
            order.append("transports")
            yield self.reader

        self.assertTrue(
            self.handoff.serve_until(lambda: bool(self.reader.reads), transports(), first)
        )
        self.assertEqual(order, ["first", "transports"])
        self.assertEqual(self.reader.reads, [(threading.current_thread(), b"answer")])

    def test_ready_through_a_hand_over(self) -> None:
        """A hand-over made by what was read (an engine queueing the command it
        received) runs before readiness is checked: the wait ends."""
        handed: list[bytes] = []
        read = self.reader.doRead

        def read_and_hand_over() -> object:
            result = read()
            self.handoff.before_block(lambda: handed.append(self.reader.reads[-1][1]))
            return result

        self.reader.doRead = read_and_hand_over  # type: ignore[method-assign]
        checks: list[bool] = []

        def ready() -> bool:
            if not checks:
                self.peer.send(b"command")
            checks.append(True)
            return bool(handed)

        self.assertTrue(self.handoff.serve_until(ready, [self.reader]))
        self.assertEqual(handed, [b"command"])

    def test_ready_from_the_reactor_thread(self) -> None:
        """Reactor code in the reactor thread that makes the waiter ready and calls
        notify() ends the wait."""
        done: list[bool] = []

        def finish() -> None:
            done.append(True)
            self.handoff.notify()

        self.reactor.callFromThread(finish)
        self.assertTrue(self.handoff.serve_until(lambda: bool(done), [self.reader]))

    def test_connection_ending_while_read(self) -> None:
        """A connection that ends while a thread reads it is closed as the reactor would
        close it; with nothing left to read, the wait returns False."""
        self.peer.close()
        self.assertFalse(self.handoff.serve_until(lambda: False, [self.reader]))
        self.assertEqual(len(self.reader.lost), 1)
        self.assertNotIn(self.reader, self.in_reactor(self.reactor.getReaders))

    def test_one_thread_serves_at_a_time(self) -> None:
        """While a thread serves, another one asking to is told to wait its own way."""
        done: list[bool] = []
        results: list[bool] = []
        serving = threading.Thread(
            target=lambda: results.append(
                self.handoff.serve_until(lambda: bool(done), [self.reader])
            )
        )
        serving.start()
        deadline = time.monotonic() + WAIT
        while self.handoff._server is None and time.monotonic() < deadline:
            time.sleep(0.001)
        self.assertFalse(self.handoff.serve_until(lambda: False, [self.reader]))
        self.reactor.callFromThread(lambda: (done.append(True), self.handoff.notify()))
        serving.join(WAIT)
        self.assertEqual(results, [True])

    def test_nothing_to_read(self) -> None:
        """A transport the reactor is not reading is not taken: False at once, unless
        the waiter is ready already."""
        self.in_reactor(lambda: self.reactor.removeReader(self.reader))
        self.assertFalse(self.handoff.serve_until(lambda: False, [self.reader]))
        self.assertTrue(self.handoff.serve_until(lambda: True, [self.reader]))

    def test_ctrl_c_gives_the_connection_back(self) -> None:
        """Ctrl-C once the connection has been taken raises KeyboardInterrupt and the
        reactor reads the connection again."""
        handler = signal.default_int_handler
        self.addCleanup(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, handler))

        def ready() -> bool:
            # Held back while the connection is being taken, raised once it has been.
            os.kill(os.getpid(), signal.SIGINT)
            return False

        self.assertRaises(KeyboardInterrupt, self.handoff.serve_until, ready, [self.reader])
        self.assertIn(self.reader, self.in_reactor(self.reactor.getReaders))


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
        self.assertFalse(handoff.serve_until(lambda: True, []))
