"""The engine side of the controller, over PB.

:class:`EngineRegistrar` is the avatar an engine gets for the engine key file: it
registers the engine's remote object with the controller service, wrapped in a
:class:`RemoteEngine`, the :class:`~ipkernel.interfaces.IEngine` the core talks to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from ipkernel.controller.queue import error_outcome
from ipkernel.controller.service import ControllerService
from ipkernel.interfaces.engine import DIRECT_COMMANDS, QUEUED_COMMANDS, IEngine
from ipkernel.wire.errors import WireError

_STATUSES = frozenset({"ok", "raised", "error", "tasks"})


@implementer(IEngine)
class RemoteEngine:
    """An engine process reached through a PB remote reference."""

    def __init__(self, ref: pb.RemoteReference, info: dict) -> None:
        self.id: int | None = None
        self.info = info
        self._ref = ref
        self._gone = False
        self._listeners: list[Callable[[Any], None]] = []
        ref.notifyOnDisconnect(self._lost)

    def call(self, command: str, args: list, options: dict | None = None) -> Deferred:
        if self._gone:
            return succeed(error_outcome("EngineError", f"engine {self.id} is gone"))
        try:
            if options is None:
                d = self._ref.callRemote("call", command, args)
            else:
                d = self._ref.callRemote("call", command, args, options)
        except Exception as exc:  # banana refuses to encode, connection already lost
            return succeed(error_outcome("EngineError", f"engine {self.id}: {exc}"))
        return d.addCallbacks(self._checked, self._failed, errbackArgs=(command,))

    def notify_on_disconnect(self, callback: Callable[[Any], None]) -> None:
        self._listeners.append(callback)

    def disconnect(self) -> None:
        transport = self._ref.broker.transport
        if transport is not None:
            transport.loseConnection()

    def _checked(self, outcome: object) -> tuple:
        if isinstance(outcome, (list, tuple)) and len(outcome) == 2 and outcome[0] in _STATUSES:
            return tuple(outcome)
        return error_outcome("EngineError", f"engine {self.id} sent a malformed reply")

    def _failed(self, failure: Failure, command: str) -> tuple:
        if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
            return error_outcome(
                "EngineError", f"engine {self.id} died or disconnected while running {command}"
            )
        return error_outcome(
            "EngineError", f"engine {self.id} failed to run {command}: {failure.getErrorMessage()}"
        )

    def _lost(self, ref: object) -> None:
        if self._gone:
            return
        self._gone = True
        for listener in self._listeners:
            listener(self)


class EngineRegistrar(pb.Referenceable):
    """What an engine may do once logged in: register itself, once."""

    def __init__(self, service: ControllerService, broker: pb.Broker) -> None:
        self._service = service
        self._broker = broker
        self._engine: RemoteEngine | None = None

    def remote_register(self, engine: object, requested_id: object, info: object) -> int:
        """Register ``engine`` (the engine's remote object); return its id."""
        if self._engine is not None:
            raise WireError("ValueError", "this connection has already registered an engine")
        if not isinstance(engine, pb.RemoteReference):
            raise WireError("TypeError", "register() needs the engine's remote object")
        if requested_id is not None and not isinstance(requested_id, int):
            requested_id = None
        if not isinstance(info, dict):
            info = {}
        self._engine = RemoteEngine(engine, {str(k): v for k, v in info.items()})
        return self._service.register_engine(self._engine, requested_id)

    def remote_properties_changed(self, version: object) -> None:
        """The engine's properties changed (its task eligibility may have too)."""
        if self._engine is not None and isinstance(version, int):
            self._service.properties_changed(self._engine.id, version)


#: Every command an engine answers (for validation at the boundary).
ENGINE_COMMANDS = QUEUED_COMMANDS | DIRECT_COMMANDS
