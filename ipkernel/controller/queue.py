"""The per-engine queue: one command at a time on each engine, in arrival order.

Every client request that touches an engine's namespace goes through that engine's
queue, so a busy engine never blocks the controller or another client: callers get a
Deferred at once and it fires when the engine has answered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipkernel.interfaces.engine import IEngine

Outcome = tuple[str, Any]


def error_outcome(type_name: str, message: str) -> Outcome:
    """An outcome for a command that did not run to completion for the controller's reasons."""
    return ("error", (type_name, message))


class EngineQueue:
    """Commands waiting for one engine; at most one is in flight at a time.

    ``now`` (a wall clock, optional) dates each command as it is handed to the engine,
    for :attr:`in_flight_since`.
    """

    def __init__(self, engine: IEngine, now: Callable[[], float] | None = None) -> None:
        self.engine = engine
        self._waiting: deque[tuple[str, list, dict | None, Deferred]] = deque()
        self._pending: str | None = None
        self._closed: str | None = None
        self._draining = False
        self._now = now
        self._since: float | None = None

    def submit(self, command: str, args: list, options: dict | None = None) -> Deferred:
        """Queue ``command(*args)``; the Deferred fires with its outcome (never errbacks).

        ``options`` (wire-safe transfer hints, see ``IEngine.call``) go to the engine with
        the command, when given.
        """
        d: Deferred = Deferred()
        if self._closed is not None:
            d.callback(error_outcome("EngineError", self._closed))
            return d
        self._waiting.append((command, args, options, d))
        if self._pending is None:
            self._next()
        return d

    def status(self) -> dict:
        """``{'queue': [names of waiting commands], 'pending': running command or None}``."""
        return {"queue": [c for c, _, _, _ in self._waiting], "pending": self._pending}

    @property
    def in_flight(self) -> str | None:
        """The name of the command the engine is running, or ``None``."""
        return self._pending

    @property
    def in_flight_since(self) -> float | None:
        """When :attr:`in_flight` was handed to the engine (``now()``'s time), or ``None``."""
        return self._since if self._pending is not None else None

    @property
    def waiting(self) -> int:
        """How many commands wait behind the one in flight."""
        return len(self._waiting)

    def clear(self) -> int:
        """Drop every waiting command (their outcome: ``QueueCleared``); return how many."""
        dropped = list(self._waiting)
        self._waiting.clear()
        for command, _, _, d in dropped:
            d.callback(
                error_outcome(
                    "QueueCleared",
                    f"{command} on engine {self.engine.id} was dropped by clear_queue()",
                )
            )
        return len(dropped)

    def close(self, reason: str) -> None:
        """The engine is gone: fail every waiting command with ``EngineError(reason)``.

        The command in flight is failed by the engine proxy itself when the connection
        drops; later submissions fail at once.
        """
        self._closed = reason
        waiting = list(self._waiting)
        self._waiting.clear()
        for _, _, _, d in waiting:
            d.callback(error_outcome("EngineError", reason))

    def _next(self) -> None:
        # Engines that answer synchronously (fakes, errors) re-enter through _finished;
        # the flag turns that re-entry into another turn of this loop, not recursion.
        if self._draining:
            return
        self._draining = True
        try:
            while self._pending is None and self._waiting:
                command, args, options, d = self._waiting.popleft()
                self._pending = command
                if self._now is not None:
                    self._since = self._now()
                if options is None:
                    call = self.engine.call(command, args)
                else:
                    call = self.engine.call(command, args, options)
                call.addBoth(self._finished, d)
        finally:
            self._draining = False

    def _finished(self, outcome: Any, d: Deferred) -> None:
        self._pending = None
        if isinstance(outcome, Failure):
            # IEngine.call must not errback; if it does, report rather than stall.
            outcome = error_outcome(
                "EngineError", f"engine {self.engine.id}: {outcome.getErrorMessage()}"
            )
        d.callback(outcome)
        self._next()
