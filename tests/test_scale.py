"""One controller, hundreds of engines: registration, calls on all, engines coming and going.

The controller is a real ``ipcontroller`` process; the engines are real engine connections
(TLS, login, registration, an ``EngineCore`` with its own namespace each) run in this
process's reactor by :func:`ipkernel.cli.manyengines.start_engines`.
"""

from __future__ import annotations

import io
import resource
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel import paths, tap
from ipkernel.cli import manyengines
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_types import StringTask
from ipkernel.errors import CompositeError, EngineError
from ipkernel.security import read_key_file
from tests.cluster import Cluster, poll, python_command
from tests.commands import CLIProcess

ENGINES = 200


class ManyEnginesTests(TestCase):
    timeout = 120

    def start_engines(self, cluster: Cluster, count: int) -> list:
        services = manyengines.start_engines(reactor, cluster.security / paths.ENGINE_FURL, count)
        self.addCleanup(self.stop_engines, services)
        return services

    @staticmethod
    def stop_engines(services: list):
        """Stop ``services``; fire once each one's connection is closed."""
        brokers = [s.registrar.broker for s in services if s.registrar is not None]
        for service in services:
            if service.running:
                service.stopService()
        return poll(lambda: all(b.disconnected for b in brokers), "engine connections to close")

    @inlineCallbacks
    def test_many_engines_register_and_serve_while_others_come_and_go(self):
        """200 engines of one process register with one controller and each runs commands
        in its own namespace; while a client works, engines leave (their calls fail with
        EngineError, nothing else does) and new ones join under ids never given before."""
        cluster = Cluster(self, n=0)
        cluster.start_controller()
        mec = yield cluster.connect()
        services = self.start_engines(cluster, ENGINES)
        ids = yield cluster.wait_for_engines(mec, ENGINES)
        self.assertEqual(ids, list(range(ENGINES)))

        results = yield mec.execute("a = id * 2", targets="all")
        self.assertEqual([r["id"] for r in results], ids)
        values = yield mec.pull("a")
        self.assertEqual(values, [i * 2 for i in ids])
        yield mec.scatter("x", list(range(10_000)))
        self.assertEqual((yield mec.gather("x")), list(range(10_000)))

        furl = cluster.security / paths.TC_FURL
        tc = yield AsyncTaskClient.connect(reactor, read_key_file(furl), str(furl))
        self.addCleanup(tc.disconnect)
        taskids = yield gatherResults([tc.run(StringTask("b = 1", retries=5)) for _ in range(400)])

        # While the tasks run and the client executes on every engine: 20 engines
        # leave, 20 new ones join.
        leaving = [s for s in services if s.engine_id is not None and s.engine_id % 10 == 3]
        gone = {s.engine_id for s in leaving}
        calls = [mec.execute("c = 1", targets="all") for _ in range(3)]
        yield self.stop_engines(leaving)
        newcomers = self.start_engines(cluster, len(leaving))
        for call in calls:
            try:
                yield call
            except CompositeError as exc:
                failed = {engine_id for engine_id, _, _ in exc.elist}
                self.assertLessEqual(failed, gone)
                for _, _, error in exc.elist:
                    self.assertIsInstance(error, EngineError)
        yield poll(lambda: all(s.registrar is not None for s in newcomers), "newcomers")
        yield tc.barrier(taskids)
        outcomes = yield tc.get_task_results(taskids)
        self.assertEqual([r.failure for r in outcomes], [None] * len(taskids))

        now = yield mec.get_ids()
        self.assertEqual(len(now), ENGINES)
        self.assertEqual(set(now) - (set(ids) - gone), set(range(ENGINES, ENGINES + 20)))
        results = yield mec.execute("d = id", targets="all")
        self.assertEqual([r["id"] for r in results], now)
        self.assertEqual((yield mec.pull("d")), now)


class ManyEnginesCommandTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_command_connects_n_engines_and_stops_on_sigterm(self):
        """``python -m ipkernel.cli.manyengines N`` says when it dials and when all N are
        registered; the client sees N engines; SIGTERM ends it and the engines leave."""
        cluster = Cluster(self, n=0)
        cluster.start_controller()
        mec = yield cluster.connect()
        command = CLIProcess(self, python_command("ipkernel.cli.manyengines", "5"), env=cluster.env)
        out = command.read_until(f"{manyengines.MARKER} registered 5")
        self.assertIn(f"{manyengines.MARKER} connecting 5", out)
        self.assertEqual((yield mec.get_ids()), [0, 1, 2, 3, 4])
        command.proc.send_signal(signal.SIGTERM)
        code, _, _ = command.wait()
        self.assertEqual(code, 0)
        yield poll_ids(mec, [])

    def test_usage(self):
        """N must be a positive number: anything else is refused, saying so."""
        for wrong in ("x", "0"):
            err = io.StringIO()
            self.patch(sys, "stderr", err)
            self.assertEqual(manyengines.main([wrong]), 2)
            self.assertIn(f"N must be a positive number of engines, not {wrong!r}", err.getvalue())


@inlineCallbacks
def poll_ids(mec, expected: list[int]):
    """Fire once the controller lists ``expected`` engine ids."""
    for _ in range(1500):
        if (yield mec.get_ids()) == expected:
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"the engines did not become {expected}")


class OpenFilesLimitTests(SynchronousTestCase):
    def test_soft_limit_raised_to_hard(self):
        """The controller raises its soft limit on descriptors to the hard limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        lower = min(soft, 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
        self.assertEqual(tap.raise_open_files_limit(), (hard, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
