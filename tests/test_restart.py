"""Nothing lost: the controller killed and restarted, large payloads kept on disk, old
records expiring; through real ``ipcontroller`` and ``ipengine`` processes.

The asynchronous clients run in trial's reactor; the blocking ``TaskClient`` that waits
across the restart runs in a child Python, whose main thread blocks while its reactor
thread reconnects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ipkernel.cli.ipcluster import pidfile
from ipkernel.client.task_types import MapTask, StringTask
from ipkernel.controller.store_sqlite import payload_directory
from ipkernel.errors import ControllerRestarted
from tests.cluster import Cluster, poll, stop_process
from tests.commands import CLIProcess
from tests.test_tasks import task_client, wait_for_status

MIB = 1 << 20


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def start_script(testcase: TestCase, cluster: Cluster, code: str, output: Path):
    """Start ``code`` in a child Python (the cluster's environment), its output to
    ``output``; it is stopped by PID in the test's cleanup."""
    out = open(output, "w")  # noqa: SIM115 - closed in the cleanup
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=cluster.env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    testcase.addCleanup(out.close)
    testcase.addCleanup(stop_process, child)
    return child


def engine_pids(mec):
    return mec.execute("import os; pid = os.getpid()").addCallback(lambda _: mec.pull("pid"))


class ControllerRestartTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_sigkill_and_restart_lose_nothing(self):
        """SIGKILL the controller with tasks finished, running and queued, and start it
        again with --reuse-keys --db: every finished result is fetchable by id from a new
        TaskClient; every unfinished task (a large body among them) runs again and
        completes; the engines come back by themselves under their ids, namespaces
        kept; the old Task client's next call works; a MultiEngine call in flight fails
        with ControllerRestarted and the old MultiEngine client's next call works; a
        blocking get_task_result waiting in another process returns, and that process's
        blocking MultiEngine client's next call works; new ids follow the old ones."""
        db = Path(self.mktemp()).absolute() / "tasks.db"
        db.parent.mkdir(parents=True)
        cluster = Cluster(self, n=2, controller_args=("--db", str(db)))
        mec = yield cluster.start()
        yield mec.execute("kept = 'namespace'")
        pids_before = yield engine_pids(mec)
        tc = yield task_client(cluster)
        finished = []
        for i in range(4):
            finished.append((yield tc.run(StringTask(f"a = {i} * 2", pull="a"))))
        yield tc.barrier(finished)
        # The running tasks (and so the queued ones behind them) finish only once the
        # gate exists, which it does after the restart, however slow the machine.
        gate = Path(self.mktemp()).absolute()
        wait_for_gate = (
            f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
        )
        running = []
        for i in (100, 101):
            task = StringTask(f"{wait_for_gate}\na = {i}", pull="a")
            running.append((yield tc.run(task)))
        yield wait_for_status(tc, lambda s: set(running) <= set(s["pending"]), "running tasks")
        queued = []
        for i in range(6):
            queued.append((yield tc.run(MapTask(pow, (2, i)))))
        array = np.arange(50_000, dtype=np.float64)  # 400 kB: a body kept apart
        large = yield tc.run(MapTask(np.sum, (array,)))
        self.assertTrue(any(p.suffix == ".body" for p in payload_directory(db).iterdir()))

        output = Path(self.mktemp()).absolute()
        child = start_script(
            self,
            cluster,
            f"""
            from ipkernel import client
            tc = client.TaskClient()
            tc.queue_status()
            mec = client.MultiEngineClient()
            mec.get_ids()
            print("ready", flush=True)
            print("result", tc.get_task_result({queued[-1]}, block=True).result, flush=True)
            print("next mec call", type(mec.get_ids()).__name__, flush=True)
            """,
            output,
        )
        yield poll(lambda: output.exists() and "ready" in output.read_text(), "child ready")
        in_flight = mec.execute("import time; time.sleep(0.2)", targets=0)
        in_flight.addErrback(lambda f: f.value)

        os.kill(cluster.controller.pid, signal.SIGKILL)
        yield poll(lambda: cluster.controller.poll() is not None, "controller to die")
        self.assertIsInstance((yield in_flight), ControllerRestarted)
        next_call = tc.queue_status()  # waits for the controller to be back
        yield deferLater(reactor, 0.3, lambda: None)
        cluster.start_controller("--reuse-keys")
        status = yield next_call
        self.assertGreaterEqual(status["succeeded"], len(finished))
        gate.touch()

        tc2 = yield task_client(cluster)
        results = yield tc2.get_task_results(finished)
        self.assertEqual([r.ns.a for r in results], [0, 2, 4, 6])
        yield tc2.barrier([*running, *queued, large])
        results = yield tc2.get_task_results(running)
        self.assertEqual([r.ns.a for r in results], [100, 101])
        results = yield tc2.get_task_results(queued)
        self.assertEqual([r.result for r in results], [2**i for i in range(6)])
        self.assertEqual((yield tc.get_task_result(large)).result, array.sum())
        yield poll(lambda: child.poll() is not None, "child to finish")
        self.assertEqual(child.returncode, 0, output.read_text())
        self.assertIn("result 32", output.read_text())
        self.assertIn("next mec call list", output.read_text())

        yield cluster.wait_for_engines(mec, 2)  # the old client's next calls log in again
        self.assertEqual((yield mec.get_ids()), [0, 1])
        self.assertEqual((yield engine_pids(mec)), pids_before)
        self.assertEqual((yield mec.pull("kept")), ["namespace", "namespace"])
        new = yield tc.run(StringTask("a = 'new'", pull="a"))
        self.assertNotIn(new, [*finished, *running, *queued, large])
        self.assertEqual((yield tc2.get_task_result(new, block=True)).ns.a, "new")

    @inlineCallbacks
    def test_engine_ids_outlive_the_controller(self):
        """A controller restarted with --reuse-keys --db gives a new engine an id past
        every id of its earlier run: an engine that died before the restart leaves its id
        unused, and the engine that reconnects keeps its own."""
        db = Path(self.mktemp()).absolute() / "tasks.db"
        db.parent.mkdir(parents=True)
        cluster = Cluster(self, n=0, controller_args=("--db", str(db)))
        cluster.start_controller()
        mec = yield cluster.connect()
        cluster.start_engine()
        yield cluster.wait_for_engines(mec, 1)
        second = cluster.start_engine()
        yield cluster.wait_for_engines(mec, 2)
        second.kill()
        yield poll(lambda: second.poll() is not None, "engine 1 to die")
        yield poll_ids(mec, [0])
        os.kill(cluster.controller.pid, signal.SIGKILL)
        yield poll(lambda: cluster.controller.poll() is not None, "controller to die")
        cluster.start_controller("--reuse-keys")
        mec = yield cluster.connect()
        yield poll_ids(mec, [0])
        cluster.start_engine()
        yield poll_ids(mec, [0, 2])


class IPClusterRestartTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_ipcluster_restarts_its_controller(self):
        """ipcluster --db starts again, with --reuse-keys, a controller SIGKILLed with
        tasks in flight: a barrier waiting at the kill returns, every task completes
        with its result, the engines come back under their ids, the pid file lists the
        new controller and the log says so."""
        db = Path(self.mktemp()).absolute() / "tasks.db"
        db.parent.mkdir(parents=True)
        cluster = Cluster(self, n=0)
        process = CLIProcess(
            self,
            [sys.executable, "-m", "ipkernel.cli.ipcluster", "-n", "2", "--db", str(db)],
            cluster.env,
        )
        process.read_until("Connect with:")
        pid_file = cluster.dir / pidfile.PID_FILE

        def controller_pid() -> int:
            children = pidfile.read_pid_file(pid_file).children
            process.known_pids.update(pid for _, pid in children)
            return next(pid for role, pid in children if role == "controller")

        old = controller_pid()
        mec = yield cluster.connect()
        tc = yield task_client(cluster)
        tids = []
        for i in range(40):
            task = StringTask(f"import time; time.sleep(0.05); a = {i} * {i}", pull="a")
            tids.append((yield tc.run(task)))
        yield wait_for_status(tc, lambda s: len(s["succeeded"]) >= 4, "some tasks done")
        waiting = tc.barrier(tids)
        os.kill(old, signal.SIGKILL)
        yield poll(lambda: controller_pid() != old, "a new controller in the pid file")
        yield waiting
        results = yield tc.get_task_results(tids)
        self.assertEqual([r.ns.a for r in results], [i * i for i in range(40)])
        yield poll_ids(mec, [0, 1])
        log = (cluster.dir / "log" / f"ipcluster-{process.proc.pid}.log").read_text()
        self.assertIn(f"the controller (pid {old}) was killed by SIGKILL; restarted", log)


@inlineCallbacks
def poll_ids(mec, ids: list[int]):
    """Fire once the engines registered are ``ids``."""
    deadline = time.monotonic() + 30
    while (yield mec.get_ids()) != ids:
        if time.monotonic() > deadline:
            raise AssertionError(f"engines {(yield mec.get_ids())}, not {ids}")
        yield deferLater(reactor, 0.05, lambda: None)


class TaskPayloadTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_payloads_past_the_budget_go_to_disk(self):
        """With --task-memory 1M, large task bodies and results go to files in a
        temporary directory and the controller's memory stays bounded; a body's file goes
        when its task finishes, a result's at clear(), the directory at exit."""
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir(parents=True)
        cluster = Cluster(
            self,
            n=0,
            controller_args=("--task-memory", "1M"),
            env={"TMPDIR": str(tmp), "IPKERNEL_TRANSPORT": "stream"},
        )
        cluster.start_controller()
        tc = yield task_client(cluster)
        pid = cluster.controller.pid
        before = rss(pid)
        tids = []
        for i in range(12):  # 12 bodies of 2 MiB each
            tids.append((yield tc.run(MapTask(np.sum, (np.full(MIB // 4, float(i)),)))))
        [spill] = tmp.glob("ipcontroller-tasks-*")
        self.assertEqual(len(list(spill.glob("*.body"))), 12)
        self.assertLess(rss(pid) - before, 12 * MIB)
        cluster.start_engine()
        results = yield tc.get_task_results(tids, block=True)
        self.assertEqual([r.result for r in results], [i * (MIB // 4) for i in range(12)])
        self.assertEqual(list(spill.glob("*.body")), [])
        tids = []
        for i in range(4):
            tids.append((yield tc.run(MapTask(np.full, (MIB // 4, float(i))))))
        results = yield tc.get_task_results(tids, block=True)
        self.assertEqual([r.result[-1] for r in results], [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(len(list(spill.glob("*.result"))), 4)
        yield tc.clear()
        self.assertEqual(list(spill.iterdir()), [])
        stop_process(cluster.controller)
        self.assertFalse(spill.exists())

    @inlineCallbacks
    def test_old_records_expire(self):
        """With --task-max-age 1, a finished task's record is gone a little later."""
        cluster = Cluster(self, n=1, controller_args=("--task-max-age", "1"))
        yield cluster.start()
        tc = yield task_client(cluster)
        tid = yield tc.run(StringTask("a = 1", pull="a"))
        self.assertEqual((yield tc.get_task_result(tid, block=True)).ns.a, 1)
        deadline = time.monotonic() + 20
        while True:
            try:
                yield tc.get_task_result(tid)
            except IndexError:
                break
            self.assertLess(time.monotonic(), deadline, "the record was not removed")
            yield deferLater(reactor, 0.1, lambda: None)
