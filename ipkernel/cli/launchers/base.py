"""The launcher contract: what every engine launcher is given, does and leaves behind.

A :class:`Launcher` starts the engines of one cluster in one way and stops every process
it started. It is built from the engine command line (:class:`EngineCommand`) and what
ipcluster knows (:class:`LaunchSettings`) by :meth:`Launcher.for_cluster`, starts
processes only through a :class:`~ipkernel.cli.processes.ProcessRunner` (tests pass a fake
that records command lines), and keeps a handle on each long-lived one
(:attr:`Launcher.processes`), so that every process it started can be stopped by PID.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.defer import Deferred

from ipkernel.cli.processes import DEFAULT_GRACE, ProcessHandle, ProcessRunner, terminate

__all__ = [
    "ENGINE_MODULE",
    "EngineCommand",
    "LaunchSettings",
    "Launcher",
    "LauncherError",
    "wait_for_file",
]

#: The module every launcher runs with ``python -m`` to start an engine.
ENGINE_MODULE = "ipkernel.cli.ipengine"


class LauncherError(Exception):
    """A launcher cannot start its engines; the message says what is missing and what to do."""


def wait_for_file(clock: Any, path: Path, timeout: float, interval: float = 0.025) -> Deferred:
    """Fire with ``path`` once it exists; errback with :class:`LauncherError` after ``timeout``."""
    deadline = clock.seconds() + timeout
    d: Deferred = Deferred()

    def check() -> None:
        if d.called:
            return
        if path.exists():
            d.callback(path)
        elif clock.seconds() >= deadline:
            d.errback(LauncherError(f"{path} did not appear within {timeout:g} s"))
        else:
            clock.callLater(interval, check)

    check()
    return d


@dataclass(frozen=True)
class EngineCommand:
    """The command line of one engine: ``<python> -m ipkernel.cli.ipengine --furl-file F ...``.

    ``furl_file`` is the engine key file as the engine will see it; ``args`` are further
    ``ipengine`` options (``--security-dir``, ``--log-dir``, ``--property``...).
    """

    furl_file: str
    args: tuple[str, ...] = ()
    python: str = field(default=sys.executable)

    def argv(self, furl_file: str | None = None) -> list[str]:
        """The argument vector, with ``furl_file`` in place of :attr:`furl_file` if given."""
        return [
            self.python,
            "-m",
            ENGINE_MODULE,
            "--furl-file",
            furl_file or self.furl_file,
            *self.args,
        ]


@dataclass(frozen=True)
class LaunchSettings:
    """What ipcluster knows that a launcher may need besides the engine command.

    ``key_file`` is the engine key file the controller writes here; ``log_dir`` the
    cluster's log directory; ``hostfile`` the ``--hostfile`` given, if any; ``key_timeout``
    how long to wait for the key file; ``fork`` whether local engines are forked from one
    Python (``--exec-engines`` turns it off); ``mpiexec`` the command that starts MPI
    programs (``--mpiexec``, as typed: a shell would split it).
    """

    key_file: Path
    log_dir: Path
    hostfile: str | None = None
    key_timeout: float = 30.0
    fork: bool = True
    mpiexec: str = "mpiexec"


class Launcher:
    """Starts the engines of one cluster and stops every process it started.

    Subclasses set :attr:`name` and :attr:`summary` and implement :meth:`start`;
    :meth:`check` raises :class:`LauncherError` before anything starts if a program it
    needs is missing. :attr:`processes` lists the long-lived local processes started
    (engines, ``mpiexec``, ``ssh`` clients), which the default :meth:`stop` terminates by
    PID.
    """

    #: The ``--launcher`` name.
    name: ClassVar[str] = "?"
    #: A few words for ``ipcluster --help``: where the engines run, or how.
    summary: ClassVar[str] = ""
    #: Programs that must be on PATH, with the advice given when one is missing.
    requires: ClassVar[dict[str, str]] = {}
    #: ipcluster options (by name) that this launcher cannot do without.
    required_options: ClassVar[tuple[str, ...]] = ()
    #: Whether engines run on other hosts (which cannot reach a controller on loopback).
    remote: ClassVar[bool] = False
    #: Whether :meth:`replace_engine` can start an engine in place of one that died.
    replaces_engines: ClassVar[bool] = False

    def __init__(self, runner: ProcessRunner, command: EngineCommand) -> None:
        self.runner = runner
        self.command = command
        self.processes: list[ProcessHandle] = []
        #: Called with each process handle as it is added to :attr:`processes`.
        self.on_process: Callable[[ProcessHandle], Any] | None = None
        #: Called with a line for the user about the engines' progress (a batch job still
        #: waiting, and why).
        self.on_report: Callable[[str], Any] | None = None
        #: Called with what happened when engines already launched will not come, or are
        #: gone (a batch job that ended).
        self.on_failure: Callable[[str], Any] | None = None

    @classmethod
    def for_cluster(
        cls, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
    ) -> Launcher:
        """Build this launcher for a cluster; raises :class:`LauncherError` for bad settings.

        The default passes only ``runner`` and ``command``; launchers that need more take
        it from ``settings``.
        """
        return cls(runner, command)

    def _add(self, process: ProcessHandle) -> ProcessHandle:
        self.processes.append(process)
        if self.on_process is not None:
            self.on_process(process)
        return process

    def _report(self, message: str) -> None:
        if self.on_report is not None:
            self.on_report(message)

    def _fail(self, message: str) -> None:
        if self.on_failure is not None:
            self.on_failure(message)

    def check(self) -> None:
        """Raise :class:`LauncherError` if a program this launcher needs is not on PATH."""
        for program, advice in self.requires.items():
            if self.runner.which(program) is None:
                raise LauncherError(
                    f"--launcher {self.name} needs {program!r}, which is not on PATH; {advice}"
                )

    def start(self, n: int) -> Deferred:
        """Start engines; fires with the number of engines to wait for, once launched.

        ``n`` is the number asked for (launchers driven by a host file may start another
        number, and say so). Errbacks with :class:`LauncherError` when the engines cannot
        be launched.
        """
        raise NotImplementedError

    def replace_engine(self) -> ProcessHandle:
        """Start one engine in place of one that died; return its handle (also added to
        :attr:`processes`). Only launchers whose :attr:`replaces_engines` is true can;
        raises ``OSError`` if the engine cannot be started.
        """
        raise LauncherError(f"--launcher {self.name} does not replace engines")

    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        """Stop everything started (see :func:`terminate`); fires when it has all ended."""
        return terminate(self.processes, self.runner.clock, grace)
