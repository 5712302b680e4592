"""Fakes for the core's tests: engines that answer when the test says so."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from ipkernel.interfaces.engine import IEngine


@implementer(IEngine)
class FakeEngine:
    """An IEngine whose commands stay unanswered until :meth:`answer` is called.

    ``calls`` records every ``(command, args)`` received, in order (``options``, the
    transfer hints, are ignored: a fake moves no large payloads).
    """

    def __init__(self, info: dict | None = None) -> None:
        self.id: int | None = None
        self.info = info or {}
        self.calls: list[tuple[str, list]] = []
        self.waiting: list[Deferred] = []
        self._listeners: list = []
        self.disconnected = False

    def call(self, command: str, args: list, options: dict | None = None) -> Deferred:
        self.calls.append((command, list(args)))
        if self.disconnected:
            # As the PB proxy does once its broker is gone.
            return succeed(("error", ("EngineError", f"engine {self.id} is gone")))
        d: Deferred = Deferred()
        self.waiting.append(d)
        return d

    def answer(self, outcome: Any = ("ok", [b"x"])) -> None:
        """Answer the oldest unanswered command with ``outcome``."""
        self.waiting.pop(0).callback(outcome)

    def notify_on_disconnect(self, callback) -> None:
        self._listeners.append(callback)

    def disconnect(self) -> None:
        self.die()

    def die(self) -> None:
        """The connection drops: unanswered commands fail as the PB proxy makes them fail."""
        self.disconnected = True
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(("error", ("EngineError", f"engine {self.id} died")))
        for listener in self._listeners:
            listener(self)
