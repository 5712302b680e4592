"""The Task interface through real processes: ipcontroller, ipengine, the Task client.

The asynchronous client runs in trial's reactor; the blocking client (``TaskClient``)
runs in child Pythons through :meth:`Cluster.run_script`.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ipkernel import paths
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_types import MapTask, StringTask
from ipkernel.errors import EngineError, TaskAborted
from ipkernel.security import read_key_file
from tests.cluster import Cluster, poll


@inlineCallbacks
def task_client(cluster: Cluster):
    """An asynchronous Task client of ``cluster`` (with the cluster's transport),
    disconnected in its cleanup."""
    furl = cluster.security / paths.TC_FURL
    yield poll(furl.exists, f"key file {furl}")
    transport = cluster.env.get("IPKERNEL_TRANSPORT")
    client = yield AsyncTaskClient.connect(reactor, read_key_file(furl), str(furl), transport)
    cluster.clients.append(client)
    return client


@inlineCallbacks
def wait_for_status(tc: AsyncTaskClient, predicate, what: str):
    """Fire with ``queue_status(verbose=True)`` once ``predicate`` holds for it (a poll
    with a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        status = yield tc.queue_status(verbose=True)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {status}")
        yield deferLater(reactor, 0.02, lambda: None)


SEED_EXAMPLES = r'''
import subprocess, sys, time
from ipkernel import client

tc = client.TaskClient()
mec = client.MultiEngineClient()

# QuickStart: the tasks of the original chapter.
tasklist = [client.Task("a = %i" % n, pull="a") for n in range(1000)]
taskids = [tc.run(t) for t in tasklist]
assert taskids == list(range(1000)), taskids[:20]
tc.barrier(taskids)
task_results = [tc.get_task_result(taskid) for taskid in taskids]
tr = task_results[73]
assert repr(tr) == "TaskResult[ID:73]:{'a': 73}", repr(tr)
assert tr.engineid in (0, 1)
assert tr.submitted <= tr.completed and tr.duration >= 0, (tr.submitted, tr.completed)
assert tr.results['a'] == 73 and tr.ns.a == 73 and tr.attempts == 1
assert tc.queue_status() == {'scheduled': 0, 'pending': 0, 'succeeded': 1000, 'failed': 0}
assert {r.engineid for r in task_results} == {0, 1}

# Options as keywords or attributes; push, pull, clear_before / clear_after.
t = client.Task("a = str(id)")
t.pull = ["a", "id"]
t.push = dict(submitted=12)
t.clear_after = True
tr = tc.get_task_result(tc.run(t), block=True)
assert tr.results == {'a': str(tr.engineid), 'id': tr.engineid}, tr.results
tr = tc.get_task_result(
    tc.run(client.Task("b = sorted(k for k in globals() if not k.startswith('_'))",
                       pull="b", clear_before=True)), block=True)
assert tr.ns.b == ['id', 'mpi'], tr.ns.b

# A failed task: returned, not raised; its values raise; queue_status counts it.
tid = tc.run(client.Task("1/0", pull="a"))
tr = tc.get_task_result(tid, block=True)
assert isinstance(tr.failure, ZeroDivisionError) and '1/0' in tr.failure.remote_traceback
try:
    tr.ns
except ZeroDivisionError:
    pass
else:
    raise AssertionError('reading a failed result did not raise')
assert tc.queue_status()['failed'] == 1
assert tc.queue_status(verbose=True)['failed'] == [tid]
try:
    tc.abort(tid)
except IndexError as exc:
    assert 'already completed' in str(exc)
else:
    raise AssertionError('abort of a finished task did not raise')

# Retries, recovery tasks, loops refused at run.
tr = tc.get_task_result(tc.run(client.Task("1/0", retries=2)), block=True)
assert tr.attempts == 3 and isinstance(tr.failure, ZeroDivisionError), tr.attempts
rescue = client.Task("a = 'recovered'", pull="a")
tr = tc.get_task_result(tc.run(client.Task("1/0", pull="a", recovery_task=rescue)), block=True)
assert tr.ns.a == 'recovered' and tr.recovered == 1, tr
loop = client.Task("a = 1")
loop.recovery_task = client.Task("a = 2", recovery_task=loop)
try:
    tc.run(loop)
except ValueError:
    pass
else:
    raise AssertionError('a looping recovery chain was accepted')

# MapTask, map, parallel, mapper.
def power(x, n=2):
    return x ** n
assert tc.get_task_result(tc.run(client.MapTask(power, args=(3,), kwargs={'n': 3})),
                          block=True).result == 27
assert tc.map(lambda x: x ** 10, range(32)) == [x ** 10 for x in range(32)]
@tc.parallel()
def f(x):
    return 10.0 * x ** 4
assert f(range(32)) == [10.0 * x ** 4 for x in range(32)]
assert tc.mapper(chunksize=5).map(abs, range(-7, 7)) == [abs(x) for x in range(-7, 7)]
pending = tc.map(str, range(5), block=False)
assert pending.get_result() == ['0', '1', '2', '3', '4']
try:
    tc.map(lambda x: 1 // (x % 3), range(10), chunksize=4)
except client.CompositeError as exc:
    assert [i for i, _, _ in exc.elist] == [0, 3, 6, 9], exc.elist
    assert exc.results[1] == 1 and isinstance(exc.results[3], ZeroDivisionError)
else:
    raise AssertionError('no CompositeError')

# Both interfaces at once, from several processes: another client process runs tasks
# while this one uses the MultiEngine interface.
other = subprocess.Popen([sys.executable, '-c', """
from ipkernel import client
tc = client.TaskClient()
tids = [tc.run(client.Task('import time; time.sleep(0.002); x = %d' % i, pull='x'))
        for i in range(200)]
tc.barrier(tids)
assert [tc.get_task_result(t).ns.x for t in tids] == list(range(200))
print('OTHER OK')
"""], stdout=subprocess.PIPE, text=True)
for i in range(20):
    assert mec.execute('y = %d' % i) and mec.pull('y') == [i, i]
out, _ = other.communicate(timeout=120)
assert other.returncode == 0 and 'OTHER OK' in out, out
tc.spin()
tc.clear()
try:
    tc.get_task_result(0)
except IndexError:
    pass
else:
    raise AssertionError('clear() kept a finished result')
tc.close()
print('SEED OK')
'''


class SeedExamplesTests(TestCase):
    timeout = 240

    @inlineCallbacks
    def test_seed_task_examples(self):
        """The examples of the original Task chapter work, with both interfaces in use
        from several client processes at once."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(SEED_EXAMPLES)
        self.assertIn("SEED OK", result.stdout)


class FaultToleranceTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_abort_running_task_engine_stays_usable(self):
        """Aborting a running task interrupts it on its engine; the task fails with
        TaskAborted at once and the engine goes on running tasks."""
        cluster = Cluster(self, n=1)
        yield cluster.start()
        tc = yield task_client(cluster)
        tid = yield tc.run(StringTask("import time\nfor i in range(600): time.sleep(0.05)"))
        queued = yield tc.run(StringTask("a = 'queued'", pull="a"))
        yield wait_for_status(tc, lambda s: tid in s["pending"], "the task to start")
        start = time.monotonic()
        yield tc.abort(tid)
        tr = yield tc.get_task_result(tid, block=True)
        self.assertIsInstance(tr.failure, TaskAborted)
        after = yield tc.get_task_result(queued, block=True)
        self.assertEqual(after.ns.a, "queued")
        self.assertLess(time.monotonic() - start, 10)
        again = yield tc.run(StringTask("b = id", pull="b"))
        tr = yield tc.get_task_result(again, block=True)
        self.assertEqual(tr.ns.b, 0)

    @inlineCallbacks
    def test_killed_engine_retries_or_engine_error(self):
        """A task whose engine is killed (-9) runs again elsewhere if it has retries left,
        else fails with EngineError naming the engine."""
        cluster = Cluster(self, n=3)
        yield cluster.start()
        tc = yield task_client(cluster)
        workdir = cluster.dir
        pids = {proc.pid for proc in cluster.engines}

        def victim(name: str, retries: int) -> StringTask:
            marker = workdir / f"{name}.marker"
            pidfile = workdir / f"{name}.pid"
            code = (
                "import os, time\n"
                f"if os.path.exists({str(marker)!r}):\n"
                "    a = ('retried', id)\n"
                "else:\n"
                f"    open({str(marker)!r}, 'w').close()\n"
                f"    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                "    time.sleep(120)\n"
            )
            return StringTask(code, pull="a", retries=retries)

        for name, retries in (("retry", 1), ("noretry", 0)):
            tid = yield tc.run(victim(name, retries))
            pidfile = workdir / f"{name}.pid"
            yield poll(lambda p=pidfile: p.exists() and p.read_text(), f"{name} to start")
            pid = int(pidfile.read_text())
            self.assertIn(pid, pids)  # one of the engines this test started
            os.kill(pid, signal.SIGKILL)
            tr = yield tc.get_task_result(tid, block=True)
            if retries:
                self.assertEqual(tr.ns.a[0], "retried")
                self.assertEqual(tr.attempts, 2)
            else:
                self.assertIsInstance(tr.failure, EngineError)
                self.assertIn(f"engine {tr.engineid}", str(tr.failure))
        status = yield tc.queue_status()
        self.assertEqual(status, {"scheduled": 0, "pending": 0, "succeeded": 1, "failed": 1})


class SchedulingTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_depend_waits_for_properties(self):
        """A task no engine can take waits; it runs as soon as an engine's properties
        change so that it can: set by a client, or by code on the engine. No spin()."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        tc = yield task_client(cluster)
        gpu = yield tc.run(StringTask("a = id", pull="a", depend=lambda p: p.get("gpu")))
        ready = yield tc.run(StringTask("a = id", pull="a", depend=lambda p: p["ready"] == "yes"))
        broken = yield tc.run(StringTask("a = 1", depend=lambda p: 1 / 0))
        # Every engine declines them, then they wait.
        status = yield wait_for_status(tc, lambda s: not s["pending"], "the declines")
        self.assertEqual(status["scheduled"], [gpu, ready, broken])
        yield mec.set_properties({"gpu": True}, targets=1)
        tr = yield tc.get_task_result(gpu, block=True)
        self.assertEqual(tr.ns.a, 1)
        yield mec.execute(
            "from ipkernel.engine import properties\nproperties['ready'] = 'yes'", targets=0
        )
        tr = yield tc.get_task_result(ready, block=True)
        self.assertEqual(tr.ns.a, 0)
        self.assertIsNone((yield tc.get_task_result(broken)))
        yield tc.abort(broken)

    @inlineCallbacks
    def test_load_balanced_map_and_late_engine(self):
        """A task submitted before any engine runs when one registers; map items go to
        whichever engine is free, so a slow item does not hold the others up; the
        result can be fetched from a new client after the submitting one has gone."""
        cluster = Cluster(self, n=0)
        yield cluster.start()
        result = cluster.run_script(
            r"""
            from ipkernel import client
            tc = client.TaskClient()
            print(tc.run(client.Task("a = 'early'", pull="a")))
            """
        )
        early = int(result.stdout.strip())
        cluster.start_engine()
        cluster.start_engine()
        result = cluster.run_script(
            f"""
            from ipkernel import client
            tc = client.TaskClient()
            assert tc.get_task_result({early}, block=True).ns.a == 'early'

            def where(x):
                import __main__, time
                if x == 0:
                    time.sleep(3)
                return __main__.id

            # Item 0 keeps one engine busy; every other item goes to the other engine.
            engines = tc.map(where, range(12), chunksize=1)
            assert len(set(engines[1:])) == 1 and engines[0] not in engines[1:], engines
            print('LATE OK')
            """
        )
        self.assertIn("LATE OK", result.stdout)

    @inlineCallbacks
    def test_many_small_tasks_and_map_task(self):
        """Hundreds of tasks submitted in a row all run once; MapTask calls its function."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        tc = yield task_client(cluster)
        tids = []
        for n in range(500):
            tids.append((yield tc.run(MapTask(divmod, args=(n, 7)))))
        yield tc.barrier(tids)
        results = yield tc.get_task_results(tids)
        self.assertEqual([r.result for r in results], [divmod(n, 7) for n in range(500)])
        self.assertEqual({r.engineid for r in results}, {0, 1})
