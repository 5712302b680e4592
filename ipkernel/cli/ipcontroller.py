"""``ipcontroller``: run the controller in the foreground until Ctrl-C."""

from __future__ import annotations

import gc
import sys

from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage

from ipkernel import logfiles, tap
from ipkernel.cli import lifeline
from ipkernel.cli.command_options import CommandOptions
from ipkernel.errors import IPKernelError


class ControllerOptions(CommandOptions, tap.Options):
    """Options of ``ipcontroller``: the controller's (:class:`ipkernel.tap.Options`), and
    ``--lifeline-fd`` (the ``twistd`` plugin has no parent to watch)."""

    synopsis = "Usage: ipcontroller [options]"
    optParameters = [["lifeline-fd", None, None, lifeline.HELP, lifeline.open_fd]]
    metavars = {"lifeline-fd": "FD"}
    listed_last = ("lifeline-fd",)


#: The collector's thresholds in the controller (Python's are 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


def _tune_gc() -> None:
    # The controller holds many small objects per task (its store, the scheduler's
    # entries) and makes a few per message: at Python's thresholds, collections that
    # walk all of them took about a tenth of its CPU under a stream of tiny tasks. What
    # startup made lives as long as the process: frozen, no collection walks it.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    """Parse options, start the controller service, run the reactor; return the exit code."""
    options = ControllerOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as exc:
        print(f"ipcontroller: {exc}\n\n{options}", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([logfiles.stderr_observer()], redirectStandardIO=False)
    try:
        service = tap.makeService(options, reactor)
    except IPKernelError as exc:  # the task database cannot be opened
        print(f"ipcontroller: cannot start: {exc}", file=sys.stderr)
        return 1
    failed: list = []

    def start() -> None:
        try:
            service.startService()
        except Exception as exc:
            print(f"ipcontroller: cannot start: {exc}", file=sys.stderr)
            failed.append(exc)
            reactor.stop()

    reactor.callWhenRunning(start)
    if options["lifeline-fd"] is not None:

        def parent_gone() -> None:
            # Not a print: stderr is a pipe to the parent that has gone.
            Logger(namespace="ipcontroller").info("the process that started it has ended")
            if reactor.running:
                reactor.stop()

        reactor.callWhenRunning(lifeline.watch, reactor, options["lifeline-fd"], parent_gone)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _tune_gc()
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
