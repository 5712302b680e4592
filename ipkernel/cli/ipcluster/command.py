"""The ``ipcluster`` command: ``ipcluster [start] [options]`` or ``ipcluster stop [options]``.

``ipcluster start`` takes the pid file, opens the cluster's log, and runs a
:class:`~ipkernel.cli.ipcluster.cluster.ClusterSupervisor` in the reactor until Ctrl-C,
SIGTERM, ``ipcluster stop``, the controller's end, or (with ``--lifeline-fd``, as
:class:`ipkernel.Cluster` runs it) the end of the program that started it; a second signal
kills every child at once.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python import usage
from twisted.python.failure import Failure

from ipkernel import paths
from ipkernel.cli import lifeline
from ipkernel.cli.ipcluster.cluster import (
    ClusterSupervisor,
    StopRequested,
    prefork_children,
)
from ipkernel.cli.ipcluster.options import StartOptions
from ipkernel.cli.ipcluster.output import open_log, running_message
from ipkernel.cli.ipcluster.pidfile import (
    ClusterRecord,
    PidFileError,
    pid_file_path,
    remove_pid_file,
    take_pid_file,
)
from ipkernel.cli.ipcluster.stop import stop_main
from ipkernel.cli.launchers import LauncherError
from ipkernel.cli.lifeline import Lifeline
from ipkernel.cli.prefork import Preforked
from ipkernel.cli.processes import ReactorProcessRunner
from ipkernel.errors import ClusterError

__all__ = ["main", "start_main"]


def _run(cluster: ClusterSupervisor, out: TextIO, err: TextIO) -> Deferred:
    """The cluster's life in the reactor; fires with the exit code."""

    @inlineCallbacks
    def life():
        try:
            count = yield cluster.start()
        except (ClusterError, LauncherError) as exc:
            print(f"ipcluster: {exc}", file=err, flush=True)
            yield cluster.stop()
            return 0 if isinstance(exc, StopRequested) else 1
        print(running_message(count, cluster.security), file=out, flush=True)
        code, why, announce = yield cluster.ended
        cluster.note(f"ending: {why}")
        if announce:
            print(f"ipcluster: {why}; stopping the engines", file=err, flush=True)
        yield cluster.stop()
        return code

    return life()


def start_main(options: usage.Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run a cluster with parsed ``options`` until it is stopped; return the exit code."""
    pid_file = pid_file_path()
    try:
        record = take_pid_file(pid_file, err)
    except (PidFileError, OSError) as exc:
        print(f"ipcluster: {exc}", file=err)
        return 1
    try:
        log, log_path = open_log(paths.log_dir(options["log-dir"]))
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
    # The controller and the engines' parent are forked first, before the reactor: they
    # start with everything this process has loaded (see ipkernel.cli.prefork). A signal
    # that comes before the reactor runs is kept, and acted on once it does, so that the
    # children are stopped with the cluster, never left behind.
    early: list[str] = []

    def keep(signum: int, frame: Any) -> None:
        early.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, keep)
    signal.signal(signal.SIGTERM, keep)
    life = Lifeline()
    # Loading modules makes many objects and no garbage: collections would only slow it.
    gc.disable()
    try:
        preforked = prefork_children(options, life)
    finally:
        gc.enable()
    try:
        return _serve(options, record, pid_file, log, log_path, out, err, life, preforked, early)
    finally:
        preforked.discard()


def _serve(
    options: usage.Options,
    record: ClusterRecord,
    pid_file: Path,
    log: TextIO,
    log_path: Path,
    out: TextIO,
    err: TextIO,
    life: Lifeline,
    preforked: Preforked,
    early: list[str],
) -> int:
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(log, formatEventAsClassicLogText)], redirectStandardIO=False
    )
    runner = ReactorProcessRunner(reactor, log, os.environ, lifeline=life, preforked=preforked)
    cluster = ClusterSupervisor(
        reactor,
        options,
        record,
        pid_file,
        log,
        log_path,
        err,
        runner=runner,
        keys_cleared=bool(preforked),
    )
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
        if options["lifeline-fd"] is not None:
            lifeline.watch(
                reactor,
                options["lifeline-fd"],
                lambda: cluster.request_stop("the process that started ipcluster has ended"),
            )
        d = _run(cluster, out, err)
        d.addErrback(crashed)
        d.addCallback(finish)
        if early:
            cluster.request_stop(early[0])

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
