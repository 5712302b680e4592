"""``ipengine``: one engine that connects to the controller and serves until stopped."""

from __future__ import annotations

import ast
import os
import sys
import threading

from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage

from ipkernel import logfiles, paths
from ipkernel.cli import lifeline
from ipkernel.cli.command_options import CommandOptions


def _data_ports(text: str) -> tuple[int, int]:
    from ipkernel.wire.direct_listener import parse_ports

    try:
        return parse_ports(text)
    except ValueError as exc:
        raise usage.UsageError(str(exc)) from None


class Options(CommandOptions):
    """Options of ``ipengine``."""

    synopsis = "Usage: ipengine [options]"
    longdesc = (
        "Start one engine: it connects to the controller named by the engine key file, "
        "registers, and runs what clients send it. It waits for the controller if it is "
        "not there yet, and reconnects when it comes back."
    )
    optParameters = [
        [
            "furl-file",
            None,
            None,
            "Engine key file (default: <security-dir>/ipcontroller-engine.furl).",
        ],
        ["security-dir", None, None, "Where the key files are (default: $IPKERNEL_DIR/security)."],
        ["log-dir", None, None, "Where the log goes (default: $IPKERNEL_DIR/log)."],
        [
            "data-address",
            None,
            None,
            "Address of the data listener, where clients open direct links for large data "
            "(default: the address this engine reaches the controller from; 0.0.0.0: "
            "every interface).",
        ],
        [
            "data-ports",
            None,
            None,
            "Port or range LOW-HIGH for the data listener, the first free one is taken "
            "(default: any free port).",
            _data_ports,
        ],
        [
            "data-advertise",
            None,
            None,
            "Host that clients dial for direct links, if not the listening address "
            "(behind NAT or port forwarding).",
        ],
        ["lifeline-fd", None, None, lifeline.HELP, lifeline.open_fd],
    ]
    metavars = {
        "data-address": "HOST",
        "data-ports": "PORTS",
        "data-advertise": "HOST",
        "furl-file": "FILE",
        "lifeline-fd": "FD",
        "security-dir": "DIR",
        "log-dir": "DIR",
        "property": "KEY=VALUE",
    }
    listed_last = ("lifeline-fd",)

    def __init__(self) -> None:
        super().__init__()
        self["property"] = {}

    def opt_property(self, value: str) -> None:
        """An initial engine property (repeatable); VALUE is a Python literal or text."""
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--property needs KEY=VALUE, not {value!r}")
        try:
            self["property"][key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            self["property"][key] = text


def mpi_module():
    """``mpi4py.MPI`` when running under MPI with mpi4py installed, else ``None``."""
    launched_by_mpi = any(
        name in os.environ
        for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
    )
    if not launched_by_mpi:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


def main(argv: list[str] | None = None) -> int:
    """Run one engine until it is killed or told to stop; return the exit code."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as exc:
        print(f"ipengine: {exc}\n\n{options}", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    from ipkernel.engine import properties
    from ipkernel.engine.core import EngineCore
    from ipkernel.engine.executor import MainThreadExecutor
    from ipkernel.engine.interpreter import Interpreter
    from ipkernel.engine.service import EngineService

    globalLogBeginner.beginLoggingTo([logfiles.stderr_observer()], redirectStandardIO=False)
    logfiles.log_to_file(options["log-dir"], "ipengine")
    log = Logger(namespace="ipengine")

    mpi = mpi_module()
    rank = mpi.COMM_WORLD.Get_rank() if mpi is not None else None
    properties.update(options["property"])
    from ipkernel.wire.handoff import ReactorHandoff

    handoff = ReactorHandoff(reactor)

    def connections() -> list:
        # The controller connection, once registered: the idle main thread reads it.
        registrar = service.registrar
        return [] if registrar is None else [registrar.broker.transport]

    executor = MainThreadExecutor(reactor, handoff, connections)
    interpreter = Interpreter(engine_id=rank or 0, mpi=mpi, properties=properties)

    def leave(why: str) -> None:
        log.info(why)
        # Answer the controller first, then go, even if user code is still running.
        reactor.callLater(0, service.stopService)
        reactor.callLater(0.05, os._exit, 0)

    def kill() -> None:
        leave("told to stop")

    from ipkernel.shm import SegmentKeeper
    from ipkernel.wire.buffers import tune_allocator
    from ipkernel.wire.direct_listener import DataListener, LinkedEnginePayloads

    tune_allocator()

    listener = DataListener(
        reactor,
        interface=options["data-address"],
        ports=options["data-ports"],
        advertise=options["data-advertise"],
        local_host=lambda: service.local_host(),
    )
    core = EngineCore(
        interpreter,
        properties,
        executor,
        on_kill=kill,
        on_interrupt=executor.interrupt,
        payloads=LinkedEnginePayloads(SegmentKeeper(reactor), lambda: core.id, listener, reactor),
    )
    core.info["mpi_rank"] = rank
    furl = options["furl-file"] or str(
        paths.security_dir(options["security-dir"]) / paths.ENGINE_FURL
    )
    service = EngineService(core, furl, reactor, requested_id=rank)
    properties.add_listener(
        lambda version: reactor.callFromThread(service.notify_properties_changed, version)
    )
    reactor.callWhenRunning(service.startService)
    if options["lifeline-fd"] is not None:
        reactor.callWhenRunning(
            lifeline.watch,
            reactor,
            options["lifeline-fd"],
            lambda: leave("the process that started this engine has ended"),
        )
    thread = threading.Thread(target=handoff.run, name="reactor", daemon=True)
    thread.start()
    try:
        executor.run()
    except KeyboardInterrupt:
        pass
    reactor.callFromThread(service.stopService)
    reactor.callFromThread(reactor.stop)
    thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
