"""The order of a MultiEngine client's requests: they leave in the order the calls were made.

Most calls send their request at once. A call that must first ask the controller something
(the engines' hosts for a large push, the target ids for a scatter or a map) reserves its
:class:`Turn` in :class:`Turns` when it is made; later calls queue behind it until it has
sent its request, so a non-blocking large push followed by an ``execute`` still reaches
each engine's queue first.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed

__all__ = ["Turn", "Turns"]


class Turn:
    """A request's place in line (see :class:`Turns`)."""

    def __init__(self, turns: Turns) -> None:
        self._turns = turns
        self.request: Callable[[], Deferred] | None = None
        self.done = False
        #: Fires with the request's result once it has been sent and answered.
        self.result: Deferred = Deferred()

    def ready(self, request: Callable[[], Deferred]) -> Deferred:
        """This turn's request is ready: send it when every earlier one has been sent.

        Fires with ``request()``'s result (or fails with its error).
        """
        if not self.done:
            self.request = request
            self._turns.flush()
        return self.result

    def skip(self) -> None:
        """Give up the turn (its call failed before it could send anything); nothing
        happens if its request was given already."""
        if not self.done and self.request is None:
            self.request = lambda: succeed(None)
            self._turns.flush()


class Turns:
    """One client's line of requests (see the module docstring)."""

    def __init__(self) -> None:
        self._line: collections.deque[Turn] = collections.deque()

    def reserve(self) -> Turn:
        """A place at the end of the line, for a request to be given later."""
        turn = Turn(self)
        self._line.append(turn)
        return turn

    def send(self, request: Callable[[], Deferred]) -> Deferred:
        """Send ``request()`` now, or once the calls before it have sent theirs; fires
        with its result."""
        if not self._line:
            return request()
        return self.reserve().ready(request)

    def flush(self) -> None:
        """Send the requests at the head of the line that are ready, in order."""
        line = self._line
        while line and line[0].request is not None:
            turn = line.popleft()
            turn.done = True
            maybeDeferred(turn.request).chainDeferred(turn.result)
