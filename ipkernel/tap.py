"""The controller as a service: options and ``makeService`` for twistd and ``ipcontroller``.

``twistd -n ipcontroller`` (foreground) and ``twistd ipcontroller`` (daemon) load this
module through the dropin in ``twisted/plugins``; the ``ipcontroller`` command runs the
same service in its own reactor. ``Options`` (what twistd parses) is defined in
:mod:`ipkernel.controller_options`, which loads no controller code.
"""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
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
from ipkernel.controller_options import Options
from ipkernel.logfiles import log_to_file
from ipkernel.security import ControllerKeys, previous_ports, roles
from ipkernel.wire.broker import ServerFactory
from ipkernel.wire.buffers import tune_allocator
from ipkernel.wire.heap import IdleTrim
from ipkernel.wire.kept import open_kept
from ipkernel.wire.tls import listen_tls, server_context

# twistd's ServiceMaker takes Options and makeService from this module.
__all__ = [
    "ControllerListeners",
    "LogFile",
    "Options",
    "makeService",
    "raise_open_files_limit",
    "task_store",
]


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
