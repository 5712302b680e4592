"""Which dead engines ``ipcluster`` replaces: an engine that died, not one told to stop,
at most a few times a minute per engine slot.

An engine told to stop (``mec.kill()``) exits with status 0, as does one ended by
Ctrl-C; one that crashes exits with another status or is killed by a signal
(:func:`died`). ``ipcluster`` replaces a local engine that died with a new engine
process (which registers under a new id: its namespace is new), in the same *slot*: the
place of one of the ``-n`` engines asked for. :class:`RestartPolicy` keeps a slot from
being replaced more than :data:`RESTART_LIMIT` times in :data:`RESTART_PERIOD` seconds,
so an engine that crashes as soon as it starts is not restarted in a loop. With a task
store (``--db``), a controller that died is started again the same way, in a slot of its
own (``"controller"``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

from ipkernel.cli.processes import ExitStatus

__all__ = ["RESTART_LIMIT", "RESTART_PERIOD", "RestartPolicy", "died"]

#: Most replacements of one engine slot within :data:`RESTART_PERIOD` seconds.
RESTART_LIMIT = 3

#: The window, in seconds, over which :data:`RESTART_LIMIT` counts.
RESTART_PERIOD = 60.0


def died(status: ExitStatus) -> bool:
    """Whether an engine that ended with ``status`` died (crashed, or was killed by a
    signal) rather than stopped on purpose (exit status 0). An end whose status is
    unknown counts as neither: it is not replaced."""
    return status.signal is not None or status.code not in (0, None)


class RestartPolicy:
    """Allows at most ``limit`` replacements per slot within ``period`` seconds.

    ``clock`` is an ``IReactorTime`` (the reactor; tests pass a
    :class:`twisted.internet.task.Clock`).
    """

    def __init__(
        self, clock: Any, limit: int = RESTART_LIMIT, period: float = RESTART_PERIOD
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.period = period
        self._times: dict[Hashable, deque[float]] = {}

    def allow(self, slot: Hashable) -> bool:
        """Whether ``slot``'s engine may be replaced now; if so, the replacement counts."""
        now = self.clock.seconds()
        times = self._times.setdefault(slot, deque())
        while times and now - times[0] >= self.period:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def recent(self, slot: Hashable) -> int:
        """How many replacements of ``slot`` count now (those within the last period)."""
        now = self.clock.seconds()
        return sum(1 for t in self._times.get(slot, ()) if now - t < self.period)
