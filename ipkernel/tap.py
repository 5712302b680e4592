"""The controller as a service: options and ``makeService`` for twistd and ``ipcontroller``.

``twistd -n ipcontroller`` (foreground) and ``twistd ipcontroller`` (daemon) load this
module through the dropin in ``twisted/plugins``; the ``ipcontroller`` command runs the
same service in its own reactor.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import FileLogObserver, Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python import usage

from ipkernel import paths
from ipkernel.adapters.gate import GateRoot
from ipkernel.adapters.pb_engine import EngineRegistrar
from ipkernel.adapters.pb_multiengine import MultiEngineAdapter
from ipkernel.adapters.pb_task import task_avatar_factory
from ipkernel.adapters.web.access import remove_url_file, write_url_file
from ipkernel.adapters.web.listener import StatusPage
from ipkernel.controller.service import ControllerService
from ipkernel.controller.store import ITaskStore, MemoryStore
from ipkernel.controller.store_payloads import DEFAULT_BUDGET, PayloadShelf
from ipkernel.controller.store_sqlite import SQLiteStore, payload_directory
from ipkernel.security import ControllerKeys, previous_ports, roles
from ipkernel.wire.broker import ServerFactory
from ipkernel.wire.buffers import tune_allocator
from ipkernel.wire.heap import IdleTrim
from ipkernel.wire.keepalive import DEFAULT_PEER_TIMEOUT
from ipkernel.wire.kept import open_kept
from ipkernel.wire.tls import listen_tls, server_context

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a TCP port")
    return port


def _engine_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds < 1e6:
        raise ValueError(f"--engine-timeout must be a number of seconds from 1, not {value!r}")
    return seconds


def _size(value: str) -> int:
    """Bytes from ``1048576``, ``512K``, ``256M``, ``256MiB``, ``1G`` (powers of 1024)."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise ValueError(f"{value!r} is not a size such as 256M, 1G or a number of bytes")
    return int(number * _UNITS[unit])


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds


class Options(usage.Options):
    """Options of the controller (``ipcontroller --help``)."""

    longdesc = (
        "Run the ipkernel controller: engines register with it and MultiEngine and Task "
        "clients connect to it, all over TLS. Key files for engines and clients are "
        "written to the security directory."
    )
    optParameters = [
        ["ip", None, "127.0.0.1", "Address to listen on; 0.0.0.0 for every interface."],
        [
            "engine-port",
            None,
            0,
            "Port for engines; 0 takes a free one, or with --reuse-keys the earlier run's.",
            _port,
        ],
        [
            "client-port",
            None,
            0,
            "Port for clients; 0 takes a free one, or with --reuse-keys the earlier run's.",
            _port,
        ],
        ["security-dir", None, None, "Where key files go (default: $IPKERNEL_DIR/security)."],
        ["log-dir", None, None, "Where the log goes (default: $IPKERNEL_DIR/log)."],
        [
            "db",
            None,
            None,
            "SQLite file that keeps task records, so that a controller restarted with "
            "--reuse-keys --db FILE keeps every result and runs unfinished tasks again; "
            "large task payloads go to FILE-payloads/ (default: in memory).",
        ],
        [
            "task-memory",
            None,
            None,
            "Without --db: memory for large task payloads held by the controller; past "
            "it they go to a temporary directory (default: 256M).",
            _size,
        ],
        [
            "task-max-age",
            None,
            None,
            "Remove finished task records (and their results) this many seconds after "
            "they finished (default: keep them until a client's clear()).",
            _positive_seconds,
        ],
        [
            "engine-timeout",
            None,
            DEFAULT_PEER_TIMEOUT,
            "Seconds after which an engine whose host sends nothing, not even a TCP "
            "acknowledgement, is declared dead (its host or network gone; an engine busy "
            "computing still answers). An engine process that dies is noticed at once.",
            _engine_timeout,
        ],
        [
            "location",
            None,
            None,
            "Host name or address written into key files (default: the listen address, "
            "or this host's name when listening on 0.0.0.0).",
        ],
        [
            "web-ip",
            None,
            "127.0.0.1",
            "Address of the status page; HTTPS with the controller's certificate on any "
            "address but a loopback one.",
        ],
        ["web-port", None, 0, "Port of the status page (default: a free one).", _port],
    ]
    optFlags = [
        [
            "reuse-keys",
            None,
            "Keep the certificate, secrets and ports of an earlier run, so copied key "
            "files stay valid.",
        ],
        ["no-web", None, "Serve no status page."],
    ]
    #: The name of each option's value in ``ipcontroller --help``.
    metavars = {
        "ip": "ADDRESS",
        "engine-port": "PORT",
        "client-port": "PORT",
        "security-dir": "DIR",
        "log-dir": "DIR",
        "db": "FILE",
        "engine-timeout": "SECONDS",
        "task-memory": "SIZE",
        "task-max-age": "SECONDS",
        "location": "HOST",
        "web-ip": "ADDRESS",
        "web-port": "PORT",
    }

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        if self["db"] and self["task-memory"] is not None:
            raise usage.UsageError(
                "--task-memory applies without --db only: with --db every large task "
                "payload is kept on disk, beside the database"
            )


class ControllerListeners(Service):
    """Listens on the engine and client ports and writes the key files once bound.

    Unless ``--no-web``, it serves the status page too (:attr:`web`) and writes its URL
    (``ipcontroller-web.url``) before the key files.
    """

    log = Logger()

    def __init__(self, controller: ControllerService, options: dict, reactor: Any = None) -> None:
        self.controller = controller
        self.options = options
        self._reactor = reactor
        self.ports: list = []
        self.keys: ControllerKeys | None = None
        self.web: StatusPage | None = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        opts = self.options
        security = paths.security_dir(opts["security-dir"])
        reuse = bool(opts["reuse-keys"])
        old_engine_port, old_client_port = previous_ports(security) if reuse else (None, None)
        self.keys = keys = ControllerKeys.create(security, reuse=reuse)
        tls = server_context(keys.identity)
        ip = opts["ip"]
        controller = self.controller

        def engine_avatar(broker):
            return EngineRegistrar(controller, broker)

        def multiengine_avatar(broker):
            return MultiEngineAdapter(controller.multiengine)

        reactor = self.reactor
        engine_root = GateRoot([(roles.ENGINE, keys.engine_secret, engine_avatar)], reactor)
        client_roles = [(roles.MULTIENGINE, keys.mec_secret, multiengine_avatar)]
        task_avatar = getattr(controller, "task_avatar", None)
        if task_avatar is not None:
            client_roles.append((roles.TASK, keys.tc_secret, task_avatar))
        client_root = GateRoot(client_roles, reactor)

        engine_port = opts["engine-port"] or old_engine_port or 0
        client_port = opts["client-port"] or old_client_port or 0
        self.ports = [
            listen_tls(
                reactor,
                engine_port,
                ServerFactory(engine_root),
                tls,
                interface=ip,
                peer_timeout=opts["engine-timeout"],
            ),
            listen_tls(reactor, client_port, ServerFactory(client_root), tls, interface=ip),
        ]
        location = opts["location"] or (socket.gethostname() if ip in ("0.0.0.0", "::") else ip)
        bound_engine, bound_client = (p.getHost().port for p in self.ports)
        self._start_web(security, keys)
        keys.write_key_files(location, bound_engine, bound_client)
        self.log.info(
            "controller listening on {ip}: engines on port {e}, clients on port {c}; "
            "key files in {dir}",
            ip=ip,
            e=bound_engine,
            c=bound_client,
            dir=str(security),
        )

    def _start_web(self, security: Path, keys: ControllerKeys) -> None:
        """Serve the status page and write its URL; or, with ``--no-web``, remove the URL
        an earlier run left."""
        opts = self.options
        if opts["no-web"]:
            remove_url_file(security)
            return
        web_ip = opts["web-ip"]
        host = (opts["location"] or socket.gethostname()) if web_ip in ("0.0.0.0", "::") else web_ip
        self.web = StatusPage(self.controller, self.reactor)
        url = self.web.listen(
            self.reactor, web_ip, opts["web-port"], host=host, identity=keys.identity
        )
        write_url_file(security, url)
        self.log.info("status page at {url}", url=url.split("?", 1)[0])

    def stopService(self):  # noqa: N802 - Twisted's name
        super().stopService()
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports, self.ports = self.ports, []
        stops = [maybeDeferred(p.stopListening) for p in ports]
        web, self.web = self.web, None
        if web is not None:
            stops.append(web.stop())
        return gatherResults(stops)


def log_to_file(log_dir: str | None, name: str) -> str:
    """Send this process's log to ``<log-dir>/<name>-<pid>.log``; return the path."""
    directory = paths.ensure_private_dir(paths.log_dir(log_dir))
    path = directory / f"{name}-{os.getpid()}.log"
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    globalLogPublisher.addObserver(FileLogObserver(stream, formatEventAsClassicLogText))
    return str(path)


class LogFile(Service):
    """Opens ``<log-dir>/<name>-<pid>.log`` when the service starts.

    At start, not in ``makeService``: ``twistd`` daemonizes (forks) in between, and the
    file must carry the PID of the process that writes it.
    """

    def __init__(self, log_dir: str | None, name: str) -> None:
        self.log_dir = log_dir
        self.name = name

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        log_to_file(self.log_dir, self.name)


def task_store(config: usage.Options, reactor: Any) -> ITaskStore:
    """The task store the options ask for: SQLite with ``--db`` (large payloads in files
    beside it), else in memory (large payloads past ``--task-memory`` in a temporary
    directory).

    :raises ~ipkernel.controller.store_sqlite.StoreUnavailable: if the database cannot
        be opened.
    """
    db = config["db"]
    if db:
        path = os.path.abspath(os.path.expanduser(db))
        shelf = PayloadShelf.persistent(payload_directory(path), open_kept)
        return SQLiteStore(path, clock=reactor, shelf=shelf)
    budget = config["task-memory"]
    return MemoryStore(PayloadShelf.temporary(DEFAULT_BUDGET if budget is None else budget))


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open descriptors to its hard limit; return
    ``(soft, hard)`` as they are afterwards.

    A controller holds a descriptor per engine and per client, and the usual soft limit
    (1024) would refuse connections long before a thousand engines; the hard limit is
    what the system lets a process choose.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit
    return soft, hard


def makeService(config: usage.Options, reactor: Any = None) -> MultiService:  # noqa: N802
    """The controller service with its listeners, for twistd and ``ipcontroller``.

    :raises ~ipkernel.controller.store_sqlite.StoreUnavailable: if ``--db`` names a
        database that cannot be opened.

    Raises the process's soft limit on open descriptors (see
    :func:`raise_open_files_limit`).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    raise_open_files_limit()
    # The controller relays large payloads chunk by chunk.
    tune_allocator()
    top = MultiService()
    LogFile(config["log-dir"], "ipcontroller").setServiceParent(top)
    controller = ControllerService(
        on_stop_requested=lambda: reactor.callLater(0.1, reactor.stop),
        clock=reactor,
        store=task_store(config, reactor),
        task_max_age=config["task-max-age"],
    )
    # The client gate hands Task clients (ipcontroller-tc.furl) this avatar.
    controller.task_avatar = task_avatar_factory(controller.tasks)
    controller.setServiceParent(top)
    ControllerListeners(controller, dict(config), reactor).setServiceParent(top)
    # ... and gives the freed chunk buffers back once no stream is open.
    IdleTrim(reactor).setServiceParent(top)
    return top


def stderr_observer():
    """A log observer writing classic text lines to stderr."""
    return FileLogObserver(sys.stderr, formatEventAsClassicLogText)
