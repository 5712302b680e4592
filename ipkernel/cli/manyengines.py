"""Many engines from one process: N engine connections sharing one Python and one reactor.

``python -m ipkernel.cli.manyengines N [options]`` connects N engines to the controller
named by the engine key file and serves until it is stopped (SIGTERM, Ctrl-C) or every
engine has been killed. To the controller each one is an engine like any other: its own
TLS connection, its own login and registration, its own id, an
:class:`~ipkernel.engine.core.EngineCore` (an ``IEngine``) with its own namespace and
properties, reconnecting on its own if the controller goes away. What they share is the
process: their commands run one at a time in the reactor's thread, so a long computation
on one holds up all of them, and ``interrupt`` cannot stop running code.

It is a way to try a controller with hundreds or thousands of engines on one machine
(``benchmarks/bench_scale.py``, the scale tests), not a way to compute: for that, one
engine per core (``ipcluster -n N``). It prints ``ipkernel-many: connecting N <time>``
(``time.time()``) when it starts dialling and ``ipkernel-many: registered N <time>`` once
all N have registered.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from twisted.logger import globalLogBeginner
from twisted.python import usage

from ipkernel import logfiles, paths, tap
from ipkernel.cli.command_options import CommandOptions

#: Prefix of the lines this process prints.
MARKER = "ipkernel-many:"


class Options(CommandOptions):
    """Options of ``python -m ipkernel.cli.manyengines``."""

    synopsis = "Usage: python -m ipkernel.cli.manyengines N [options]"
    longdesc = (
        "Connect N engines from this one process (each its own connection, registration "
        "and namespace; their commands share one thread), to try a controller with many "
        "engines."
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
    ]
    metavars = {"furl-file": "FILE", "security-dir": "DIR", "log-dir": "DIR"}

    def parseArgs(self, count: str) -> None:  # noqa: N802 - Twisted's name
        if not count.isdigit() or int(count) < 1:
            raise usage.UsageError(f"N must be a positive number of engines, not {count!r}")
        self["count"] = int(count)


def start_engines(reactor: Any, furl_file: Path, count: int) -> list[Any]:
    """Start ``count`` engines in ``reactor`` for the controller of ``furl_file``.

    Returns their :class:`~ipkernel.engine.service.EngineService` objects, started (they
    connect, register and reconnect on their own; ``engine_id`` is set once registered).
    Each has its own namespace and properties; ``kill`` stops only that engine's service.
    Stop one with ``stopService()``: its connection closes and the controller sees it leave.
    """
    from ipkernel.shm import SegmentKeeper

    keeper = SegmentKeeper(reactor)
    services = [_engine(reactor, furl_file, keeper) for _ in range(count)]
    for service in services:
        service.startService()
    return services


def _engine(reactor: Any, furl_file: Path, keeper: Any) -> Any:
    from ipkernel.engine.core import EngineCore
    from ipkernel.engine.interpreter import Interpreter
    from ipkernel.engine.properties import Properties
    from ipkernel.engine.service import EngineService
    from ipkernel.wire.transfer import EnginePayloads

    properties = Properties()
    services: list[EngineService] = []

    def kill() -> None:
        # Answer the controller first, then leave (this engine only).
        reactor.callLater(0, services[0].stopService)

    core = EngineCore(
        Interpreter(properties=properties),
        properties,
        on_kill=kill,
        payloads=EnginePayloads(keeper, lambda: core.id),
    )
    service = EngineService(core, furl_file, reactor)
    services.append(service)
    properties.add_listener(service.notify_properties_changed)
    return service


def main(argv: list[str] | None = None) -> int:
    """Run N engines until stopped or all killed; return the exit code."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as exc:
        print(f"manyengines: {exc}\n\n{options}", file=sys.stderr)
        return 2
    from twisted.internet import reactor, task

    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    logfiles.log_to_file(options["log-dir"], "manyengines")
    count = options["count"]
    tap.raise_open_files_limit()
    furl = Path(
        options["furl-file"] or paths.security_dir(options["security-dir"]) / paths.ENGINE_FURL
    )

    services: list[Any] = []
    announced = False

    def watch() -> None:
        nonlocal announced
        if not announced and all(s.registrar is not None for s in services):
            announced = True
            print(MARKER, "registered", count, time.time(), flush=True)
        if not any(s.running for s in services):
            reactor.stop()  # every engine was killed

    def run() -> None:
        print(MARKER, "connecting", count, time.time(), flush=True)
        services.extend(start_engines(reactor, furl, count))
        task.LoopingCall(watch).start(0.01, now=False)

    def stop() -> None:
        for service in services:
            if service.running:
                service.stopService()

    reactor.callWhenRunning(run)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
