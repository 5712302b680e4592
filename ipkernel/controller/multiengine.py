"""The MultiEngine service: fan a command out to chosen engines, gather outcomes in order.

This is :class:`~ipkernel.interfaces.IMultiEngine` over the engine registry and the
per-engine queues. It moves opaque frames and payloads (streams, shared-memory handles)
without looking inside them; turning outcomes into results or a ``CompositeError`` is the
client's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from zope.interface import implementer

from ipkernel.controller.queue import EngineQueue
from ipkernel.controller.registry import EngineRegistry
from ipkernel.interfaces.engine import DIRECT_COMMANDS, QUEUED_COMMANDS
from ipkernel.interfaces.multiengine import IMultiEngine

#: Engine commands a MultiEngine client may send (``run_task`` belongs to the task service).
CLIENT_COMMANDS = (QUEUED_COMMANDS | DIRECT_COMMANDS) - {"run_task", "kill", "interrupt"}


@implementer(IMultiEngine)
class MultiEngine:
    """Run commands on engines by id, through their queues."""

    def __init__(
        self,
        registry: EngineRegistry,
        queues: dict[int, EngineQueue],
        stop_controller: Callable[[], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.queues = queues
        self._stop_controller = stop_controller

    def get_ids(self) -> list[int]:
        return self.registry.ids()

    def get_engine_info(self, targets: object) -> Deferred:
        return maybeDeferred(
            lambda: [(i, dict(self.registry.get(i).info)) for i in self.registry.resolve(targets)]
        )

    def call(
        self, targets: object, command: str, args: Sequence, options: dict | None = None
    ) -> Deferred:
        return maybeDeferred(self._fan_out, targets, command, lambda i: list(args), options)

    def call_each(
        self,
        targets: object,
        command: str,
        args_per_target: Sequence,
        options: dict | None = None,
    ) -> Deferred:
        def fan_out() -> Deferred:
            ids = self.registry.resolve(targets)
            if len(args_per_target) != len(ids):
                raise ValueError(f"{len(args_per_target)} argument lists for {len(ids)} targets")
            return self._dispatch(ids, command, lambda i: list(args_per_target[i]), options)

        return maybeDeferred(fan_out)

    def queue_status(self, targets: object) -> Deferred:
        return maybeDeferred(
            lambda: [(i, self.queues[i].status()) for i in self.registry.resolve(targets)]
        )

    def clear_queue(self, targets: object) -> Deferred:
        def clear() -> list[None]:
            ids = self.registry.resolve(targets)
            for i in ids:
                self.queues[i].clear()
            return [None] * len(ids)

        return maybeDeferred(clear)

    def kill(self, targets: object, controller: bool = False) -> Deferred:
        d = self.call(targets, "kill", [])
        if controller and self._stop_controller is not None:
            d.addCallback(lambda outcomes: (self._stop_controller(), outcomes)[1])
        return d

    def _fan_out(
        self, targets: object, command: str, args_for: Callable, options: dict | None = None
    ) -> Deferred:
        return self._dispatch(self.registry.resolve(targets), command, args_for, options)

    def _dispatch(
        self, ids: list[int], command: str, args_for: Callable, options: dict | None = None
    ) -> Deferred:
        if command not in QUEUED_COMMANDS and command not in DIRECT_COMMANDS:
            raise ValueError(f"unknown engine command {command!r}")
        calls: list[Deferred] = []
        for n, engine_id in enumerate(ids):
            if command in QUEUED_COMMANDS:
                calls.append(self.queues[engine_id].submit(command, args_for(n), options))
            else:
                engine = self.registry.get(engine_id)
                if options is None:
                    calls.append(engine.call(command, args_for(n)))
                else:
                    calls.append(engine.call(command, args_for(n), options))
        if len(calls) == 1:
            # One target (the common case): no DeferredList to gather one outcome.
            engine_id = ids[0]
            return calls[0].addCallback(lambda outcome: [(engine_id, outcome)])
        if not calls:
            return succeed([])
        d = gatherResults(calls)
        return d.addCallback(lambda outcomes: list(zip(ids, outcomes, strict=True)))

    def interrupt(self, targets: object) -> Deferred:
        # Always without arguments: interrupt(taskid) aborts a task, the task service's job.
        return maybeDeferred(self._fan_out, targets, "interrupt", lambda i: [])
