"""Interrupting work: ``mec.interrupt()``, and Ctrl-C during a blocking MultiEngine call.

From the controller's refusal of task aborts through MultiEngine, the engine's executor
(one ``KeyboardInterrupt`` per command, never in the wrong one), down to real clusters:
an interrupted engine keeps its namespace and its queue.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.adapters.pb_multiengine import MultiEngineAdapter
from ipkernel.client.interrupts import interrupt_engines, interrupting
from ipkernel.engine.executor import MainThreadExecutor
from ipkernel.errors import CompositeError, ControllerUnreachable, InvalidEngineID
from ipkernel.wire.errors import WireError
from tests.cluster import Cluster, poll
from tests.test_controller import ServiceMixin
from tests.test_inmemory import Grid


class ControllerInterruptTests(ServiceMixin, SynchronousTestCase):
    def test_interrupt_reaches_busy_targets_without_arguments(self):
        """interrupt(targets) goes past the queues to each target, with no task id."""
        me = self.make(2)
        me.call("all", "execute", ["while True: pass"])
        d = me.interrupt([1, 0])
        self.assertEqual(self.engines[0].calls[-1], ("interrupt", []))
        self.assertEqual(self.engines[1].calls[-1], ("interrupt", []))
        self.engines[0].waiting.pop(1).callback(("ok", [b"n"]))
        self.engines[1].waiting.pop(1).callback(("ok", [b"n"]))
        self.assertEqual(self.successResultOf(d), [(1, ("ok", [b"n"])), (0, ("ok", [b"n"]))])

    def test_clients_cannot_abort_tasks_through_call(self):
        """A MultiEngine client cannot send ``interrupt`` (with a task id or without)
        through call or call_each: only its own interrupt(targets), which takes none."""
        me = self.make(1)
        adapter = MultiEngineAdapter(me)
        for args in ([7], []):
            error = self.assertRaises(WireError, adapter.remote_call, 0, "interrupt", args)
            self.assertIn("unknown command 'interrupt'", str(error))
            error = self.assertRaises(WireError, adapter.remote_call_each, 0, "interrupt", [args])
            self.assertIn("unknown command 'interrupt'", str(error))
        self.assertEqual(self.engines[0].calls, [])
        adapter.remote_interrupt(0)
        self.assertEqual(self.engines[0].calls, [("interrupt", [])])

    def test_interrupt_checks_targets(self):
        """A bad targets value or an unknown id is refused before any engine is told."""
        me = self.make(1)
        adapter = MultiEngineAdapter(me)
        self.assertRaises(WireError, adapter.remote_interrupt, "some")
        self.failureResultOf(me.interrupt([0, 4]), InvalidEngineID)
        self.assertEqual(self.engines[0].calls, [])


class InMemoryInterruptTests(SynchronousTestCase):
    def test_async_client_interrupt_crosses_pb(self):
        """AsyncMultiEngineClient.interrupt crosses the adapter; idle engines are left
        alone and it fires with one None per target."""
        grid = Grid(self, n=2)
        mec = grid.client()
        self.assertEqual(grid.result(mec.interrupt()), [None, None])
        self.assertEqual(grid.result(mec.interrupt(targets=[1])), [None])
        grid.failure(mec.interrupt(targets=[5]), InvalidEngineID)
        self.assertRaises(ValueError, mec.interrupt, targets="some")


class _Reactor:
    """Enough of a reactor for the executor: answers are delivered at once."""

    def callFromThread(self, f, *args):  # noqa: N802 - Twisted's name
        f(*args)


class ExecutorTests(TestCase):
    """MainThreadExecutor run in trial's main thread, jobs queued beforehand."""

    def run_jobs(self, *jobs):
        """Run ``jobs`` (callables taking the executor) in order; return their outcomes."""
        executor = MainThreadExecutor(_Reactor())
        outcomes: list = []
        for job in jobs:
            d = executor(job, executor)
            d.addCallbacks(outcomes.append, lambda f: outcomes.append(f.type))
        executor.stop()
        executor.run()
        return outcomes

    def test_interrupt_raises_in_the_running_job(self):
        """interrupt() raises KeyboardInterrupt in the running job; the next job runs."""

        def sleeper(executor):
            executor.interrupt()
            time.sleep(10)

        start = time.monotonic()
        outcomes = self.run_jobs(sleeper, lambda executor: "next")
        self.assertEqual(outcomes, [KeyboardInterrupt, "next"])
        self.assertLess(time.monotonic() - start, 5)

    def test_one_interrupt_per_job(self):
        """A job that caught its KeyboardInterrupt is not interrupted again, so a second
        interrupt can never land while the engine reports the first."""

        def stubborn(executor):
            try:
                executor.interrupt()
                time.sleep(10)
            except KeyboardInterrupt:
                executor.interrupt()
                time.sleep(0.05)
                return "ran on"
            return "not interrupted"

        self.assertEqual(self.run_jobs(stubborn), ["ran on"])

    def test_interrupt_when_idle_does_nothing(self):
        """interrupt() with no job running sends nothing: the executor keeps serving."""
        executor = MainThreadExecutor(_Reactor())
        executor.interrupt()
        outcomes: list = []
        executor(lambda: "served").addCallback(outcomes.append)
        executor.stop()
        executor.run()
        self.assertEqual(outcomes, ["served"])

    def test_signal_taken_by_the_jobs_own_handler(self):
        """A job with a SIGINT handler of its own takes the interrupt's signal; later
        interrupts still work."""
        seen: list = []

        def own_handler(executor):
            previous = signal.signal(signal.SIGINT, lambda *a: seen.append("own"))
            try:
                executor.interrupt()
                time.sleep(0.05)
            finally:
                signal.signal(signal.SIGINT, previous)
            return "done"

        def sleeper(executor):
            executor.interrupt()
            time.sleep(10)

        self.assertEqual(self.run_jobs(own_handler, sleeper), ["done", KeyboardInterrupt])
        self.assertEqual(seen, ["own"])


class _Client:
    """A synchronous client whose blocking execute is interrupted by Ctrl-C."""

    def __init__(self):
        self.targets = "all"
        self.block = True
        self.interrupts: list = []
        self.answer: object = None

    def execute(self, code, targets=None, block=None):
        raise KeyboardInterrupt

    def interrupt(self, targets=None, block=None):
        self.interrupts.append((targets, block))
        if isinstance(self.answer, Exception):
            raise self.answer
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.answer is not None:
            future.set_result(self.answer)
        return type("Pending", (), {"future": future})()


class CtrlCTests(SynchronousTestCase):
    def client(self):
        return interrupting("execute")(type("C", (_Client,), {}))()

    def test_ctrl_c_interrupts_the_call_targets(self):
        """Ctrl-C in a blocking call interrupts the call's targets (the client's
        ``targets`` when the call names none), then propagates."""
        client = self.client()
        client.answer = [None]
        self.assertRaises(KeyboardInterrupt, client.execute, "x", targets=[1])
        client.targets = [0, 2]
        self.assertRaises(KeyboardInterrupt, client.execute, "x")
        self.assertEqual(client.interrupts, [([1], False), ([0, 2], False)])

    def test_non_blocking_calls_are_left_alone(self):
        """A non-blocking call started nothing that Ctrl-C could be meant for."""
        client = self.client()
        self.assertRaises(KeyboardInterrupt, client.execute, "x", block=False)
        client.block = False
        self.assertRaises(KeyboardInterrupt, client.execute, "x")
        self.assertEqual(client.interrupts, [])

    def test_interrupt_engines_never_raises(self):
        """Sending the interrupt fails quietly (False) when the controller is gone or the
        engines do not answer in time; KeyboardInterrupt is what the user sees."""
        client = _Client()
        client.answer = ControllerUnreachable("gone")
        self.assertFalse(interrupt_engines(client, "all"))
        client.answer = None  # never answered
        self.assertFalse(interrupt_engines(client, "all", wait=0.01))
        client.answer = [None]
        self.assertTrue(interrupt_engines(client, "all"))


def _marker_code(directory, name: str) -> str:
    """Code that creates ``<directory>/<name>-<engine id>`` and then sleeps a minute."""
    path = str(directory / name)
    return f"open({path!r} + '-' + str(id), 'w').close(); time.sleep(60)"


class ClusterInterruptTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_interrupt_running_code(self):
        """mec.interrupt raises KeyboardInterrupt in the running code at once; queued
        work still runs, the engine keeps its namespace, other engines are untouched."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        yield mec.execute("import time; a = 5")
        running = mec.execute(_marker_code(cluster.dir, "sleeping"), targets=[0])
        queued = mec.execute("b = a + 1", targets=[0])
        yield poll((cluster.dir / "sleeping-0").exists, "the sleep to start")
        start = time.monotonic()
        self.assertEqual((yield mec.interrupt(targets=0)), [None])
        error = yield self.assertFailure(running, CompositeError)
        [(engine_id, method, exc)] = error.elist
        self.assertEqual((engine_id, method), (0, "execute"))
        self.assertIsInstance(exc, KeyboardInterrupt)
        self.assertIn("time.sleep(60)", exc.remote_traceback)
        yield queued
        self.assertLess(time.monotonic() - start, 10)
        results = yield mec.execute("a, b", targets=[0])
        self.assertEqual(results[0]["stdout"], "(5, 6)\n")
        self.assertEqual((yield mec.pull("a")), [5, 5])
        self.assertEqual((yield mec.get_ids()), [0, 1])

    @inlineCallbacks
    def test_interrupts_at_any_moment_keep_engines_serving(self):
        """Interrupts sent at all moments around short commands (idle, starting, just
        finishing, two at once) never stop or disconnect an engine, and every command is
        answered: done or interrupted."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        yield mec.execute("a = 'kept'")
        pending = []
        for i in range(120):
            d = mec.execute(f"for _ in range({(i * 7919) % 400000}): pass")
            pending.append(d.addErrback(lambda f: f.trap(CompositeError)))
            mec.interrupt()
            if i % 3 == 0:
                yield mec.interrupt()
        for d in pending:
            yield d
        self.assertEqual((yield mec.get_ids()), [0, 1])
        self.assertEqual((yield mec.pull("a")), ["kept", "kept"])
        for proc in cluster.engines:
            self.assertIsNone(proc.poll())

    @inlineCallbacks
    def test_ctrl_c_in_blocking_call_interrupts_engines(self):
        """KeyboardInterrupt in the main thread during a blocking execute (as Ctrl-C
        gives) raises in the client at once and interrupts the code on the engines,
        which keep their namespaces."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        marker = str(cluster.dir / "asleep")
        result = cluster.run_script(
            f"""
            import os, signal, threading, time
            from ipkernel import client
            mec = client.MultiEngineClient()
            mec.execute('import time; a = 5')
            main = threading.main_thread().ident

            def interrupt_when_asleep():
                while not all(os.path.exists({marker!r} + '-' + str(i)) for i in (0, 1)):
                    time.sleep(0.01)
                signal.pthread_kill(main, signal.SIGINT)

            threading.Thread(target=interrupt_when_asleep, daemon=True).start()
            start = time.monotonic()
            try:
                mec.execute("open({marker!r} + '-' + str(id), 'w').close(); time.sleep(60)")
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError('no KeyboardInterrupt')
            # Not queued behind a minute of sleep: the engines were interrupted.
            r = mec.execute('print(a)')
            assert time.monotonic() - start < 20, time.monotonic() - start
            assert [x['stdout'] for x in r] == ['5\\n', '5\\n'], r
            last = mec.get_result(r[0]['number'] - 1)
            assert all('KeyboardInterrupt' in x['error'] for x in last), last
            print('CTRL-C OK')
            """
        )
        self.assertIn("CTRL-C OK", result.stdout)
