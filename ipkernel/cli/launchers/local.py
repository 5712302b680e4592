"""The ``local`` launcher: engines on this host, forked from one Python or one process each."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipkernel.cli.launchers.base import EngineCommand, Launcher, LaunchSettings
from ipkernel.cli.processes import ChildProcess, ExitStatus, ForkedEngine, ProcessRunner

__all__ = ["FORK_MODULE", "LocalLauncher"]

#: The module that forks several local engines from one pre-loaded Python.
FORK_MODULE = "ipkernel.cli.forkengines"


class LocalLauncher(Launcher):
    """``n`` engines on this host.

    By default (``fork=True``) one ``python -m ipkernel.cli.forkengines N ...`` loads the
    engine's code once and forks the ``n`` engines, each then known by its PID as a
    :class:`ForkedEngine`; with ``fork=False`` each engine is its own ``python -m
    ipkernel.cli.ipengine ...`` (slower to start: every interpreter imports everything).
    Every engine watches the runner's lifeline (:mod:`ipkernel.cli.lifeline`), so that the
    engines end with ipcluster even if it is killed.
    """

    name = "local"
    summary = "this host"
    replaces_engines = True

    def __init__(self, runner: ProcessRunner, command: EngineCommand, fork: bool = True) -> None:
        super().__init__(runner, command)
        # Without fork (Windows), every engine is its own interpreter.
        self.fork = fork and hasattr(os, "fork")
        self._forked: dict[int, ForkedEngine] = {}

    @classmethod
    def for_cluster(
        cls, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
    ) -> LocalLauncher:
        """Forking engines unless ``settings.fork`` is off (``--exec-engines``)."""
        return cls(runner, command, fork=settings.fork)

    def fork_argv(self, n: int) -> list[str]:
        """The command line of the process that forks ``n`` engines."""
        engine = self.command.argv()
        return [self.command.python, "-m", FORK_MODULE, str(n), *engine[3:]]

    def start(self, n: int) -> Deferred:
        if not self.fork:
            for _ in range(n):
                self._start_engine()
            return defer.succeed(n)
        parent = self.runner.spawn("forkengines", self.fork_argv(n), watch_parent=True)
        # No output is read before the reactor runs again, so nothing is missed.
        parent.on_line = lambda line: self._fork_report(parent, line)
        self._add(parent)
        return defer.succeed(n)

    def replace_engine(self) -> ChildProcess:
        """A ``python -m ipkernel.cli.ipengine`` process (the forking process forks only
        the engines asked for at start)."""
        return self._start_engine()

    def _start_engine(self) -> ChildProcess:
        engine = self.runner.spawn("engine", self.command.argv(), watch_parent=True)
        self._add(engine)
        return engine

    def _fork_report(self, parent: ChildProcess, line: str) -> None:
        fields = line.split()
        if len(fields) < 3 or fields[0] != "ipkernel-fork:" or not fields[2].isdigit():
            return
        pid = int(fields[2])
        if fields[1] == "engine-pid" and pid not in self._forked:
            self._forked[pid] = engine = ForkedEngine(pid, parent, self.runner.clock)
            self._add(engine)
        elif fields[1] == "engine-exit" and pid in self._forked and len(fields) == 4:
            code = int(fields[3])
            status = ExitStatus(code=code) if code >= 0 else ExitStatus(signal=-code)
            self._forked[pid].ended(status)
