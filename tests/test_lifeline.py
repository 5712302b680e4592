"""Lifelines: a child sees the end of the pipe its parent holds, and ipcluster gives one to
the processes it starts (see ``test_cli`` and ``test_python_cluster`` for real processes)."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.cli import lifeline
from ipkernel.cli.processes import ReactorProcessRunner


class WatchTests(TestCase):
    def setUp(self):
        self.line = lifeline.Lifeline()
        self.addCleanup(self.line.close)

    def test_end_of_file_calls_back_once(self):
        """Bytes written on a lifeline do not count; closing its write end calls on_end once."""
        calls: list[None] = []
        ended = Deferred()

        def on_end():
            calls.append(None)
            ended.callback(None)

        lifeline.watch(reactor, self.line.read_fd, on_end)
        os.write(self.line.write_fd, b"not an end")
        os.close(self.line.write_fd)
        self.line.write_fd = -1
        return ended.addCallback(lambda _: self.assertEqual(calls, [None]))

    def test_parent_already_gone(self):
        """A lifeline whose write end is already closed is seen at once."""
        os.close(self.line.write_fd)
        self.line.write_fd = -1
        ended = Deferred()
        lifeline.watch(reactor, self.line.read_fd, lambda: ended.callback(True))
        return ended

    def test_reactor_shutdown_is_not_the_end(self):
        """A reactor shutting down disconnects its readers: that does not call on_end."""
        from twisted.internet.main import CONNECTION_LOST
        from twisted.python.failure import Failure

        calls: list[None] = []
        watcher = lifeline._Watch(self.line.read_fd, lambda: calls.append(None))
        watcher.connectionLost(Failure(CONNECTION_LOST))
        self.assertEqual(calls, [])


class OptionTests(SynchronousTestCase):
    def test_open_fd(self):
        """--lifeline-fd takes the number of an open descriptor and refuses anything else."""
        line = lifeline.Lifeline()
        self.addCleanup(line.close)
        self.assertEqual(lifeline.open_fd(str(line.read_fd)), line.read_fd)
        for value, words in [("x", "not 'x'"), ("-1", "not '-1'"), ("999999", "no such open")]:
            with self.assertRaises(ValueError) as ctx:
                lifeline.open_fd(value)
            self.assertIn(words, str(ctx.exception))


class FakeSpawningReactor:
    def __init__(self):
        self.spawned: list[tuple[list[str], dict]] = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):  # noqa: N802
        self.spawned.append((args, childFDs))
        protocol.pid = 1


class RunnerTests(SynchronousTestCase):
    def test_spawn_with_watch_parent(self):
        """A child spawned with watch_parent gets the lifeline as fd 3 and --lifeline-fd 3;
        others (or every child of a runner without a lifeline) get neither."""
        line = lifeline.Lifeline()
        self.addCleanup(line.close)
        fake = FakeSpawningReactor()
        runner = ReactorProcessRunner(fake, None, {}, lifeline=line)
        runner.spawn("controller", ["/bin/true"], watch_parent=True)
        runner.spawn("mpiexec", ["/bin/true"])
        ReactorProcessRunner(fake, None, {}).spawn("engine", ["/bin/true"], watch_parent=True)
        (watching, fds), (plain, plain_fds), (lineless, lineless_fds) = fake.spawned
        self.assertEqual(watching, ["/bin/true", "--lifeline-fd", "3"])
        self.assertEqual(fds, {0: "w", 1: "r", 2: "r", 3: line.read_fd})
        for argv, child_fds in [(plain, plain_fds), (lineless, lineless_fds)]:
            self.assertEqual(argv, ["/bin/true"])
            self.assertEqual(child_fds, {0: "w", 1: "r", 2: "r"})
