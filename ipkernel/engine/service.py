"""EngineService: connect an engine to its controller, register, and stay connected.

The engine reads its key file, dials the controller over TLS, logs in, and registers its
:class:`EngineReference` (the PB face of :class:`~ipkernel.engine.core.EngineCore`). If the
controller is not there yet, or goes away, it retries with back-off, asking for its old id
on the way back; the key file is read again on every attempt, so a restarted controller
with new keys is picked up. While there is no key file it looks for one again after a
twentieth of the time it has waited so far (at least :data:`KEY_FILE_POLL`): an engine
started with its controller dials within a few milliseconds of the key file's writing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel import shm
from ipkernel.engine.core import EngineCore
from ipkernel.errors import KeyFileNotFound, TransferError
from ipkernel.interfaces.engine import QUEUED_COMMANDS
from ipkernel.security import read_key_file
from ipkernel.security.roles import ENGINE
from ipkernel.wire.connect import login
from ipkernel.wire.keepalive import DEFAULT_PEER_TIMEOUT
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.transfer import find_payloads, when_received

#: Seconds between the first looks for a key file that is not there yet.
KEY_FILE_POLL = 0.005
# A missing key file is looked for again after this share of the time waited so far.
_KEY_FILE_WAIT_SHARE = 0.05


class EngineReference(pb.Referenceable):
    """What the controller calls: ``call(command, args, options=None)`` → outcome.

    Registration: the controller may send the first commands (a task, at once) before
    its answer to ``register``, which carries the engine's id; they run once
    :meth:`registered` has been called, so that ``id`` is bound in the namespace first.

    Large payloads: a command whose arguments are still streaming in runs once they have
    all arrived (or fails with ``TransferError``, running nothing, if one is aborted). A
    queued command also waits until the previous queued command's streamed result has
    left, so that nothing changes in the namespace while its bytes are being read.
    """

    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._leaving: list[OutgoingPayload] = []
        # Commands received before the answer to register: None once it is in.
        self._early: list[Deferred] | None = []

    def registered(self) -> None:
        """The engine's id is known (and set on the core): run the commands held."""
        early, self._early = self._early, None
        for d in early or ():
            d.callback(None)

    def remote_call(self, command: object, args: object, options: object = None) -> Deferred:
        if not isinstance(command, str) or not isinstance(args, (list, tuple)):
            return succeed(("error", ("TypeError", "call(command: str, args: list) expected")))
        args = list(args)
        opts = options if isinstance(options, dict) else None
        waits = []
        if self._early is not None:
            self._early.append(Deferred())
            waits.append(self._early[-1])
        incoming = find_payloads(args)
        if incoming:
            waits.append(when_received(incoming))
        queued = command in QUEUED_COMMANDS
        if queued and self._leaving:
            leaving, self._leaving = self._leaving, []
            waits.extend(p.when_sent() for p in leaving)
        if not waits:
            d = self._core.call(command, args, opts)
        else:
            d = gatherResults(waits, consumeErrors=True)
            d.addCallbacks(
                lambda _: self._core.call(command, args, opts),
                lambda f: ("error", ("TransferError", _transfer_failure(f))),
            )
        if queued:
            d.addCallback(self._track)
        return d

    def _track(self, outcome: object) -> object:
        if isinstance(outcome, tuple) and len(outcome) in (2, 3):
            # An answer's payload, or a task batch's payloads apart.
            payloads = outcome[2].values() if len(outcome) == 3 else (outcome[1],)
            for payload in payloads:
                if isinstance(payload, OutgoingPayload):
                    self._leaving.append(payload)
        return outcome


def _transfer_failure(failure: Failure) -> str:
    exc = getattr(failure.value, "subFailure", failure).value
    if isinstance(exc, TransferError):
        return f"an argument did not arrive whole: {exc}"
    return f"an argument could not be received: {exc}"


class EngineService(Service):
    """Keeps one engine registered with the controller named by ``furl_file``.

    ``initial_delay``/``max_delay`` bound the back-off (seconds) between attempts to reach
    the controller; a missing key file is looked for more often (see the module's text),
    at most ``max_delay`` apart.
    :attr:`engine_id` and :attr:`registrar` are set at each (re-)registration; the
    registrar is None while the controller is away. A controller whose host sends
    nothing for ``peer_timeout`` seconds counts as gone (see
    :mod:`ipkernel.wire.keepalive`): the engine reconnects.
    """

    log = Logger()

    def __init__(
        self,
        core: EngineCore,
        furl_file: Path,
        reactor: Any,
        *,
        requested_id: int | None = None,
        initial_delay: float = 0.02,
        max_delay: float = 2.0,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    ) -> None:
        self.core = core
        self.furl_file = Path(furl_file)
        self.reactor = reactor
        self.requested_id = requested_id
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.peer_timeout = peer_timeout
        self.engine_id: int | None = None
        self.registrar: pb.RemoteReference | None = None
        self._delay = initial_delay
        # When the engine started waiting for a key file that is not there.
        self._key_file_missing_since: float | None = None
        self._retry_call = None
        self._last_complaint: str | None = None
        probe = shm.local_probe()
        core.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "host_id": shm.host_identity(),
            "shm_probe": None if probe is None else probe.to_wire(),
            "mpi_rank": requested_id
            if core.info.get("mpi_rank") is None
            else core.info["mpi_rank"],
        }

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self._attempt()

    def stopService(self) -> Deferred | None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self.registrar is not None and self.registrar.broker.transport is not None:
            self.registrar.broker.transport.loseConnection()
        return None

    def _attempt(self) -> None:
        self._retry_call = None
        if not self.running:
            return
        try:
            keyfile = read_key_file(self.furl_file)
        except (KeyFileNotFound, ValueError) as exc:
            self._retry(str(exc), key_file_missing=True)
            return
        self._key_file_missing_since = None
        d = login(
            self.reactor,
            keyfile,
            ENGINE,
            source=str(self.furl_file),
            peer_timeout=self.peer_timeout,
        )
        d.addCallback(self._register)
        d.addErrback(lambda f: self._retry(f.getErrorMessage()))

    def _register(self, registrar: pb.RemoteReference) -> Deferred:
        ask = self.engine_id if self.engine_id is not None else self.requested_id
        reference = EngineReference(self.core)
        d = registrar.callRemote("register", reference, ask, self.core.info)

        def registered(engine_id: int) -> None:
            self.registrar = registrar
            self.engine_id = engine_id
            self.core.id = engine_id
            reference.registered()
            self._delay = self.initial_delay
            self._last_complaint = None
            registrar.notifyOnDisconnect(self._lost)
            self.log.info("registered with the controller as engine {id}", id=engine_id)

        return d.addCallback(registered)

    def _lost(self, ref: object) -> None:
        self.registrar = None
        # Clients release shared-memory results through the controller: none will now.
        close_all = getattr(self.core.payloads, "close_all", None)
        if close_all is not None:
            close_all()
        if self.running:
            self.log.info("lost the controller; reconnecting")
            self._retry(None)

    def _retry(self, reason: str | None, key_file_missing: bool = False) -> None:
        if not self.running:
            return
        if reason and reason != self._last_complaint:
            self.log.info("waiting for the controller: {reason}", reason=reason)
            self._last_complaint = reason
        if key_file_missing:
            now = self.reactor.seconds()
            if self._key_file_missing_since is None:
                self._key_file_missing_since = now
            waited = now - self._key_file_missing_since
            delay = min(max(waited * _KEY_FILE_WAIT_SHARE, KEY_FILE_POLL), self.max_delay)
        else:
            delay = self._delay
            self._delay = min(self._delay * 1.5, self.max_delay)
        self._retry_call = self.reactor.callLater(delay, self._attempt)

    def local_host(self) -> str | None:
        """The address of this host that the connection to the controller goes out from
        (None while there is none)."""
        registrar = self.registrar
        transport = None if registrar is None else registrar.broker.transport
        host = None if transport is None else getattr(transport.getHost(), "host", None)
        return host if isinstance(host, str) else None

    def notify_properties_changed(self, version: int) -> None:
        """Tell the controller (from the reactor thread) that the properties changed."""
        if self.registrar is not None:
            self.registrar.callRemote("properties_changed", version).addErrback(lambda f: None)
