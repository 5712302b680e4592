"""The processes ``ipcluster`` starts: spawned, watched and stopped by PID.

A :class:`ChildProcess` is one process started with ``reactor.spawnProcess``: its output is
appended, line by line and tagged with its role and PID, to the cluster's log; the last
lines are kept to quote when it fails; it can be signalled, and waited for
(:meth:`ChildProcess.when_ended`). A :class:`ForkedEngine` is an engine forked by
``python -m ipkernel.cli.forkengines`` and known only by the PID its parent reports; both
are :class:`ProcessHandle` objects. :func:`terminate` stops a group of handles: SIGTERM,
then SIGKILL to what is left after a grace period.

Launchers start processes through a :class:`ProcessRunner`, so that tests can replace it
with a fake that records command lines; :class:`ReactorProcessRunner` is the real one.
Spawning needs a reactor in the main thread (the child-exit notification rides on
SIGCHLD), which is what ``ipcluster`` runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ipkernel.cli.lifeline import CHILD_FD, OPTION, Lifeline

__all__ = [
    "DEFAULT_GRACE",
    "ChildProcess",
    "ExitStatus",
    "ForkedEngine",
    "ProcessHandle",
    "ProcessRunner",
    "ReactorProcessRunner",
    "process_alive",
    "terminate",
]

#: Seconds between SIGTERM and SIGKILL when stopping processes.
DEFAULT_GRACE = 5.0

# How many lines of each child's output are kept in memory to quote when it fails.
_TAIL_LINES = 30


# --- exit statuses and child processes ---------------------------------------------------


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: its exit ``code``, or the ``signal`` number that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_failure(cls, reason: Failure) -> ExitStatus:
        """The status carried by ``processEnded``'s ``ProcessDone``/``ProcessTerminated``."""
        value = reason.value
        if isinstance(value, ProcessDone):
            return cls(code=0)
        if isinstance(value, ProcessTerminated):
            return cls(code=value.exitCode, signal=value.signal)
        return cls()

    @property
    def clean(self) -> bool:
        """Whether the process exited with code 0."""
        return self.code == 0 and self.signal is None

    def describe(self) -> str:
        """``"exited with code 1"``, ``"was killed by SIGKILL"`` and the like."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"was killed by {name}"
        if self.code is not None:
            return f"exited with code {self.code}"
        return "ended"


class _EndWatch:
    """A process's end as seen from here: :attr:`status` once known, waiters until then."""

    status: ExitStatus | None
    _waiters: list[Deferred]

    def when_ended(self) -> Deferred:
        """A Deferred that fires with the :class:`ExitStatus` once the process has ended."""
        if self.status is not None:
            return defer.succeed(self.status)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def _record_end(self, status: ExitStatus) -> None:
        self.status = status
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(status)


class ChildProcess(_EndWatch, ProcessProtocol):
    """One child process started by ``ipcluster``: output to the cluster log, exit watched.

    ``role`` names it in the log and in messages (``"controller"``, ``"engine"``,
    ``"mpiexec"``, ...). Each line the child writes to stdout or stderr is written to
    ``sink`` as ``[<role> <pid>] <line>``; the last lines are kept in :meth:`tail` to quote
    when the child fails; ``on_line(line)``, if given, sees every line too. Its stdin is
    closed at once, unless ``hold_stdin``: then it stays open, never written, so that the
    child reads end of file only when this process ends.

    :attr:`pid` is set once the process is started; :attr:`status` once it has ended (and
    been reaped). :meth:`when_ended` gives a Deferred that fires with the
    :class:`ExitStatus`.
    """

    def __init__(
        self,
        role: str,
        sink: TextIO | None = None,
        on_line: Callable[[str], Any] | None = None,
        hold_stdin: bool = False,
    ) -> None:
        self.role = role
        self.sink = sink
        self.on_line = on_line
        self.hold_stdin = hold_stdin
        self.pid: int | None = None
        self.status: ExitStatus | None = None
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._partial = {1: b"", 2: b""}
        self._waiters: list[Deferred] = []

    def __repr__(self) -> str:
        return f"<ChildProcess {self.role} pid={self.pid} status={self.status}>"

    @property
    def running(self) -> bool:
        """Whether the process was started and has not been seen to end."""
        return self.pid is not None and self.status is None

    def signal(self, name: str) -> bool:
        """Send ``SIG<name>`` (``"TERM"``, ``"KILL"``, ``"INT"``) by PID; False if it is gone."""
        if not self.running or self.transport is None:
            return False
        try:
            self.transport.signalProcess(name)
        except Exception:
            # ProcessExitedAlready, or the PID was just reaped: nothing left to signal.
            return False
        return True

    def tail(self) -> list[str]:
        """The last lines the process wrote (stdout and stderr interleaved)."""
        return list(self._tail)

    # ProcessProtocol

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.pid = self.transport.pid
        if not self.hold_stdin:
            self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[childFD] = rest
        for line in lines:
            self._line(line)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        for fd, rest in self._partial.items():
            if rest:
                self._line(rest)
            self._partial[fd] = b""
        status = ExitStatus.from_failure(reason)
        self._write(f"process {status.describe()}")
        self._record_end(status)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self._tail.append(line)
        self._write(line)
        if self.on_line is not None:
            self.on_line(line)

    def _write(self, line: str) -> None:
        if self.sink is not None:
            try:
                self.sink.write(f"[{self.role} {self.pid}] {line}\n")
            except (OSError, ValueError):
                # A full disk or a closed log must not take the cluster down.
                pass


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; a zombie (ended, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class ForkedEngine(_EndWatch):
    """An engine forked by ``python -m ipkernel.cli.forkengines``, known by its PID.

    It offers what :func:`terminate` and ``ipcluster`` use of a :class:`ChildProcess`
    (``role``, ``pid``, ``status``, ``running``, :meth:`when_ended`, :meth:`signal`,
    :meth:`tail`). Its end is learnt from its parent's ``engine-exit`` report, or, should
    the parent itself be gone, by checking its PID every ``interval`` seconds.
    """

    role = "engine"

    def __init__(self, pid: int, parent: ChildProcess, clock: Any, interval: float = 0.05) -> None:
        self.pid = pid
        self.parent = parent
        self.clock = clock
        self.interval = interval
        self.status: ExitStatus | None = None
        self._waiters: list[Deferred] = []
        parent.when_ended().addCallback(lambda _: self._watch_pid())

    def __repr__(self) -> str:
        return f"<ForkedEngine pid={self.pid} status={self.status}>"

    @property
    def running(self) -> bool:
        """Whether the engine has not been seen to end."""
        return self.status is None

    def signal(self, name: str) -> bool:
        """Send ``SIG<name>`` by PID; False if the engine is known to be gone."""
        if self.status is not None:
            return False
        try:
            os.kill(self.pid, getattr(signal, f"SIG{name}"))
        except OSError:
            return False
        return True

    def tail(self) -> list[str]:
        """The last lines written by the engines of the same parent."""
        return self.parent.tail()

    def ended(self, status: ExitStatus) -> None:
        """Record the engine's end (from its parent's report)."""
        if self.status is None:
            self._record_end(status)

    def _watch_pid(self) -> None:
        if self.status is not None:
            return
        if process_alive(self.pid):
            self.clock.callLater(self.interval, self._watch_pid)
        else:
            self.ended(ExitStatus())


class ProcessHandle(Protocol):
    """A process that ``ipcluster`` started: a :class:`ChildProcess` or a :class:`ForkedEngine`."""

    role: str
    pid: int | None
    status: ExitStatus | None

    @property
    def running(self) -> bool:
        """Whether it was started and has not been seen to end."""

    def when_ended(self) -> Deferred:
        """A Deferred that fires with the :class:`ExitStatus` once it has ended."""

    def signal(self, name: str) -> bool:
        """Send ``SIG<name>`` by PID; False if it is gone."""

    def tail(self) -> list[str]:
        """The last lines of its output."""


def terminate(
    processes: Sequence[ProcessHandle], clock: Any, grace: float = DEFAULT_GRACE
) -> Deferred:
    """Stop ``processes`` by PID: SIGTERM now, SIGKILL to those still running after ``grace``.

    Fires (never errbacks) once every process has ended, with the list of those that did not
    even after SIGKILL and a further ``grace`` seconds (normally empty: only a process stuck
    in the kernel can outlive SIGKILL). ``clock`` is the reactor (an ``IReactorTime``).
    """
    alive = [p for p in processes if p.running]
    if not alive:
        return defer.succeed([])
    for p in alive:
        p.signal("TERM")
    done: Deferred = Deferred()

    def check_all(_: object = None) -> None:
        if not done.called and all(not p.running for p in alive):
            done.callback([])

    def kill_rest() -> None:
        if done.called:
            return
        for p in alive:
            p.signal("KILL")
        give_up_calls.append(clock.callLater(grace, give_up))

    def give_up() -> None:
        if not done.called:
            done.callback([p for p in alive if p.running])

    for p in alive:
        p.when_ended().addCallback(check_all)
    give_up_calls: list = []
    kill_call = clock.callLater(grace, kill_rest)

    def cancel_timers(result: list) -> list:
        for call in [kill_call, *give_up_calls]:
            if call.active():
                call.cancel()
        return result

    check_all()
    return done.addCallback(cancel_timers)


# --- running processes -------------------------------------------------------------------


class ProcessRunner(Protocol):
    """How launchers start processes; the real one is :class:`ReactorProcessRunner`."""

    clock: Any

    def spawn(
        self,
        role: str,
        argv: Sequence[str],
        on_line: Callable[[str], Any] | None = None,
        watch_parent: bool = False,
        hold_stdin: bool = False,
    ) -> ChildProcess:
        """Start ``argv`` (``argv[0]`` looked up on ``PATH``) as a long-lived child.

        With ``watch_parent`` the child is also given the runner's lifeline
        (:mod:`ipkernel.cli.lifeline`) and ``--lifeline-fd`` after ``argv``, so that it
        stops if this process dies; only ``ipcontroller``, ``ipengine`` and
        ``forkengines`` take that option. With ``hold_stdin`` its standard input stays
        open and is never written, so that it reads end of file only when this process
        ends: a lifeline that ``ssh`` carries to a remote command. Returns its
        :class:`ChildProcess` (``pid`` set). Raises ``OSError`` if it cannot be started.
        """

    def run(self, argv: Sequence[str]) -> Deferred:
        """Run ``argv`` to completion; fires with ``(exit_code, output_text)``.

        ``output_text`` is stdout followed by stderr. A process killed by a signal gives a
        negative exit code (``-signal``). Errbacks with ``OSError`` if it cannot be started.
        """

    def which(self, program: str) -> str | None:
        """The full path of ``program`` on ``PATH``, or None."""


def child_argv(argv: Sequence[str], lifeline: bool) -> list[str]:
    """A child's command line: ``argv``, and the lifeline option if it gets one."""
    return [*argv, OPTION, str(CHILD_FD)] if lifeline else list(argv)


class ReactorProcessRunner:
    """:class:`ProcessRunner` over ``reactor.spawnProcess``; children get ``env``.

    ``sink`` is the cluster log that long-lived children's output goes to; ``lifeline``
    the one given to children spawned with ``watch_parent`` (None: they get none).
    """

    def __init__(
        self,
        reactor: Any,
        sink: TextIO | None,
        env: dict[str, str] | None = None,
        lifeline: Lifeline | None = None,
        preforked: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.sink = sink
        self.env = dict(os.environ if env is None else env)
        self.lifeline = lifeline
        #: Children forked before the reactor (:class:`ipkernel.cli.prefork.Preforked`),
        #: adopted by :meth:`spawn` instead of starting new ones.
        self.preforked = preforked
        self.children: list[ChildProcess] = []

    def which(self, program: str) -> str | None:
        return shutil.which(program, path=self.env.get("PATH"))

    def _executable(self, program: str) -> str:
        if os.sep in program:
            return program
        found = self.which(program)
        if found is None:
            raise FileNotFoundError(f"{program}: not found on PATH")
        return found

    def note(self, message: str) -> None:
        """Write a line of ipcluster's own to the cluster log."""
        if self.sink is not None:
            try:
                self.sink.write(f"[ipcluster {os.getpid()}] {message}\n")
            except (OSError, ValueError):
                pass

    def spawn(
        self,
        role: str,
        argv: Sequence[str],
        on_line: Callable[[str], Any] | None = None,
        watch_parent: bool = False,
        hold_stdin: bool = False,
    ) -> ChildProcess:
        child = ChildProcess(role, self.sink, on_line, hold_stdin)
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        argv = child_argv(argv, watch_parent and self.lifeline is not None)
        if watch_parent and self.lifeline is not None:
            fds[CHILD_FD] = self.lifeline.read_fd
        if self.preforked is not None and self.preforked.adopt(role, argv, child, self.reactor):
            how = "forked"
        else:
            self.reactor.spawnProcess(
                child, self._executable(argv[0]), argv, env=self.env, childFDs=fds
            )
            how = "started"
        self.children.append(child)
        self.note(f"{how} {role} process {child.pid}: {shlex.join(argv)}")
        return child

    def run(self, argv: Sequence[str]) -> Deferred:
        collector = _Collector()
        try:
            executable = self._executable(argv[0])
            self.reactor.spawnProcess(collector, executable, list(argv), env=self.env)
        except OSError as exc:
            return defer.fail(exc)
        self.note(f"running: {shlex.join(argv)}")

        def report(result: tuple[int, str]) -> tuple[int, str]:
            code, output = result
            tail = f": {output.strip()[-500:]}" if output.strip() else ""
            self.note(f"{argv[0]} exited with code {code}{tail}")
            return result

        return collector.done.addCallback(report)


class _Collector(ProcessProtocol):
    """Collects a short-lived process's output and exit code for :meth:`run`."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        status = ExitStatus.from_failure(reason)
        code = status.code if status.signal is None else -status.signal
        text = b"".join(self.out + self.err).decode("utf-8", "replace")
        self.done.callback((code if code is not None else -1, text))
