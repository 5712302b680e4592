"""The engine side of the controller, over PB.

:class:`EngineRegistrar` is the avatar an engine gets for the engine key file: it
registers the engine's remote object with the controller service, wrapped in a
:class:`RemoteEngine`, the :class:`~ipkernel.interfaces.IEngine` the core talks to.

Large task payloads: the core hands ``run_task`` the bodies it keeps
(:class:`~ipkernel.wire.kept.KeptPayload`) in a dict ``{record index: body}``;
:class:`RemoteEngine` turns each into something sendable to its engine (a handle to the
controller's segment for an engine on this host, a stream otherwise), asks an engine on
this host to answer large results through shared memory, and keeps the large results of
the answer before the core sees it (releasing the engine's segments once adopted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from ipkernel import shm
from ipkernel.controller.queue import error_outcome
from ipkernel.controller.service import ControllerService
from ipkernel.errors import TransferError
from ipkernel.interfaces.engine import IEngine
from ipkernel.wire import kept
from ipkernel.wire.errors import WireError
from ipkernel.wire.keepalive import PeerSilent
from ipkernel.wire.packed_calls import call_remote
from ipkernel.wire.shared import SharedPayload

_STATUSES = frozenset({"ok", "raised", "error", "tasks"})


@implementer(IEngine)
class RemoteEngine:
    """An engine process reached through a PB remote reference.

    It is gone when its connection drops: at once if the engine process ends, after the
    engine port's ``--engine-timeout`` if its host stops answering (the connection then
    ends with :class:`~ipkernel.wire.keepalive.PeerSilent`, and the command in flight
    fails with an ``EngineError`` saying so).
    """

    log = Logger()

    def __init__(self, ref: pb.RemoteReference, info: dict) -> None:
        self.id: int | None = None
        self.info = info
        self._ref = ref
        self._gone = False
        self._listeners: list[Callable[[Any], None]] = []
        self._shares: bool | None = None
        ref.notifyOnDisconnect(self._lost)

    def call(self, command: str, args: list, options: dict | None = None) -> Deferred:
        if command == "run_task":
            return self._run_task(args, options)
        return self._call(command, args, options)

    def _call(self, command: str, args: list, options: dict | None = None) -> Deferred:
        if self._gone:
            return succeed(error_outcome("EngineError", f"engine {self.id} is gone"))
        try:
            if options is None:
                d = call_remote(self._ref, "call", command, args)
            else:
                d = call_remote(self._ref, "call", command, args, options)
        except pb.DeadReferenceError:
            # The connection is lost, and the registry will hear of it next.
            return succeed(self._failed(Failure(), command))
        except Exception as exc:  # banana refuses to encode
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
        if isinstance(outcome, (list, tuple)) and len(outcome) == 3 and outcome[0] == "tasks":
            return tuple(outcome)  # large results apart: see _keep_results
        return error_outcome("EngineError", f"engine {self.id} sent a malformed reply")

    # Large task payloads.

    def shares_memory(self) -> bool:
        """Whether this engine runs on the controller's host, as its user, and the
        controller can open its segments (then it can open the controller's)."""
        if self._shares is None:
            self._shares = shm.same_host(self.info.get("shm_probe"))
        return self._shares

    def _run_task(self, args: list, options: dict | None) -> Deferred:
        share = self.shares_memory()
        if len(args) == 2 and isinstance(args[1], dict):
            bodies = {}
            for index, body in args[1].items():
                try:
                    bodies[index] = body.sendable(share)
                except TransferError:
                    # Freed meanwhile (the task was aborted while its batch waited in the
                    # queue): the engine answers for that task alone.
                    continue
            args = [args[0], bodies]
        probe = shm.local_probe() if share else None
        if probe is not None:
            options = dict(options or {}, reply_to=probe.to_wire())
        return self._call("run_task", args, options).addCallback(self._keep_results)

    def _keep_results(self, outcome: tuple) -> Deferred | tuple:
        """``("tasks", packed, {index: payload})`` to ``("tasks", packed, {index: kept
        payload or why it was not kept})``, once every payload is held here."""
        if len(outcome) != 3:
            return outcome
        payloads = outcome[2]
        if not isinstance(payloads, dict) or not all(kept.keepable(p) for p in payloads.values()):
            return error_outcome("EngineError", f"engine {self.id} sent malformed task results")
        indexes = list(payloads)
        tokens = [p.handle.token for p in payloads.values() if isinstance(p, SharedPayload)]
        keeps = [kept.keep(payloads[i]) for i in indexes]

        def held(results: list) -> tuple:
            if tokens and not self._gone:
                # Adopted (or not openable): the engine may close its segments.
                self._call("release_shm", [tokens]).addErrback(lambda f: None)
            values = {
                i: value if ok else value.getErrorMessage()
                for i, (ok, value) in zip(indexes, results, strict=True)
            }
            return ("tasks", outcome[1], values)

        return DeferredList(keeps, consumeErrors=True).addCallback(held)

    def _failed(self, failure: Failure, command: str) -> tuple:
        if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
            when = "before" if failure.check(pb.DeadReferenceError) else "while"
            silent = self._silence()
            if silent is not None:
                return error_outcome(
                    "EngineError",
                    f"engine {self.id} stopped answering {when} running {command} and was "
                    f"declared dead: {silent}",
                )
            return error_outcome(
                "EngineError", f"engine {self.id} died or disconnected {when} running {command}"
            )
        return error_outcome(
            "EngineError", f"engine {self.id} failed to run {command}: {failure.getErrorMessage()}"
        )

    def _silence(self) -> PeerSilent | None:
        """What the engine's host was silent for, if that is why its connection ended."""
        reason = getattr(self._ref.broker, "lost_reason", None)
        if isinstance(reason, Failure) and isinstance(reason.value, PeerSilent):
            return reason.value
        return None

    def _lost(self, ref: object) -> None:
        if self._gone:
            return
        self._gone = True
        silent = self._silence()
        if silent is not None:
            self.log.warn("engine {id} declared dead: {why}", id=self.id, why=str(silent))
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
