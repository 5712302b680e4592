"""``tc.executor()`` and ``mec.executor()`` used as ``concurrent.futures`` documents it.

The blocking clients run in child Pythons (:meth:`Cluster.run_script`) against a real
controller and engines, while trial's reactor runs the test.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.cluster import Cluster

PRELUDE = r"""
import concurrent.futures as cf
import os, tempfile, threading, time
from ipkernel import client
from ipkernel.errors import SerializationError, TaskAborted

def slow(seconds, value=None):
    import time
    time.sleep(seconds)
    return seconds if value is None else value

# A call that runs until the script opens its gate (a file): what finishes first is
# then decided by the script, not by timing.
GATES = tempfile.mkdtemp()

def new_gate():
    return os.path.join(GATES, str(time.monotonic_ns()))

def open_gate(path):
    open(path, "w").close()

def gated(path, value):
    import os, time
    end = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"gate {path} not opened")
        time.sleep(0.01)
    return value

def boom(x):
    raise ValueError(f"boom {x}")

def expect(exc_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError(f"{fn} did not raise {exc_type.__name__}")

def poll(predicate, what, deadline=30):
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
"""

FUTURES_USAGE = r"""
def check(ex):
    # submit, result, keyword arguments, exceptions re-raised from result()
    assert ex.submit(pow, 2, 10).result(timeout=30) == 1024
    assert ex.submit(slow, 0, value="kw").result(timeout=30) == "kw"
    failed = ex.submit(boom, 7)
    assert "boom 7" in str(expect(ValueError, failed.result, 30))
    assert isinstance(failed.exception(), ValueError)
    unpicklable = ex.submit(pow, threading.Lock(), 2)
    expect(SerializationError, unpicklable.result, 30)

    # as_completed: results in the order they finish (the two calls run on two engines)
    gate = new_gate()
    futures = [ex.submit(gated, gate, "slow"), ex.submit(slow, 0, "fast")]
    assert next(cf.as_completed(futures, timeout=30)).result() == "fast"
    open_gate(gate)
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == ["fast", "slow"]

    # wait: FIRST_COMPLETED, ALL_COMPLETED, FIRST_EXCEPTION
    gate = new_gate()
    futures = [ex.submit(gated, gate, "slow"), ex.submit(slow, 0, "fast")]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.FIRST_COMPLETED)
    assert [f.result() for f in done] == ["fast"] and len(not_done) == 1, (done, not_done)
    open_gate(gate)
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert len(done) == 2 and not not_done
    gate = new_gate()
    futures = [ex.submit(gated, gate, "slow"), ex.submit(boom, 1)]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert futures[1] in done and futures[0] in not_done
    open_gate(gate)
    assert futures[0].result(timeout=30) == "slow"

    # add_done_callback: called once the result is there (and at once when it is)
    seen, called = [], threading.Event()
    future = ex.submit(pow, 3, 3)
    future.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert called.wait(30) and seen == [27]
    future.add_done_callback(lambda f: seen.append("again"))
    assert seen == [27, "again"]

    # map: in order, several iterables, chunks, empty input, an item's exception
    assert list(ex.map(pow, range(20), [2] * 20)) == [i * i for i in range(20)]
    assert list(ex.map(pow, range(101), [2] * 101, chunksize=7)) == [i * i for i in range(101)]
    assert list(ex.map(pow, [], [])) == []
    results = ex.map(lambda x: 10 // x, [1, 0, 2])
    assert next(results) == 10
    expect(ZeroDivisionError, next, results)
    expect(ValueError, ex.map, pow, [1], chunksize=0)

    # map with a timeout: TimeoutError once a result is late; the late call is cancelled
    # (a task is aborted; a MultiEngine call, sent, runs to its end)
    start = time.monotonic()
    results = ex.map(slow, [0, 6], timeout=3)
    assert next(results) == 0
    expect(TimeoutError, next, results)
    assert time.monotonic() - start < 5.5, time.monotonic() - start
"""

TASK_EXECUTOR = (
    PRELUDE
    + FUTURES_USAGE
    + r"""
tc = client.TaskClient()
with tc.executor() as ex:
    check(ex)
    assert isinstance(ex.submit(pow, 1, 1).result(), int)
# The with-block shut it down: no more calls.
expect(RuntimeError, ex.submit, pow, 1, 1)

# The map's late task was aborted: the engines are free again well before it would end.
poll(lambda: tc.queue_status()["pending"] == 0, "the late task to be aborted", deadline=2)

# shutdown(cancel_futures=True): queued calls are cancelled, running ones finish.
ex = tc.executor()
gate = new_gate()
running = [ex.submit(gated, gate, "ran") for _ in range(2)]
poll(lambda: tc.queue_status()["pending"] == 2, "two tasks to run")
queued = [ex.submit(slow, 0, "queued") for _ in range(3)]
poll(lambda: tc.queue_status()["scheduled"] == 3, "three tasks to wait")
ex.shutdown(wait=False, cancel_futures=True)
assert all(f.cancelled() for f in queued), queued
assert not any(f.done() for f in running)
open_gate(gate)
ex.shutdown(wait=True)
assert [f.result() for f in running] == ["ran", "ran"]
expect(RuntimeError, ex.submit, pow, 1, 1)
print("TASK EXECUTOR OK")
"""
)

TASK_CANCEL = (
    PRELUDE
    + r"""
tc = client.TaskClient()
ex = tc.executor()
running = [ex.submit(slow, 60) for _ in range(2)]   # both engines busy for a minute
queued = ex.submit(slow, 60)
poll(lambda: tc.queue_status()["pending"] == 2, "two tasks to run")
assert not any(f.done() or f.running() for f in running + [queued])

start = time.monotonic()
assert queued.cancel() is True
assert queued.cancelled() and queued.done()
expect(cf.CancelledError, queued.result, 1)
assert running[0].cancel() is True and running[1].cancel() is True
done, not_done = cf.wait(running + [queued], timeout=5)
assert not not_done
assert running[0].cancel() is True  # cancelling again: still cancelled

# On the controller the tasks were aborted, the queued one before it ever ran.
for future in running + [queued]:
    tr = tc.get_task_result(future.taskid, block=True)
    assert isinstance(tr.failure, TaskAborted), tr
assert tc.get_task_result(queued.taskid).attempts == 0
# The engines that ran the aborted tasks are usable at once.
assert [f.result(timeout=10) for f in [ex.submit(pow, 2, 5), ex.submit(pow, 2, 6)]] == [32, 64]
assert time.monotonic() - start < 20
# A finished future cannot be cancelled.
finished = ex.submit(pow, 2, 2)
assert finished.result(timeout=10) == 4 and finished.cancel() is False
ex.shutdown()
print("TASK CANCEL OK")
"""
)

MULTIENGINE_EXECUTOR = (
    PRELUDE
    + FUTURES_USAGE
    + r"""
mec = client.MultiEngineClient()
ids = mec.get_ids()
assert len(ids) == 2

def where():
    import __main__
    return __main__.id

with mec.executor() as ex:
    assert ex.targets == ids
    assert [ex.submit(where).result(timeout=30) for _ in range(4)] == ids + ids
    check(ex)
expect(RuntimeError, ex.submit, pow, 1, 1)

with mec.executor(targets=[ids[1]]) as ex:
    assert {f.result(timeout=30) for f in [ex.submit(where) for _ in range(3)]} == {ids[1]}
    # A call not sent yet is withdrawn: cancel() says True and it never runs. (The
    # reactor thread, which sends the calls, is held until the call is cancelled.)
    def mark():
        import __main__
        __main__.marked = True

    def marked():
        import __main__
        return getattr(__main__, "marked", False)

    from ipkernel.client.blocking import get_bridge

    hold = threading.Event()
    get_bridge().reactor.callFromThread(hold.wait, 30)
    unsent = ex.submit(mark)
    assert unsent.cancel() is True and unsent.cancelled()
    hold.set()
    expect(cf.CancelledError, unsent.result, 5)
    # The engine runs its calls in order: had mark been sent, it would have run first.
    assert ex.submit(marked).result(timeout=30) is False

    # A call sent to its engine is running for concurrent.futures: cancel() says False
    # and the call completes.
    busy = ex.submit(slow, 0.5, "busy")
    late = ex.submit(slow, 0.01, "late")
    poll(late.running, "the call to be sent")
    assert late.cancel() is False and not late.cancelled()
    assert busy.result(timeout=30) == "busy" and late.result(timeout=30) == "late"
expect(ValueError, mec.executor, targets="some")
print("MULTIENGINE EXECUTOR OK")
"""
)


class TaskExecutorTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_concurrent_futures_usage(self):
        """tc.executor() does what concurrent.futures documents: submit, exceptions
        re-raised from result(), as_completed, wait (first completed, first exception,
        all completed), add_done_callback, map in order with chunks, map with a timeout
        raising TimeoutError (the late task is aborted), the context manager, and
        shutdown(cancel_futures=True) cancelling the queued calls only."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(TASK_EXECUTOR)
        self.assertIn("TASK EXECUTOR OK", result.stdout)

    @inlineCallbacks
    def test_cancel_queued_and_running(self):
        """Future.cancel() returns True and aborts the task, queued (it never runs) or
        running (interrupted on its engine, which runs the next task at once); a
        finished future cannot be cancelled."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(TASK_CANCEL)
        self.assertIn("TASK CANCEL OK", result.stdout)


class MultiEngineExecutorTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_round_robin_and_concurrent_futures_usage(self):
        """mec.executor() sends each call to the next target engine in turn and does
        what concurrent.futures documents, as the task executor does; a call not sent
        yet is cancelled and never runs, one already sent counts as running: cancel()
        returns False and its result arrives."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(MULTIENGINE_EXECUTOR)
        self.assertIn("MULTIENGINE EXECUTOR OK", result.stdout)
