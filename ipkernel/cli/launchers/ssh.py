"""The ``ssh`` launcher: engines on the hosts of a host file, after copying the key file there.

A host file has ``host [n_engines]`` per line (:func:`parse_host_file`); each host needs a
Python of this one's version with ipkernel installed (by default at the same path), and ssh
logins without a password. Every host is checked first (:mod:`.hostcheck`), so that one
message lists every host that cannot run engines, and why, before any engine starts.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred

from ipkernel.cli.launchers.base import (
    EngineCommand,
    Launcher,
    LauncherError,
    LaunchSettings,
    wait_for_file,
)
from ipkernel.cli.launchers.hostcheck import diagnose, prepare_command
from ipkernel.cli.lifeline import OPTION as LIFELINE_OPTION
from ipkernel.cli.processes import DEFAULT_GRACE, ProcessRunner, terminate

__all__ = ["HostEntry", "SSHLauncher", "parse_host_file"]


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

    The hosts need a Python of this one's version with ipkernel installed, at
    ``command.python`` (by default this one's path; ``--engine-python``), and ssh logins
    that need no password (the commands run with ``BatchMode=yes``). Starting runs, on every
    host at once, one ``ssh`` that creates ``~/.ipkernel/security`` (0700) and checks that
    Python (:mod:`.hostcheck`); if any host fails, nothing starts and the
    :class:`LauncherError` lists each such host with what to do. Then, once the controller
    has written the engine key file (``key_file``), it is copied to each host with ``scp
    -p`` (mode 0600 kept), and each engine runs as ``ssh host 'echo ipengine-pid $$; exec
    <python> -m ipkernel.cli.ipengine --furl-file <remote key file>'``: the first line of
    output is the remote engine's PID. Stopping sends ``kill -TERM`` to those PIDs over
    ssh, then ends the local ssh clients. Each engine also watches its standard input,
    which the local ssh client's carries: should ipcluster be killed, or the connection
    be lost, the remote engines end too.

    The controller must listen where the hosts can reach it (``--ip 0.0.0.0`` and, if
    needed, ``--location``).
    """

    name = "ssh"
    summary = "the hosts of --hostfile"
    required_options = ("hostfile",)
    remote = True
    requires = {
        "ssh": "install an OpenSSH client, or use --launcher local",
        "scp": "install an OpenSSH client, or use --launcher local",
    }
    #: Where the key file goes on each host, relative to the remote home directory.
    REMOTE_KEY_FILE = ".ipkernel/security/ipcontroller-engine.furl"
    # No password prompts (there is no terminal to answer them); give up on a host that
    # does not answer within 10 s rather than TCP's minutes.
    SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
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

    @classmethod
    def for_cluster(
        cls, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
    ) -> SSHLauncher:
        """The hosts of ``settings.hostfile``; :class:`LauncherError` if it is missing or bad."""
        hostfile = settings.hostfile
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
        return cls(runner, command, hosts, settings.key_file, settings.key_timeout)

    # Command lines (public so that they can be checked without running them).

    def prepare_argv(self, host: str) -> list[str]:
        """The command that creates the remote security directory (mode 0700) and checks
        the engines' Python there (:func:`~.hostcheck.prepare_command`)."""
        remote_dir = str(Path(self.REMOTE_KEY_FILE).parent)
        return ["ssh", *self.SSH_OPTIONS, host, prepare_command(remote_dir, self.command.python)]

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
        """The ``ssh`` command that runs one engine on ``host`` and reports its PID first.

        The engine's lifeline is its standard input (``--lifeline-fd 0``), which ``ssh``
        carries from the local ssh client's: held open by ipcluster (:meth:`start`), it
        ends when ipcluster or the ssh connection does, and the engine with it.
        """
        engine = shlex.join(
            [*self.command.argv(furl_file=self.REMOTE_KEY_FILE), LIFELINE_OPTION, "0"]
        )
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
        hosts = list(dict.fromkeys(entry.host for entry in self.hosts))
        # The hosts are checked while the controller starts and writes the key file.
        key_written = wait_for_file(self.runner.clock, self.key_file, self.key_timeout)
        try:
            yield self._each_host(hosts, self.prepare_argv, self._check_failed)
        except LauncherError:
            key_written.cancel()
            key_written.addErrback(lambda f: f.trap(CancelledError))
            raise
        yield key_written
        yield self._each_host(hosts, self.copy_argv, self._copy_failed)
        for entry in self.hosts:
            for _ in range(entry.engines):
                self._add(
                    self.runner.spawn(
                        "ssh-engine",
                        self.engine_argv(entry.host),
                        on_line=self._pid_catcher(entry.host),
                        hold_stdin=True,
                    )
                )
        return self.engine_count

    @defer.inlineCallbacks
    def _each_host(
        self,
        hosts: Sequence[str],
        argv_for: Callable[[str], list[str]],
        failed: Callable[[str, int, str], str | None],
    ) -> Deferred:
        """Run ``argv_for(host)`` on every host at once; raise :class:`LauncherError`
        listing every host for which ``failed(host, code, output)`` says what is wrong."""
        results = yield defer.gatherResults(
            [self.runner.run(argv_for(host)) for host in hosts], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure)
        problems = [
            problem
            for host, (code, output) in zip(hosts, results, strict=True)
            if (problem := failed(host, code, output)) is not None
        ]
        if problems:
            count = f"{len(problems)} of {len(hosts)} hosts"
            raise LauncherError(
                f"{count} cannot run engines:\n" + "\n".join(f"  {p}" for p in problems)
            )

    def _check_failed(self, host: str, code: int, output: str) -> str | None:
        return diagnose(host, self.command.python, code, output)

    def _copy_failed(self, host: str, code: int, output: str) -> str | None:
        if code == 0:
            return None
        last = output.strip().splitlines()[-1:] or ["no output"]
        return (
            f"{host}: copying the engine key file failed (scp exit code {code}: {last[0]}); "
            f"check that 'scp {self.key_file} {host}:{self.REMOTE_KEY_FILE}' works"
        )

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
