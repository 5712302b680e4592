"""Awaiting client results in asyncio (``await pr``, ``await tc.result(tid)``).

The unit tests complete plain futures from another thread, as the reactor thread does;
the integration test runs ``asyncio.run`` in a child Python against a real cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client.awaiting import awaitable
from ipkernel.client.results import PendingResult
from tests.cluster import Cluster


def _complete_later(future: concurrent.futures.Future, value=None, error=None) -> threading.Thread:
    """Complete ``future`` from another thread once the test's loop is waiting."""

    def run() -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    thread = threading.Timer(0.05, run)
    thread.start()
    return thread


class AwaitableTests(SynchronousTestCase):
    def test_await_pending_result_from_another_thread(self):
        """``await pr`` gives the result that another thread sets, while the loop runs
        other coroutines."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        pr = PendingResult(future)

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.001)
                    ticks += 1

            tick = asyncio.ensure_future(ticker())
            _complete_later(future, 42)
            value = await pr
            tick.cancel()
            return value, ticks

        value, ticks = asyncio.run(main())
        self.assertEqual(value, 42)
        self.assertGreater(ticks, 0)

    def test_await_raises_the_calls_exception(self):
        """``await pr`` raises the call's exception, as ``get_result`` does."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        pr = PendingResult(future)

        async def main():
            _complete_later(future, error=KeyError("k"))
            await pr

        self.assertRaises(KeyError, asyncio.run, main())
        self.assertRaises(KeyError, pr.get_result)

    def test_cancelled_await_leaves_the_result_usable(self):
        """A timed-out ``await`` (``asyncio.wait_for``) does not cancel the call: the
        result can still be awaited or fetched."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        pr = PendingResult(future)

        async def main():
            try:
                await asyncio.wait_for(pr, 0.01)
            except TimeoutError:
                pass
            else:
                raise AssertionError("wait_for did not time out")
            self.assertFalse(future.cancelled())
            _complete_later(future, "late")
            return await pr

        self.assertEqual(asyncio.run(main()), "late")
        self.assertEqual(pr.get_result(), "late")

    def test_cancelled_future_cancels_the_await(self):
        """Awaiting a future that gets cancelled raises ``CancelledError``."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        async def main():
            threading.Timer(0.05, future.cancel).start()
            await awaitable(future)

        self.assertRaises(asyncio.CancelledError, asyncio.run, main())

    def test_needs_a_running_loop(self):
        """Outside a running loop, awaitable() raises RuntimeError."""
        self.assertRaises(RuntimeError, awaitable, concurrent.futures.Future())


ASYNC_SCRIPT = r"""
import asyncio
from ipkernel import client

tc = client.TaskClient()
mec = client.MultiEngineClient()

def slow(seconds):
    import time
    time.sleep(seconds)
    return seconds

async def main():
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = loop.create_task(ticker())
    await asyncio.sleep(0)

    # A non-blocking MultiEngine call: the loop goes on while the engines sleep.
    pr = mec.execute("import time; time.sleep(0.6)", block=False)
    before = ticks
    results = await pr
    assert [r["id"] for r in results] == mec.get_ids(), results
    assert ticks - before >= 3, ("the loop was blocked", ticks - before)

    # One task's result.
    tid = tc.run(client.MapTask(slow, (0.6,)))
    before = ticks
    tr = await tc.result(tid)
    assert tr.result == 0.6 and tr.taskid == tid, tr
    assert ticks - before >= 3, ("the loop was blocked", ticks - before)

    # Several at once, a failure raised, an executor's future.
    tids = [tc.run(client.MapTask(slow, (0.1 * i,))) for i in range(4)]
    trs = await asyncio.gather(*(tc.result(t) for t in tids))
    assert [t.result for t in trs] == [0.1 * i for i in range(4)]
    try:
        await mec.execute("1/0", block=False)
    except client.CompositeError as exc:
        assert "ZeroDivisionError" in str(exc)
    else:
        raise AssertionError("no CompositeError")
    ex = tc.executor()
    assert await ex.submit(pow, 2, 8) == 256
    ex.shutdown()

    tick.cancel()
    assert asyncio.get_running_loop() is loop
    return ticks

print("ticks", asyncio.run(main()))
print("ASYNC OK")
"""


class AsyncioClusterTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_await_in_a_running_loop(self):
        """``await pr``, ``await tc.result(tid)`` and ``await future`` inside
        ``asyncio.run`` give the results while a ticker coroutine keeps advancing: the
        loop is never blocked, and no second loop is started."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(ASYNC_SCRIPT)
        self.assertIn("ASYNC OK", result.stdout)
