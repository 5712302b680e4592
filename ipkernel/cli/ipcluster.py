"""``ipcluster``: start a controller and N engines with one command, and stop them all again.

::

    ipcluster -n 4              # or: ipcluster start -n 4
    ipcluster stop              # from another terminal: stops the running ipcluster

``ipcluster start`` runs one controller (``python -m ipkernel.cli.ipcontroller``) and the
engines at the same time (engines wait for the controller's key file by themselves). Local
engines are forked from one Python that has loaded the engine code once
(:mod:`ipkernel.cli.forkengines`), which makes N engines start about as fast as one;
``--exec-engines`` runs ``python -m ipkernel.cli.ipengine`` for each instead. It waits
until every engine has registered, prints the Python lines that connect a client, and runs
until Ctrl-C, SIGTERM or ``ipcluster stop``. It then stops every process it started, by PID
(SIGTERM, then SIGKILL after a few seconds), waits for each, and exits 0. It exits non-zero,
with a message and the end of the failing process's output, when the controller or an
engine ends or does not come up within ``--timeout`` seconds; a controller that stops
later (for example ``mec.kill(controller=True)``) ends the cluster too.

Children's output does not reach the terminal: it is appended, line by line and tagged with
the child's role and PID, to ``<log-dir>/ipcluster-<pid>.log`` (the children also keep
their own log files there).

The pid file ``<ipkernel_dir>/ipcluster.pid`` (:mod:`ipkernel.cli.pidfile`) holds the
ipcluster's PID and a ``<role> <pid>`` line per process it started; ``ipcluster stop`` sends
SIGTERM to the first and waits until it is gone. One ipcluster runs per ``$IPKERNEL_DIR``;
a pid file left by one that was killed is removed, and the processes it lists that are still
running ipkernel are stopped, by ``ipcluster stop`` and by the next ``ipcluster start``.

Engines elsewhere: ``--launcher mpi|ssh|slurm`` (see :mod:`ipkernel.cli.launchers`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.python import usage
from twisted.python.failure import Failure

from ipkernel import paths, tap
from ipkernel.cli import launchers, processes
from ipkernel.cli.pidfile import (
    ClusterRecord,
    PidFileError,
    pid_file_path,
    process_runs,
    read_pid_file,
    remove_pid_file,
    stop_leftovers,
    take_pid_file,
    wait_gone,
    write_pid_file,
)

__all__ = [
    "Cluster",
    "ClusterError",
    "StartOptions",
    "StopOptions",
    "StopRequested",
    "connect_lines",
    "controller_argv",
    "engine_args",
    "main",
    "start_main",
    "stop_main",
]

CONTROLLER_MODULE = "ipkernel.cli.ipcontroller"
#: Seconds between SIGTERM and SIGKILL when stopping children.
GRACE = processes.DEFAULT_GRACE
# How often to look for the key file and ask for the engine ids while starting.
_POLL_INTERVAL = 0.025
# Lines of a failed child's output quoted on the terminal.
_QUOTED_LINES = 12

_LAUNCHER_NAMES = tuple(launchers.LAUNCHERS)


class ClusterError(Exception):
    """The cluster cannot start or run; the message says what failed and where to look."""


class StopRequested(ClusterError):
    """A signal or ``ipcluster stop`` came while the cluster was starting."""


# --- options ----------------------------------------------------------------------------


def _engine_count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"the number of engines (-n) must be a positive integer, not {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {value!r}")
    return number


class StartOptions(tap.Options):
    """Options of ``ipcluster [start]``: the cluster's own, plus every controller option."""

    synopsis = "Usage: ipcluster [start] [options]\n       ipcluster stop [options]"
    longdesc = (
        "Start a controller and N engines, wait until every engine has registered, print "
        "how to connect a client, and run until Ctrl-C, SIGTERM or 'ipcluster stop' "
        "(see 'ipcluster stop --help'); then stop every process started. The controller "
        "options are passed to the controller; --security-dir and --log-dir to the engines "
        "too. Children's output goes to <log-dir>/ipcluster-<pid>.log."
    )
    optParameters = [
        [
            "n",
            "n",
            os.cpu_count() or 1,
            "Number of engines (default: the number of CPUs).",
            _engine_count,
        ],
        [
            "launcher",
            None,
            "local",
            "How to start engines: local (subprocesses), mpi (mpiexec), ssh (--hostfile), "
            "slurm (sbatch/srun).",
        ],
        [
            "hostfile",
            None,
            None,
            "For --launcher ssh: a file of 'host [n_engines]' lines (# comments); it sets "
            "the number of engines.",
        ],
        [
            "timeout",
            None,
            30.0,
            "Seconds to wait for the controller and every engine to come up.",
            _seconds,
        ],
    ]
    optFlags = [
        [
            "exec-engines",
            None,
            "Start each local engine as its own 'python -m ipkernel.cli.ipengine' instead of "
            "forking them all from one Python that has loaded the engine code (slower).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["engine-arg"] = []

    def opt_engine_arg(self, value: str) -> None:
        """ARG: pass ARG on to every ipengine, e.g. --engine-arg=--property=gpu=1 (repeatable)."""
        self["engine-arg"].append(value)

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        if self["launcher"] not in _LAUNCHER_NAMES:
            raise usage.UsageError(
                f"--launcher must be one of {', '.join(_LAUNCHER_NAMES)}, not {self['launcher']!r}"
            )
        if self["launcher"] == "ssh" and not self["hostfile"]:
            raise usage.UsageError("--launcher ssh needs --hostfile FILE")


class StopOptions(usage.Options):
    """Options of ``ipcluster stop``."""

    synopsis = "Usage: ipcluster stop [options]"
    longdesc = (
        "Stop the ipcluster running for this $IPKERNEL_DIR (found by its pid file, "
        "<ipkernel_dir>/ipcluster.pid): send it SIGTERM and wait until it has stopped "
        "every process it started and exited."
    )
    optParameters = [
        ["timeout", None, 30.0, "Seconds to wait for the ipcluster to exit.", _seconds],
    ]


def controller_argv(options: usage.Options, python: str = sys.executable) -> list[str]:
    """The controller's command line: every controller option given to ipcluster, passed on.

    Options left at their default are not repeated; directories are made absolute.
    """
    argv = [python, "-m", CONTROLLER_MODULE]
    for name, _short, default, *_rest in tap.Options.optParameters:
        value = options[name]
        if value is None or value == default:
            continue
        if name in ("security-dir", "log-dir", "db"):
            value = str(Path(value).expanduser().absolute())
        argv += [f"--{name}", str(value)]
    for name, *_rest in tap.Options.optFlags:
        if options[name]:
            argv.append(f"--{name}")
    return argv


def engine_args(options: usage.Options) -> tuple[str, ...]:
    """The ``ipengine`` options other than ``--furl-file``: directories given, ``--engine-arg``."""
    args: list[str] = []
    if options["security-dir"]:
        args += ["--security-dir", str(paths.security_dir(options["security-dir"]))]
    if options["log-dir"]:
        args += ["--log-dir", str(paths.log_dir(options["log-dir"]))]
    return (*args, *options["engine-arg"])


def connect_lines(security_dir: Path, has_task_client: bool = True) -> list[str]:
    """The Python lines that connect clients to a controller with key files in ``security_dir``.

    The short form (no argument) is used when that is the default location
    (``~/.ipkernel/security``); otherwise the key files are named, so the lines work in a
    session whatever its ``IPKERNEL_DIR``.
    """
    default = Path.home().absolute() / ".ipkernel" / "security"
    explicit = Path(security_dir) != default
    mec = repr(str(Path(security_dir) / paths.MEC_FURL)) if explicit else ""
    tc = repr(str(Path(security_dir) / paths.TC_FURL)) if explicit else ""
    lines = ["from ipkernel import client", f"mec = client.MultiEngineClient({mec})"]
    if has_task_client:
        lines.append(f"tc = client.TaskClient({tc})")
    return lines


def _remove_stale_key_files(security: Path) -> None:
    # Engines and the poller start with the controller: a key file from an earlier run
    # would send them to a dead (or another) controller's address.
    for name in (paths.ENGINE_FURL, paths.MEC_FURL, paths.TC_FURL):
        try:
            (security / name).unlink()
        except FileNotFoundError:
            pass


# --- the running cluster ------------------------------------------------------------------


class Cluster:
    """One controller and its engines, inside a main-thread reactor.

    :meth:`start` launches everything and fires once every engine has registered (or
    errbacks with :class:`ClusterError`). :attr:`ended` fires with ``(exit_code, reason,
    announce)`` when something ends the cluster: :meth:`request_stop` (exit code 0, nothing
    to announce) or the controller exiting (announced; exit code 0 if it stopped cleanly).
    :meth:`stop` stops every process started and fires once they are all gone.
    """

    def __init__(
        self,
        reactor: Any,
        options: usage.Options,
        record: ClusterRecord,
        pid_file: Path,
        log: TextIO,
        log_path: Path,
        err: TextIO,
        runner: processes.ProcessRunner | None = None,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.record = record
        self.pid_file = pid_file
        self.log = log
        self.log_path = log_path
        self.err = err
        self.runner = runner or processes.ReactorProcessRunner(reactor, log, os.environ)
        self.security = paths.security_dir(options["security-dir"])
        self.controller: processes.ChildProcess | None = None
        self.launcher: launchers.Launcher | None = None
        self.ended: Any = None
        self.started_at = 0.0
        self._startup: Any = None
        self._stopping: Any = None
        self._state = "new"

    def note(self, message: str) -> None:
        """Write a line of ipcluster's own to the cluster log."""
        try:
            self.log.write(f"[ipcluster {os.getpid()}] {message}\n")
        except (OSError, ValueError):
            pass

    def processes(self) -> list[processes.ProcessHandle]:
        """Every process started so far: the controller, the launcher's, any other child."""
        found: dict[int, processes.ProcessHandle] = {}
        for handle in [
            *([self.controller] if self.controller is not None else []),
            *(self.launcher.processes if self.launcher is not None else []),
            *getattr(self.runner, "children", []),
        ]:
            found.setdefault(id(handle), handle)
        return list(found.values())

    def _save_record(self) -> None:
        self.record.children = [(p.role, p.pid) for p in self.processes() if p.pid is not None]
        try:
            write_pid_file(self.pid_file, self.record)
        except OSError as exc:
            self.note(f"cannot update {self.pid_file}: {exc}")

    def start(self) -> Deferred:
        """Start the controller and the engines; fire with the engine count once all are in.

        Errbacks with :class:`ClusterError` if a process ends or the deadline passes first,
        with :class:`StopRequested` after :meth:`request_stop`. Raises
        :class:`~ipkernel.cli.launchers.LauncherError` at once if the launcher cannot be
        used (a program missing, a bad host file), and :class:`ClusterError` if the
        controller cannot be started.
        """
        options = self.options
        self._state = "starting"
        self.started_at = self.reactor.seconds()
        self.ended = Deferred()
        self._startup = startup = Deferred()
        command = launchers.EngineCommand(
            str(self.security / paths.ENGINE_FURL), engine_args(options)
        )
        self.launcher = launchers.make_launcher(
            options["launcher"],
            self.runner,
            command,
            key_file=self.security / paths.ENGINE_FURL,
            log_dir=paths.log_dir(options["log-dir"]),
            hostfile=options["hostfile"],
            key_timeout=options["timeout"],
            fork=not options["exec-engines"],
        )
        self.launcher.on_process = self._engine_added
        if options["launcher"] in ("ssh", "slurm") and options["ip"].startswith("127."):
            print(
                f"ipcluster: warning: the controller listens on {options['ip']} only; engines "
                "on other hosts cannot reach it (use --ip 0.0.0.0)",
                file=self.err,
                flush=True,
            )
        if not options["reuse-keys"]:
            _remove_stale_key_files(self.security)
        argv = controller_argv(options)
        try:
            self.controller = self.runner.spawn("controller", argv)
        except OSError as exc:
            raise ClusterError(f"cannot start the controller ({argv[0]}): {exc}")
        self.controller.when_ended().addCallback(self._controller_ended)
        self._save_record()
        launched = maybeDeferred(self.launcher.start, options["n"])
        launched.addCallback(self._launched)
        launched.addErrback(self._fail_startup)
        return startup

    def _launched(self, count: int) -> None:
        self.note(f"{self.launcher.name} launcher started; waiting for {count} engines")
        d = self._wait_for_engines(count)
        d.addCallback(lambda _: self._started(count))
        d.addErrback(self._fail_startup)

    def _engine_added(self, handle: processes.ProcessHandle) -> None:
        if isinstance(handle, processes.ForkedEngine):
            self.note(f"forked engine process {handle.pid}")
        self._save_record()
        handle.when_ended().addCallback(lambda status: self._engine_ended(handle, status))

    def _started(self, count: int) -> None:
        if self._startup.called:
            return
        self._state = "running"
        elapsed = self.reactor.seconds() - self.started_at
        self.note(f"{count} engines registered {elapsed:.2f} s after start")
        self._startup.callback(count)

    def _fail_startup(self, failure: Failure) -> None:
        if self._startup.called:
            return
        self._state = "failed"
        if failure.check(ClusterError):
            error = failure.value
        elif failure.check(launchers.LauncherError, OSError):
            error = ClusterError(f"cannot start the engines: {failure.getErrorMessage()}")
        else:
            self.note(f"unexpected error while starting: {failure.getTraceback()}")
            error = ClusterError(f"unexpected error while starting: {failure.getErrorMessage()}")
        self._startup.errback(error)

    def _child_failure(
        self, child: processes.ProcessHandle, status: processes.ExitStatus
    ) -> ClusterError:
        what = (
            "the controller" if child.role == "controller" else f"an engine process ({child.role})"
        )
        lines = child.tail()[-_QUOTED_LINES:]
        quoted = "".join(f"\n    {line}" for line in lines) if lines else "\n    (no output)"
        return ClusterError(
            f"{what} (pid {child.pid}) {status.describe()} while the cluster was starting; "
            f"its last output:{quoted}\nfull output: {self.log_path}"
        )

    def _controller_ended(self, status: processes.ExitStatus) -> None:
        if self._state == "starting":
            self._fail_startup_with(self._child_failure(self.controller, status))
        elif self._state == "running":
            self._state = "ending"
            code = 0 if status.clean or status.signal in (signal.SIGINT, signal.SIGTERM) else 1
            why = f"the controller (pid {self.controller.pid}) {status.describe()}"
            self.ended.callback((code, why, True))

    def _engine_ended(self, child: processes.ProcessHandle, status: processes.ExitStatus) -> None:
        if self._state == "starting":
            self._fail_startup_with(self._child_failure(child, status))
        elif self._state == "running":
            print(
                f"ipcluster: {child.role} process {child.pid} {status.describe()}; "
                f"its output is in {self.log_path}",
                file=self.err,
                flush=True,
            )

    def _fail_startup_with(self, error: ClusterError) -> None:
        self._fail_startup(Failure(error))

    def _wait_for_engines(self, count: int) -> Deferred:
        """Poll: connect once the MultiEngine key file exists, then ask for ids until ``count``."""
        from twisted.internet.task import deferLater

        from ipkernel.client.multiengine import AsyncMultiEngineClient
        from ipkernel.security import read_key_file

        reactor = self.reactor
        mec = self.security / paths.MEC_FURL
        deadline = self.started_at + self.options["timeout"]
        timeout = self.options["timeout"]

        def remaining() -> float:
            # A hung connection must not keep ipcluster past its deadline.
            return max(deadline - reactor.seconds(), 0.1)

        @inlineCallbacks
        def poll():
            client = None
            last_error = None
            ids: list = []
            try:
                while not self._startup.called:
                    if reactor.seconds() > deadline:
                        if client is None:
                            why = (
                                f"the controller wrote no key file ({mec})"
                                if not mec.exists()
                                else f"cannot connect to the controller ({last_error})"
                            )
                        else:
                            why = f"only {len(ids)} of {count} engines registered"
                        raise ClusterError(
                            f"{why} within {timeout:g} s (--timeout); see {self.log_path}"
                        )
                    if client is None:
                        if mec.exists():
                            try:
                                keyfile = read_key_file(mec)
                                connecting = AsyncMultiEngineClient.connect(
                                    reactor, keyfile, str(mec)
                                )
                                client = yield connecting.addTimeout(remaining(), reactor)
                            except Exception as exc:
                                last_error = exc
                                client = None
                    if client is not None:
                        try:
                            ids = yield client.get_ids().addTimeout(remaining(), reactor)
                        except Exception as exc:
                            last_error = exc
                            client.disconnect()
                            client = None
                        else:
                            if len(ids) >= count:
                                return ids
                    yield deferLater(reactor, _POLL_INTERVAL, lambda: None)
            finally:
                if client is not None:
                    client.disconnect()

        return poll()

    def request_stop(self, why: str) -> None:
        """End the cluster (a signal, ``ipcluster stop``): startup fails, or ``ended`` fires."""
        self.note(f"stop requested: {why}")
        if self._state == "starting":
            self._fail_startup_with(StopRequested(f"stopped ({why}) before every engine was up"))
        elif self._state == "running":
            self._state = "ending"
            self.ended.callback((0, why, False))

    def stop(self, grace: float = GRACE) -> Deferred:
        """Stop every process started (SIGTERM, SIGKILL after ``grace``); fires when all are gone.

        Idempotent: a second call returns a Deferred for the same stop.
        """
        if self._stopping is None:
            self._state = "stopping"
            self.note("stopping every process")
            parts = []
            if self.launcher is not None:
                parts.append(maybeDeferred(self.launcher.stop, grace))
            if self.controller is not None:
                parts.append(processes.terminate([self.controller], self.reactor, grace))
            d = DeferredList(parts, consumeErrors=True)
            # Whatever a launcher did, every process started here ends before ipcluster does.
            d.addCallback(lambda _: processes.terminate(self.processes(), self.reactor, grace))
            d.addCallback(self._stopped)
            self._stopping = d
        # Each caller gets its own Deferred, so that one caller's callbacks cannot change
        # what the next one sees.
        waiter: Deferred = Deferred()

        def fire(result: Any) -> Any:
            waiter.callback(None)
            return result

        self._stopping.addBoth(fire)
        return waiter

    def _stopped(self, left: list) -> list:
        if left:
            pids = ", ".join(str(p.pid) for p in left)
            print(f"ipcluster: processes {pids} did not end even after SIGKILL", file=self.err)
        self.note("every process has ended" if not left else f"still running: {left}")
        return left

    def kill_now(self) -> None:
        """SIGKILL every process started at once (a second Ctrl-C)."""
        for handle in self.processes():
            handle.signal("KILL")


def _run(cluster: Cluster, out: TextIO, err: TextIO) -> Deferred:
    """The cluster's life in the reactor; fires with the exit code."""

    @inlineCallbacks
    def life():
        try:
            count = yield cluster.start()
        except (ClusterError, launchers.LauncherError) as exc:
            print(f"ipcluster: {exc}", file=err, flush=True)
            yield cluster.stop()
            return 0 if isinstance(exc, StopRequested) else 1
        from ipkernel import client as client_module

        has_task = hasattr(client_module, "TaskClient")
        engines = f"{count} engine" if count == 1 else f"{count} engines"
        lines = connect_lines(cluster.security, has_task)
        print(
            f"ipcluster: a controller and {engines} are running "
            "(stop with Ctrl-C or `ipcluster stop`).\nConnect with:\n\n"
            + "".join(f"    {line}\n" for line in lines),
            file=out,
            flush=True,
        )
        code, why, announce = yield cluster.ended
        cluster.note(f"ending: {why}")
        if announce:
            print(f"ipcluster: {why}; stopping the engines", file=err, flush=True)
        yield cluster.stop()
        return code

    return life()


def _open_log(log_dir: Path) -> tuple[TextIO, Path]:
    directory = paths.ensure_private_dir(log_dir)
    path = directory / f"ipcluster-{os.getpid()}.log"
    return open(path, "a", buffering=1, encoding="utf-8"), path  # noqa: SIM115


def start_main(options: usage.Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run a cluster with parsed ``options`` until it is stopped; return the exit code."""
    pid_file = pid_file_path()
    try:
        record = take_pid_file(pid_file, err)
    except (PidFileError, OSError) as exc:
        print(f"ipcluster: {exc}", file=err)
        return 1
    try:
        log, log_path = _open_log(paths.log_dir(options["log-dir"]))
    except OSError as exc:
        remove_pid_file(pid_file, record.pid)
        print(f"ipcluster: cannot open the log: {exc}", file=err)
        return 1
    try:
        return _run_reactor(options, record, pid_file, log, log_path, out, err)
    finally:
        remove_pid_file(pid_file, record.pid)
        log.close()


def _run_reactor(
    options: usage.Options,
    record: ClusterRecord,
    pid_file: Path,
    log: TextIO,
    log_path: Path,
    out: TextIO,
    err: TextIO,
) -> int:
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(log, formatEventAsClassicLogText)], redirectStandardIO=False
    )
    cluster = Cluster(reactor, options, record, pid_file, log, log_path, err)
    result: list[int] = []
    signals_seen: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        signals_seen.append(name)
        if len(signals_seen) == 1:
            reactor.callFromThread(cluster.request_stop, name)
        else:
            reactor.callFromThread(cluster.kill_now)

    def go() -> None:
        # After reactor.run() has installed its own handlers: these replace them, so that
        # a signal ends the cluster (stopping every child) rather than the reactor.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        d = _run(cluster, out, err)
        d.addErrback(crashed)
        d.addCallback(finish)

    def crashed(failure: Failure) -> Deferred:
        cluster.note(failure.getTraceback())
        print(f"ipcluster: internal error: {failure.getErrorMessage()} (see {log_path})", file=err)
        return cluster.stop().addCallback(lambda _: 1)

    def finish(code: int) -> None:
        result.append(code)
        reactor.stop()

    reactor.callWhenRunning(go)
    # If anything else stops the reactor, the children still go first.
    reactor.addSystemEventTrigger("before", "shutdown", cluster.stop)
    reactor.run()
    return result[0] if result else 1


def stop_main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``ipcluster stop``: SIGTERM the running ipcluster and wait for it; return the exit code."""
    options = StopOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as exc:
        print(f"ipcluster stop: {exc}\nTry 'ipcluster stop --help'.", file=err)
        return 2
    path = pid_file_path()
    try:
        record = read_pid_file(path)
    except FileNotFoundError:
        print(f"ipcluster stop: no ipcluster is running for {path.parent} (no {path})", file=err)
        return 1
    except (OSError, ValueError) as exc:
        print(f"ipcluster stop: {exc}", file=err)
        return 1
    if not process_runs(record.pid, "ipcluster"):
        stopped = stop_leftovers(record)
        remove_pid_file(path, record.pid)
        note = f"; stopped its leftover processes {stopped}" if stopped else ""
        print(
            f"ipcluster stop: no ipcluster is running for {path.parent}: the pid file {path} "
            f"was stale (pid {record.pid} is gone) and is removed{note}",
            file=err,
        )
        return 1
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        print(f"ipcluster stop: not allowed to signal process {record.pid}", file=err)
        return 1
    if wait_gone([record.pid], options["timeout"]):
        print(
            f"ipcluster stop: ipcluster {record.pid} has not exited after "
            f"{options['timeout']:g} s; it may still be stopping its processes",
            file=err,
        )
        return 1
    print(f"ipcluster stop: stopped ipcluster {record.pid}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ipcluster [start] [options]`` or ``ipcluster stop [options]``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["stop"]:
        return stop_main(args[1:])
    if args[:1] == ["start"]:
        args = args[1:]
    options = StartOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as exc:
        print(f"ipcluster: {exc}\nTry 'ipcluster --help'.", file=sys.stderr)
        return 2
    return start_main(options)


if __name__ == "__main__":
    sys.exit(main())
