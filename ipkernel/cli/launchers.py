"""Engine launchers for ``ipcluster``: start engines somewhere, and stop them all again.

A launcher starts the engines of one cluster in one way (SPEC §8):

- :class:`LocalLauncher`: engines on this host, forked from one Python that has loaded the
  engine code (:mod:`ipkernel.cli.forkengines`), or one ``ipengine`` subprocess each;
- :class:`MPILauncher`: ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``;
- :class:`SSHLauncher`: engines on the hosts of a host file, over ``ssh``, after copying
  the engine key file there with ``scp``;
- :class:`SlurmLauncher`: a batch job (``sbatch``) that runs ``srun <python> -m
  ipkernel.cli.ipengine ...``, cancelled with ``scancel`` on stop.

Launchers start processes only through a :class:`~ipkernel.cli.processes.ProcessRunner`
(tests pass a fake that records command lines) and keep a handle on each long-lived one
(:attr:`Launcher.processes`), so that every process they started can be stopped by PID.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipkernel.cli.processes import (
    DEFAULT_GRACE,
    ChildProcess,
    ExitStatus,
    ForkedEngine,
    ProcessHandle,
    ProcessRunner,
    terminate,
)

__all__ = [
    "ENGINE_MODULE",
    "FORK_MODULE",
    "LAUNCHERS",
    "EngineCommand",
    "HostEntry",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "MPILauncher",
    "SSHLauncher",
    "SlurmLauncher",
    "make_launcher",
    "parse_host_file",
    "wait_for_file",
]

#: The module every launcher runs with ``python -m`` to start an engine.
ENGINE_MODULE = "ipkernel.cli.ipengine"
#: The module that forks several local engines from one pre-loaded Python.
FORK_MODULE = "ipkernel.cli.forkengines"


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


# --- the engine command line ---------------------------------------------------------------


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


# --- launchers ---------------------------------------------------------------------------


class Launcher:
    """Starts the engines of one cluster and stops every process it started.

    Subclasses set :attr:`name` and implement :meth:`start`; :meth:`check` raises
    :class:`LauncherError` before anything starts if a program it needs is missing.
    :attr:`processes` lists the long-lived local processes started (engines, ``mpiexec``,
    ``ssh`` clients), which the default :meth:`stop` terminates by PID.
    """

    name: ClassVar[str] = "?"
    #: Programs that must be on PATH, with the advice given when one is missing.
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, runner: ProcessRunner, command: EngineCommand) -> None:
        self.runner = runner
        self.command = command
        self.processes: list[ProcessHandle] = []
        #: Called with each process handle as it is added to :attr:`processes`.
        self.on_process: Callable[[ProcessHandle], Any] | None = None

    def _add(self, process: ProcessHandle) -> ProcessHandle:
        self.processes.append(process)
        if self.on_process is not None:
            self.on_process(process)
        return process

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

    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        """Stop everything started (see :func:`terminate`); fires when it has all ended."""
        return terminate(self.processes, self.runner.clock, grace)


class LocalLauncher(Launcher):
    """``n`` engines on this host.

    By default (``fork=True``) one ``python -m ipkernel.cli.forkengines N ...`` loads the
    engine's code once and forks the ``n`` engines, each then known by its PID as a
    :class:`ForkedEngine`; with ``fork=False`` each engine is its own ``python -m
    ipkernel.cli.ipengine ...`` (slower to start: every interpreter imports everything).
    """

    name = "local"

    def __init__(self, runner: ProcessRunner, command: EngineCommand, fork: bool = True) -> None:
        super().__init__(runner, command)
        # Without fork (Windows), every engine is its own interpreter.
        self.fork = fork and hasattr(os, "fork")
        self._forked: dict[int, ForkedEngine] = {}

    def fork_argv(self, n: int) -> list[str]:
        """The command line of the process that forks ``n`` engines."""
        engine = self.command.argv()
        return [self.command.python, "-m", FORK_MODULE, str(n), *engine[3:]]

    def start(self, n: int) -> Deferred:
        if not self.fork:
            for _ in range(n):
                self._add(self.runner.spawn("engine", self.command.argv()))
            return defer.succeed(n)
        parent = self.runner.spawn("forkengines", self.fork_argv(n))
        # No output is read before the reactor runs again, so nothing is missed.
        parent.on_line = lambda line: self._fork_report(parent, line)
        self._add(parent)
        return defer.succeed(n)

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


class MPILauncher(Launcher):
    """One ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``; engines learn their rank.

    Stopping sends SIGTERM to ``mpiexec``, which passes it on to its ranks (Open MPI and
    MPICH both do).
    """

    name = "mpi"
    requires = {
        "mpiexec": "install Open MPI or MPICH (and mpi4py, for engines to know their rank), "
        "or use --launcher local",
    }

    def __init__(
        self, runner: ProcessRunner, command: EngineCommand, mpiexec: str = "mpiexec"
    ) -> None:
        super().__init__(runner, command)
        self.mpiexec = mpiexec

    def argv(self, n: int) -> list[str]:
        """The ``mpiexec`` command line for ``n`` engines."""
        return [self.mpiexec, "-n", str(n), *self.command.argv()]

    def start(self, n: int) -> Deferred:
        self._add(self.runner.spawn("mpiexec", self.argv(n)))
        return defer.succeed(n)


@dataclass(frozen=True)
class HostEntry:
    """One line of an ssh host file: a host (``[user@]host``) and how many engines to run there."""

    host: str
    engines: int = 1


def parse_host_file(text: str, source: str = "the host file") -> list[HostEntry]:
    """Parse a host file: ``host [n_engines]`` per line.

    ``#`` starts a comment (whole line or after the entry); blank lines are skipped; the
    engine count defaults to 1. Raises ``ValueError`` naming ``source`` and the line number
    for a line with more than two fields, a count that is not a positive integer, or a host
    that starts with ``-`` (it would be taken as an ssh option), and for a file with no
    host at all.
    """
    entries: list[HostEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}, line {number}"
        if len(fields) > 2:
            raise ValueError(f"{where}: expected 'host [n_engines]', got {raw.strip()!r}")
        host = fields[0]
        if host.startswith("-"):
            raise ValueError(f"{where}: {host!r} is not a host name")
        count = 1
        if len(fields) == 2:
            try:
                count = int(fields[1])
            except ValueError:
                count = 0
            if count < 1:
                raise ValueError(
                    f"{where}: the number of engines must be a positive integer, not {fields[1]!r}"
                )
        entries.append(HostEntry(host, count))
    if not entries:
        raise ValueError(f"{source} names no host")
    return entries


class SSHLauncher(Launcher):
    """Engines on other hosts over ``ssh``, as many per host as the host file says.

    The hosts need the same Python at the same path (``command.python``, by default this
    one) with ipkernel installed, and ssh logins that need no password (the commands run
    with ``BatchMode=yes``). For each host the launcher waits for the engine key file
    (``key_file``, written by the controller), creates ``~/.ipkernel/security`` there,
    copies the key file into it with ``scp -p`` (mode 0600 kept), then runs each engine as
    ``ssh host 'echo ipengine-pid $$; exec <python> -m ipkernel.cli.ipengine --furl-file
    <remote key file>'``: the first line of output is the remote engine's PID. Stopping
    sends ``kill -TERM`` to those PIDs over ssh, then ends the local ssh clients.

    The controller must listen where the hosts can reach it (``--ip 0.0.0.0`` and, if
    needed, ``--location``).
    """

    name = "ssh"
    requires = {
        "ssh": "install an OpenSSH client, or use --launcher local",
        "scp": "install an OpenSSH client, or use --launcher local",
    }
    #: Where the key file goes on each host, relative to the remote home directory.
    REMOTE_KEY_FILE = ".ipkernel/security/ipcontroller-engine.furl"
    SSH_OPTIONS = ("-o", "BatchMode=yes")
    PID_MARKER = "ipengine-pid"

    def __init__(
        self,
        runner: ProcessRunner,
        command: EngineCommand,
        hosts: Sequence[HostEntry],
        key_file: Path,
        key_timeout: float = 30.0,
    ) -> None:
        super().__init__(runner, command)
        self.hosts = list(hosts)
        self.key_file = Path(key_file)
        self.key_timeout = key_timeout
        self.remote_pids: dict[str, list[int]] = {}

    # Command lines (public so that they can be checked without running them).

    def mkdir_argv(self, host: str) -> list[str]:
        """The command that creates the remote security directory (mode 0700)."""
        remote_dir = str(Path(self.REMOTE_KEY_FILE).parent)
        quoted = shlex.quote(remote_dir)
        script = f"umask 077 && mkdir -p {quoted} && chmod 700 {quoted}"
        return ["ssh", *self.SSH_OPTIONS, host, script]

    def copy_argv(self, host: str) -> list[str]:
        """The ``scp`` command that copies the engine key file to ``host``."""
        return [
            "scp",
            "-p",
            "-q",
            *self.SSH_OPTIONS,
            str(self.key_file),
            f"{host}:{self.REMOTE_KEY_FILE}",
        ]

    def engine_argv(self, host: str) -> list[str]:
        """The ``ssh`` command that runs one engine on ``host`` and reports its PID first."""
        engine = shlex.join(self.command.argv(furl_file=self.REMOTE_KEY_FILE))
        return ["ssh", *self.SSH_OPTIONS, host, f"echo {self.PID_MARKER} $$; exec {engine}"]

    def kill_argv(self, host: str, pids: Sequence[int]) -> list[str]:
        """The ``ssh`` command that sends SIGTERM to engines ``pids`` on ``host``."""
        return ["ssh", *self.SSH_OPTIONS, host, "kill -TERM " + " ".join(str(p) for p in pids)]

    @property
    def engine_count(self) -> int:
        """The number of engines the host file asks for."""
        return sum(entry.engines for entry in self.hosts)

    @defer.inlineCallbacks
    def start(self, n: int) -> Deferred:
        yield wait_for_file(self.runner.clock, self.key_file, self.key_timeout)
        hosts = list(dict.fromkeys(entry.host for entry in self.hosts))
        for argvs in ([self.mkdir_argv(h) for h in hosts], [self.copy_argv(h) for h in hosts]):
            results = yield defer.gatherResults(
                [self.runner.run(argv) for argv in argvs], consumeErrors=True
            ).addErrback(lambda f: f.value.subFailure)
            for argv, (code, output) in zip(argvs, results, strict=True):
                if code != 0:
                    raise LauncherError(
                        f"{shlex.join(argv)} failed (exit code {code}): {output.strip()}"
                    )
        for entry in self.hosts:
            for _ in range(entry.engines):
                self._add(
                    self.runner.spawn(
                        "ssh-engine",
                        self.engine_argv(entry.host),
                        on_line=self._pid_catcher(entry.host),
                    )
                )
        return self.engine_count

    def _pid_catcher(self, host: str) -> Callable[[str], None]:
        seen = []

        def on_line(line: str) -> None:
            if seen:
                return
            fields = line.split()
            if len(fields) == 2 and fields[0] == self.PID_MARKER and fields[1].isdigit():
                seen.append(True)
                self.remote_pids.setdefault(host, []).append(int(fields[1]))

        return on_line

    @defer.inlineCallbacks
    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        kills = [
            self.runner.run(self.kill_argv(host, pids)).addTimeout(grace, self.runner.clock)
            for host, pids in self.remote_pids.items()
            if pids
        ]
        # A host that does not answer must not keep the local ssh clients alive.
        yield defer.DeferredList(kills, consumeErrors=True)
        left = yield terminate(self.processes, self.runner.clock, grace)
        return left


class SlurmLauncher(Launcher):
    """A Slurm batch job of ``n`` tasks, each an engine started by ``srun``.

    The batch script is written to ``script_path`` and submitted with ``sbatch --parsable``;
    the job id is kept and the job cancelled with ``scancel <id>`` on stop. Partition, time
    limit and account come from the usual ``SBATCH_*`` environment variables
    (``SBATCH_PARTITION``, ``SBATCH_TIMELIMIT``, ``SBATCH_ACCOUNT``...), which ``sbatch``
    reads itself. The engines read the key file and write logs at the same paths as here,
    so those must be on a file system shared with the compute nodes, and the controller must
    listen where they can reach it (``--ip 0.0.0.0``).
    """

    name = "slurm"
    requires = {
        "sbatch": "run ipcluster on a Slurm login node, or use --launcher local",
        "scancel": "run ipcluster on a Slurm login node, or use --launcher local",
    }

    def __init__(
        self,
        runner: ProcessRunner,
        command: EngineCommand,
        script_path: Path,
        output_dir: Path,
        job_name: str = "ipengine",
    ) -> None:
        super().__init__(runner, command)
        self.script_path = Path(script_path)
        self.output_dir = Path(output_dir)
        self.job_name = job_name
        self.job_id: str | None = None

    def script(self, n: int) -> str:
        """The batch script for ``n`` engines."""
        output = shlex.quote(str(self.output_dir / "ipengine-slurm-%j.log"))
        return "\n".join(
            [
                "#!/bin/sh",
                f"#SBATCH --job-name={self.job_name}",
                f"#SBATCH --ntasks={n}",
                f"#SBATCH --output={output}",
                "# Written by ipcluster: one ipkernel engine per task; scancel on stop.",
                f"exec srun {shlex.join(self.command.argv())}",
                "",
            ]
        )

    def submit_argv(self) -> list[str]:
        """The ``sbatch`` command line."""
        return ["sbatch", "--parsable", str(self.script_path)]

    def cancel_argv(self) -> list[str]:
        """The ``scancel`` command line (after a successful submission)."""
        if self.job_id is None:
            raise LauncherError("no Slurm job was submitted")
        return ["scancel", self.job_id]

    @staticmethod
    def parse_job_id(output: str) -> str:
        """The job id in ``sbatch --parsable`` output: ``<id>`` or ``<id>;<cluster>``."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        job = lines[-1].split(";", 1)[0] if lines else ""
        if not job.isdigit():
            raise LauncherError(f"sbatch did not print a job id: {output.strip()!r}")
        return job

    @defer.inlineCallbacks
    def start(self, n: int) -> Deferred:
        self.script_path.parent.mkdir(parents=True, exist_ok=True)
        self.script_path.write_text(self.script(n))
        code, output = yield self.runner.run(self.submit_argv())
        if code != 0:
            raise LauncherError(f"sbatch failed (exit code {code}): {output.strip()}")
        self.job_id = self.parse_job_id(output)
        return n

    @defer.inlineCallbacks
    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        if self.job_id is not None:
            try:
                yield self.runner.run(self.cancel_argv()).addTimeout(grace, self.runner.clock)
            except Exception:
                pass
        left = yield terminate(self.processes, self.runner.clock, grace)
        return left


#: The launchers by ``--launcher`` name.
LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (LocalLauncher, MPILauncher, SSHLauncher, SlurmLauncher)
}


def make_launcher(
    name: str,
    runner: ProcessRunner,
    command: EngineCommand,
    *,
    key_file: Path,
    log_dir: Path,
    hostfile: str | None = None,
    key_timeout: float = 30.0,
    fork: bool = True,
) -> Launcher:
    """Build the launcher called ``name`` (``local``, ``mpi``, ``ssh``, ``slurm``).

    ``fork`` chooses how the local launcher starts engines (see :class:`LocalLauncher`).

    Raises :class:`LauncherError` for an unknown name, a missing or bad host file, or a
    program that is not installed (:meth:`Launcher.check`).
    """
    launcher: Launcher
    if name == "local":
        launcher = LocalLauncher(runner, command, fork=fork)
    elif name == "mpi":
        launcher = MPILauncher(runner, command)
    elif name == "ssh":
        if not hostfile:
            raise LauncherError(
                "--launcher ssh needs --hostfile FILE (lines of 'host [n_engines]')"
            )
        try:
            text = Path(hostfile).read_text()
        except OSError as exc:
            raise LauncherError(f"cannot read the host file {hostfile}: {exc.strerror or exc}")
        try:
            hosts = parse_host_file(text, str(hostfile))
        except ValueError as exc:
            raise LauncherError(str(exc))
        launcher = SSHLauncher(runner, command, hosts, key_file, key_timeout)
    elif name == "slurm":
        launcher = SlurmLauncher(
            runner, command, log_dir / f"ipcluster-{os.getpid()}-slurm.sh", log_dir
        )
    else:
        raise LauncherError(f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
    launcher.check()
    return launcher
