"""One running cluster: a controller and its engines, started, watched and stopped by PID.

:class:`ClusterSupervisor` starts the controller (``python -m ipkernel.cli.ipcontroller``)
and the engines (through a launcher, :mod:`ipkernel.cli.launchers`) at the same time, waits
until every engine has registered, keeps the pid file's list of processes up to date, and
ends when asked to or when the controller ends; it then stops every process it started.
With a task store (``--db``), a controller that dies is restarted instead, with
``--reuse-keys``, so that the engines and clients reconnect and no task is lost. The
controller and local engines watch its lifeline (:mod:`ipkernel.cli.lifeline`), so they
end with ipcluster even when it is killed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.python import usage
from twisted.python.failure import Failure

from ipkernel import paths
from ipkernel.cli import processes
from ipkernel.cli.ipcluster.options import controller_argv, engine_args
from ipkernel.cli.ipcluster.pidfile import ClusterRecord, write_pid_file
from ipkernel.cli.ipcluster.registration import RegistrationTimeout, wait_for_engines
from ipkernel.cli.ipcluster.restarts import RestartPolicy, died
from ipkernel.cli.launchers import (
    EngineCommand,
    Launcher,
    LauncherError,
    LaunchSettings,
    make_launcher,
)
from ipkernel.cli.launchers.local import LocalLauncher
from ipkernel.cli.lifeline import Lifeline
from ipkernel.cli.prefork import Preforked, load_shared
from ipkernel.errors import ClusterError

__all__ = ["GRACE", "ClusterSupervisor", "StopRequested", "prefork_children"]

#: Seconds between SIGTERM and SIGKILL when stopping children.
GRACE = processes.DEFAULT_GRACE
# Lines of a failed child's output quoted on the terminal.
_QUOTED_LINES = 12


class StopRequested(ClusterError):
    """A signal or ``ipcluster stop`` came while the cluster was starting."""


def _remove_stale_key_files(security: Path) -> None:
    """Remove the key files in ``security`` left by an earlier controller."""
    # Engines and the poller start with the controller: a key file from an earlier run
    # would send them to a dead (or another) controller's address.
    for name in (paths.ENGINE_FURL, paths.MEC_FURL, paths.TC_FURL):
        try:
            (security / name).unlink()
        except FileNotFoundError:
            pass


def prefork_children(options: usage.Options, lifeline: Lifeline) -> Preforked:
    """Fork the controller and, for the ``local`` launcher's forked engines, the process
    that forks them, now, before the reactor is installed (see :mod:`ipkernel.cli.prefork`);
    a :class:`ClusterSupervisor` given them (``preforked=``) adopts them when it starts.

    The key files of an earlier controller are removed first (unless ``--reuse-keys``), so
    that the new controller's are never mistaken for stale ones. What both children need
    is loaded first (:func:`~ipkernel.cli.prefork.load_shared`), then the engines' parent
    is forked, before the controller's code is loaded here: it loads the engines' code
    while this process loads the controller's. Nothing is forked where ``os.fork`` does
    not exist or the reactor is installed already; if a fork fails, the children not forked
    are spawned as usual.
    """
    preforked = Preforked()
    if not hasattr(os, "fork") or "twisted.internet.reactor" in sys.modules:
        return preforked
    if not options["reuse-keys"]:
        _remove_stale_key_files(paths.security_dir(options["security-dir"]))
    load_shared()
    wanted = []
    if options["launcher"] == LocalLauncher.name and not options["exec-engines"]:
        command = EngineCommand(
            str(paths.security_dir(options["security-dir"]) / paths.ENGINE_FURL),
            engine_args(options),
        )
        wanted.append(("forkengines", LocalLauncher(None, command).fork_argv(options["n"])))
    wanted.append(("controller", controller_argv(options)))
    for role, argv in wanted:
        try:
            preforked.fork(role, processes.child_argv(argv, True), lifeline.read_fd)
        except OSError:
            break
    return preforked


class ClusterSupervisor:
    """One controller and its engines, inside a main-thread reactor.

    :meth:`start` launches everything and fires once every engine has registered (or
    errbacks with :class:`ClusterError`). :attr:`ended` fires with ``(exit_code, reason,
    announce)`` when something ends the cluster: :meth:`request_stop` (exit code 0, nothing
    to announce) or the controller exiting (announced; exit code 0 if it stopped cleanly).
    :meth:`stop` stops every process started and fires once they are all gone.

    While the cluster runs, a local engine that dies (a crash, a signal) is replaced by a
    new one, and with ``--db`` a controller that dies (a crash, a signal other than
    SIGINT and SIGTERM) is started again with ``--reuse-keys``, as
    :class:`~ipkernel.cli.ipcluster.restarts.RestartPolicy` allows, unless
    ``--no-restart``; each decision is written to the log.
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
        keys_cleared: bool = False,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.record = record
        self.pid_file = pid_file
        self.log = log
        self.log_path = log_path
        self.err = err
        # The controller and local engines watch this process's lifeline: they end with it
        # even if it is killed.
        self.runner = runner or processes.ReactorProcessRunner(
            reactor, log, os.environ, lifeline=Lifeline()
        )
        # Stale key files were removed before the controller was forked (see
        # prefork_children): removing them again would remove the new controller's.
        self._keys_cleared = keys_cleared
        self.security = paths.security_dir(options["security-dir"])
        self.controller: processes.ChildProcess | None = None
        self.launcher: Launcher | None = None
        self.ended: Any = None
        self.started_at = 0.0
        self._startup: Any = None
        self._stopping: Any = None
        self._state = "new"
        self.restarts = RestartPolicy(reactor)
        # Each engine process's slot: the place of one of the engines asked for, which a
        # replacement takes over.
        self._slots: dict[processes.ProcessHandle, int] = {}
        # The launcher's last word on its engines' progress, for a timeout's message.
        self._last_report: str | None = None

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
        command = EngineCommand(
            str(self.security / paths.ENGINE_FURL),
            engine_args(options),
            python=options["engine-python"] or sys.executable,
        )
        settings = LaunchSettings(
            key_file=self.security / paths.ENGINE_FURL,
            log_dir=paths.log_dir(options["log-dir"]),
            hostfile=options["hostfile"],
            key_timeout=options["timeout"],
            fork=not options["exec-engines"],
            mpiexec=options["mpiexec"],
        )
        self.launcher = make_launcher(options["launcher"], self.runner, command, settings)
        self.launcher.on_process = self._engine_added
        self.launcher.on_report = self._launcher_report
        self.launcher.on_failure = self._launcher_failure
        if self.launcher.remote and options["ip"].startswith("127."):
            print(
                f"ipcluster: warning: the controller listens on {options['ip']} only; engines "
                "on other hosts cannot reach it (use --ip 0.0.0.0)",
                file=self.err,
                flush=True,
            )
        if not options["reuse-keys"] and not self._keys_cleared:
            _remove_stale_key_files(self.security)
        argv = controller_argv(options)
        try:
            self.controller = self.runner.spawn("controller", argv, watch_parent=True)
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
        if handle.role == "engine":
            self._slots.setdefault(handle, len(self._slots))
        self._save_record()
        handle.when_ended().addCallback(lambda status: self._engine_ended(handle, status))

    def _launcher_report(self, message: str) -> None:
        self._last_report = message
        self.note(message)
        print(f"ipcluster: {message}", file=self.err, flush=True)

    def _launcher_failure(self, message: str) -> None:
        self.note(message)
        if self._state == "starting":
            self._fail_startup_with(ClusterError(f"{message}\nfull output: {self.log_path}"))
        elif self._state == "running":
            print(f"ipcluster: {message}", file=self.err, flush=True)

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
        elif failure.check(LauncherError, OSError):
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
            if self._restart_controller(status):
                return
            self._state = "ending"
            code = 0 if status.clean or status.signal in (signal.SIGINT, signal.SIGTERM) else 1
            why = f"the controller (pid {self.controller.pid}) {status.describe()}"
            self.ended.callback((code, why, True))

    def _restart_controller(self, status: processes.ExitStatus) -> bool:
        """Start a controller in the place of the one that ended with ``status``, if it
        died, keeps a task store (``--db``) and the policy allows; say what was decided in
        the log. True if a new one was started."""
        if not self.options["db"] or not died(status):
            return False
        if status.signal in (signal.SIGINT, signal.SIGTERM):
            return False  # stopped on purpose
        what = f"the controller (pid {self.controller.pid}) {status.describe()}"
        if self.options["no-restart"]:
            self.note(f"{what}; not restarted (--no-restart)")
            return False
        policy = self.restarts
        if not policy.allow("controller"):
            self.note(
                f"{what}; not restarted: it was already restarted {policy.limit} times in "
                f"the last {policy.period:g} s"
            )
            return False
        argv = controller_argv(self.options)
        if "--reuse-keys" not in argv:
            argv.append("--reuse-keys")  # the same key files, which engines and clients hold
        try:
            self.controller = self.runner.spawn("controller", argv, watch_parent=True)
        except OSError as exc:
            self.note(f"{what}; cannot start a new one: {exc}")
            return False
        self.controller.when_ended().addCallback(self._controller_ended)
        self._save_record()
        self.note(
            f"{what}; restarted as process {self.controller.pid} with --reuse-keys "
            f"(restart {policy.recent('controller')} of at most {policy.limit} in "
            f"{policy.period:g} s)"
        )
        print(
            f"ipcluster: {what}; restarted it from its task store (pid "
            f"{self.controller.pid}); engines and clients reconnect by themselves",
            file=self.err,
            flush=True,
        )
        return True

    def _engine_ended(self, child: processes.ProcessHandle, status: processes.ExitStatus) -> None:
        if self._state == "starting":
            if isinstance(child, processes.ForkedEngine):
                # Its end comes as a line on its parent's standard output; its error, written
                # before, on the parent's standard error, may be read later in this same turn
                # of the reactor: quote the output once it has been.
                self.reactor.callLater(
                    0, lambda: self._fail_startup_with(self._child_failure(child, status))
                )
                return
            self._fail_startup_with(self._child_failure(child, status))
        elif self._state == "running":
            if child.role == "forkengines" and status.clean:
                # It ends once the engines it forked have: nothing new to report.
                self.note(f"forkengines process {child.pid} {status.describe()}")
                return
            print(
                f"ipcluster: {child.role} process {child.pid} {status.describe()}; "
                f"its output is in {self.log_path}",
                file=self.err,
                flush=True,
            )
            if child.role == "engine":
                self._replace(child, status)

    def _replace(self, child: processes.ProcessHandle, status: processes.ExitStatus) -> None:
        """Start an engine in the place of ``child``, which ended with ``status``, if it
        died and the policy allows; say what was decided in the log."""
        what = f"engine process {child.pid} {status.describe()}"
        slot = self._slots.get(child)
        if slot is None or self.launcher is None or not self.launcher.replaces_engines:
            return
        if not died(status):
            self.note(f"{what}: stopped on purpose, not replaced")
            return
        if self.options["no-restart"]:
            self.note(f"{what}; not replaced (--no-restart)")
            return
        policy = self.restarts
        if not policy.allow(slot):
            self.note(
                f"{what}; not replaced: engine slot {slot} was already replaced "
                f"{policy.limit} times in the last {policy.period:g} s"
            )
            return
        try:
            new = self.launcher.replace_engine()
        except OSError as exc:
            self.note(f"{what}; cannot start a replacement: {exc}")
            return
        self._slots[new] = slot
        self.note(
            f"{what}; replaced by engine process {new.pid} (engine slot {slot}, "
            f"replacement {policy.recent(slot)} of at most {policy.limit} in "
            f"{policy.period:g} s)"
        )
        print(
            f"ipcluster: started engine process {new.pid} in its place", file=self.err, flush=True
        )

    def _fail_startup_with(self, error: ClusterError) -> None:
        self._fail_startup(Failure(error))

    def _wait_for_engines(self, count: int) -> Deferred:
        timeout = self.options["timeout"]
        d = wait_for_engines(
            self.reactor,
            self.security / paths.MEC_FURL,
            count,
            deadline=self.started_at + timeout,
            give_up=lambda: self._startup.called,
        )

        def timed_out(failure: Failure) -> None:
            failure.trap(RegistrationTimeout)
            why = f"{failure.getErrorMessage()} within {timeout:g} s (--timeout)"
            if self._last_report is not None:
                why += f"; {self._last_report}"
            raise ClusterError(f"{why}; see {self.log_path}")

        return d.addErrback(timed_out)

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
