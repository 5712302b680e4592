"""ipcluster replaces local engines that die, a few times a minute at most (SPEC §6).

The policy and the cluster's decisions are checked with a fake clock and a fake process
runner (nothing is started); real ``ipcluster`` processes show the whole story: an engine
killed by a signal is replaced by one that registers under a new id, an engine told to
stop (``mec.kill``) is not, nor is any with ``--no-restart``.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.cli import ipcluster
from ipkernel.cli.ipcluster import cluster as cluster_module
from ipkernel.cli.ipcluster import pidfile
from ipkernel.cli.ipcluster.restarts import RESTART_LIMIT, RESTART_PERIOD, RestartPolicy, died
from ipkernel.cli.processes import ExitStatus
from ipkernel.client.task_types import StringTask
from tests.cluster import Cluster, poll
from tests.test_cli import CLIProcess, FakeRunner
from tests.test_liveness import poll_ids
from tests.test_tasks import task_client


class RestartPolicyTests(SynchronousTestCase):
    def test_three_replacements_per_slot_per_minute(self) -> None:
        """A slot is replaced at most 3 times within 60 s; a replacement counts for 60 s
        from when it was made; each slot counts apart."""
        self.assertEqual((RESTART_LIMIT, RESTART_PERIOD), (3, 60.0))
        clock = Clock()
        policy = RestartPolicy(clock)
        for _ in range(3):
            self.assertTrue(policy.allow(0))
            clock.advance(10)
        self.assertFalse(policy.allow(0))
        self.assertTrue(policy.allow(1))
        self.assertEqual(policy.recent(0), 3)
        clock.advance(29.9)  # 59.9 s after the first
        self.assertFalse(policy.allow(0))
        clock.advance(0.1)  # the first is a minute old: one more
        self.assertTrue(policy.allow(0))
        self.assertFalse(policy.allow(0))
        clock.advance(60)
        self.assertEqual(policy.recent(0), 0)
        self.assertTrue(policy.allow(0))

    def test_which_ends_count_as_deaths(self) -> None:
        """A signal or a non-zero exit status is a death; exit status 0 (an engine told to
        stop) and an unknown end are not."""
        self.assertTrue(died(ExitStatus(signal=signal.SIGKILL)))
        self.assertTrue(died(ExitStatus(signal=signal.SIGTERM)))
        self.assertTrue(died(ExitStatus(code=1)))
        self.assertFalse(died(ExitStatus(code=0)))
        self.assertFalse(died(ExitStatus()))


class FakeClusterCase(SynchronousTestCase):
    """ipcluster's ClusterSupervisor with a fake runner and clock, its processes made to end."""

    def start(self, *args: str):
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        options = ipcluster.StartOptions()
        options.parseOptions(
            ["--security-dir", str(base / "sec"), "--log-dir", str(base / "log"), *args]
        )
        self.runner = FakeRunner()
        self.log = io.StringIO()
        self.err = io.StringIO()
        self.patch(cluster_module, "wait_for_engines", lambda *a, **k: succeed([0, 1]))
        cluster = ipcluster.ClusterSupervisor(
            self.runner.clock,
            options,
            pidfile.ClusterRecord(os.getpid()),
            base / pidfile.PID_FILE,
            self.log,
            base / "c.log",
            self.err,
            runner=self.runner,
        )
        self.assertEqual(self.successResultOf(cluster.start()), options["n"])
        return cluster

    def engines(self):
        return [child for role, _, child in self.runner.spawned if role == "engine"]


class ClusterReplacementTests(FakeClusterCase):
    def test_crash_loop_stops_after_three_a_minute(self) -> None:
        """An engine slot whose engines keep crashing is refilled 3 times within a
        minute, then left empty (said in the log); the other slot is unaffected."""
        self.start("-n", "2", "--exec-engines")
        first, other = self.engines()
        victim = first
        for n in range(1, 4):
            victim.processEnded(Failure(ProcessTerminated(exitCode=1)))
            victim = self.engines()[-1]
            self.assertEqual(len(self.engines()), 2 + n)
            self.assertIn(f"replacement {n} of at most 3 in 60 s", self.log.getvalue())
        victim.processEnded(Failure(ProcessTerminated(signal=signal.SIGSEGV)))
        self.assertEqual(len(self.engines()), 5)
        self.assertIn(
            "was killed by SIGSEGV; not replaced: engine slot 0 was already replaced "
            "3 times in the last 60 s",
            self.log.getvalue(),
        )
        other.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.assertEqual(len(self.engines()), 6)
        self.assertIn("(engine slot 1, replacement 1 of at most 3", self.log.getvalue())
        self.assertIn("started engine process", self.err.getvalue())

    def test_stopped_engines_are_not_replaced(self) -> None:
        """An engine that exits with status 0 (told to stop) is not replaced; with
        --no-restart, none is; nor any once the cluster is stopping."""
        cluster = self.start("-n", "2", "--exec-engines")
        first, second = self.engines()
        first.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(len(self.engines()), 2)
        self.assertIn("exited with code 0: stopped on purpose, not replaced", self.log.getvalue())
        cluster.request_stop("SIGTERM")
        second.processEnded(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        self.assertEqual(len(self.engines()), 2)

        self.start("-n", "1", "--exec-engines", "--no-restart")
        [engine] = self.engines()
        engine.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.assertEqual(len(self.engines()), 1)
        self.assertIn("was killed by SIGKILL; not replaced (--no-restart)", self.log.getvalue())

    def test_forked_engines_are_replaced_by_new_processes(self) -> None:
        """A forked engine that dies is replaced by an ``ipengine`` process of its own;
        the forking process ending once its engines have is not reported as a failure."""
        self.start("-n", "2")
        [(role, _, forker)] = self.runner.spawned[1:]
        self.assertEqual(role, "forkengines")
        forker.on_line("ipkernel-fork: engine-pid 77")
        forker.on_line("ipkernel-fork: engine-pid 78")
        forker.on_line(f"ipkernel-fork: engine-exit 77 -{int(signal.SIGKILL)}")
        [(role, argv, _)] = self.runner.spawned[2:]
        self.assertEqual((role, argv[1:3]), ("engine", ["-m", "ipkernel.cli.ipengine"]))
        self.assertIn("engine process 77 was killed by SIGKILL; replaced by", self.log.getvalue())
        forker.on_line("ipkernel-fork: engine-exit 78 0")
        forker.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(len(self.runner.spawned), 3)
        self.assertNotIn("forkengines", self.err.getvalue())


class ControllerRestartDecisionTests(FakeClusterCase):
    """With --db, ipcluster starts a controller that died again (the fake runner's)."""

    def controllers(self):
        return [child for role, _, child in self.runner.spawned if role == "controller"]

    def test_dead_controller_is_restarted_with_reuse_keys(self) -> None:
        """A controller killed by a signal is started again with the same options plus
        --reuse-keys; the pid file lists the new one; the cluster goes on, and says so
        in its log and on stderr."""
        base = Path(self.mktemp()).absolute()
        cluster = self.start("-n", "1", "--exec-engines", "--db", str(base / "t.db"))
        [old] = self.controllers()
        old.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        [_, new] = self.controllers()
        argv = self.runner.spawned[-1][1]
        self.assertEqual(argv[argv.index("--db") + 1], str(base / "t.db"))
        self.assertIn("--reuse-keys", argv)
        self.assertFalse(cluster.ended.called)
        self.assertIn(("controller", new.pid), pidfile.read_pid_file(cluster.pid_file).children)
        self.assertIn("was killed by SIGKILL; restarted as process", self.log.getvalue())
        self.assertIn("restarted it from its task store", self.err.getvalue())

    def test_controller_not_restarted(self) -> None:
        """No restart without --db, nor for SIGTERM (a stop), nor with --no-restart, nor
        a fourth time within a minute: the cluster ends, as without a task store."""
        db = str(Path(self.mktemp()).absolute() / "t.db")
        cases = [
            ((), signal.SIGKILL, ""),
            (("--db", db), signal.SIGTERM, ""),
            (("--db", db, "--no-restart"), signal.SIGKILL, "not restarted (--no-restart)"),
        ]
        for args, signum, logged in cases:
            cluster = self.start("-n", "1", "--exec-engines", *args)
            self.controllers()[-1].processEnded(Failure(ProcessTerminated(signal=signum)))
            self.assertTrue(cluster.ended.called, args)
            self.assertEqual(len(self.controllers()), 1)
            self.assertIn(logged, self.log.getvalue())
        cluster = self.start("-n", "1", "--exec-engines", "--db", db)
        for _ in range(4):
            self.controllers()[-1].processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual(len(self.controllers()), 4)
        self.assertTrue(cluster.ended.called)
        self.assertIn("already restarted 3 times in the last 60 s", self.log.getvalue())


class NewEngineTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_first_task_of_a_new_engine_sees_its_id(self):
        """A task waiting for an engine runs on one the moment it registers, before the
        engine has read the controller's answer to its registration: ``id`` is already
        the engine's new id when the task runs."""
        cluster = Cluster(self, n=1)
        mec = yield cluster.start()
        tc = yield task_client(cluster)
        yield mec.kill(targets=0)
        yield poll_ids(mec, [])
        tid = yield tc.run(StringTask("where = id", pull="where"))
        cluster.start_engine()
        result = yield tc.get_task_result(tid, block=True)
        self.assertEqual((result.engineid, result.ns.where), (1, 1))


# --- real ipcluster processes --------------------------------------------------------------


class IPClusterReplacementTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def start(self, *args: str):
        """An ipcluster with 2 engines; fire with an asynchronous client of it."""
        self.cluster = Cluster(self, n=0)
        self.process = CLIProcess(
            self,
            [sys.executable, "-m", "ipkernel.cli.ipcluster", "-n", "2", *args],
            self.cluster.env,
        )
        self.process.read_until("Connect with:")
        self.remember_children()
        mec = yield self.cluster.connect()
        self.assertEqual((yield mec.get_ids()), [0, 1])
        return mec

    def remember_children(self) -> list[tuple[str, int]]:
        """The processes in the pid file (all killed by PID in the cleanup)."""
        record = pidfile.read_pid_file(self.cluster.dir / pidfile.PID_FILE)
        self.process.known_pids.update(pid for _, pid in record.children)
        return record.children

    def log(self) -> str:
        return (self.cluster.dir / "log" / f"ipcluster-{self.process.proc.pid}.log").read_text()

    @inlineCallbacks
    def engine_pid(self, mec, engine_id: int):
        return (yield mec.get_engine_info(engine_id))[engine_id]["pid"]

    @inlineCallbacks
    def test_killed_engine_is_replaced(self):
        """An engine killed with SIGKILL is replaced: a new engine registers with a new
        id, the pid file lists it, and the log says which process replaced which."""
        mec = yield self.start()
        victim = yield self.engine_pid(mec, 0)
        os.kill(victim, signal.SIGKILL)
        yield poll_ids(mec, [1, 2])
        yield poll(lambda: "replaced by" in self.log(), "the replacement in the log")
        self.assertIn(f"engine process {victim} was killed by SIGKILL; replaced by", self.log())
        newcomer = yield self.engine_pid(mec, 2)
        self.assertIn(("engine", newcomer), self.remember_children())
        self.assertEqual((yield mec.pull("id", targets=2)), [2])

    @inlineCallbacks
    def test_engine_told_to_stop_is_not_replaced(self):
        """``mec.kill(targets=0)`` stops engine 0 for good: the log says it stopped on
        purpose and no engine takes its place."""
        mec = yield self.start()
        victim = yield self.engine_pid(mec, 0)
        yield mec.kill(targets=0)
        yield poll(lambda: "stopped on purpose" in self.log(), "ipcluster to see the engine go")
        self.assertIn(f"engine process {victim} exited with code 0: stopped on purpose", self.log())
        self.assertNotIn("replaced by", self.log())
        self.assertEqual((yield mec.get_ids()), [1])

    @inlineCallbacks
    def test_no_restart(self):
        """With --no-restart a killed engine is not replaced, and the log says why."""
        mec = yield self.start("--no-restart")
        victim = yield self.engine_pid(mec, 1)
        os.kill(victim, signal.SIGKILL)
        yield poll(lambda: "--no-restart" in self.log(), "ipcluster to see the engine go")
        self.assertIn(f"engine process {victim} was killed by SIGKILL; not replaced", self.log())
        yield poll_ids(mec, [0])
