"""Who waits for which unfinished task: blocking ``get_task_result(s)`` and ``barrier``."""

from __future__ import annotations

from collections.abc import Callable, Collection

from twisted.internet.defer import Deferred

from ipkernel.controller.store import TaskRecord

__all__ = ["Waiters"]


class Waiters:
    """Deferreds waiting for tasks to finish, fired by :meth:`finished`."""

    def __init__(self) -> None:
        self._waiting: dict[int, list[Callable[[TaskRecord], None]]] = {}

    def wait(self, taskid: int) -> Deferred:
        """A Deferred that fires with the :class:`TaskRecord` of unfinished task
        ``taskid`` once it is finished (never errbacks)."""
        d: Deferred = Deferred()
        self._waiting.setdefault(taskid, []).append(d.callback)
        return d

    def wait_all(self, taskids: Collection[int]) -> Deferred:
        """A Deferred that fires with ``None`` once every one of the unfinished tasks
        ``taskids`` (distinct ids) is finished; at once if there are none. One Deferred
        and one counter, whatever their number."""
        d: Deferred = Deferred()
        if not taskids:
            d.callback(None)
            return d
        left = [len(taskids)]

        def one_done(_: TaskRecord) -> None:
            left[0] -= 1
            if left[0] == 0:
                d.callback(None)

        for taskid in taskids:
            self._waiting.setdefault(taskid, []).append(one_done)
        return d

    def finished(self, record: TaskRecord) -> None:
        """``record``'s task is finished: fire whatever waits for it."""
        for waiter in self._waiting.pop(record.taskid, ()):
            waiter(record)
