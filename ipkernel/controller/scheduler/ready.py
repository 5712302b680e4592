"""The queue of scheduled tasks, indexed so that each engine finds the first it may take.

Internal to the scheduler package. Tasks without ``depend`` wait in one shared heap; tasks
with ``depend`` are also indexed per engine (each engine's candidates: those it has not
declined at its current properties version). Entries are never removed from the middle of
a heap: a task leaving the queue makes its entries stale (its state or epoch no longer
match), and stale entries are dropped when they surface or when a heap is compacted.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from .decisions import TaskState
from .entries import EngineEntry, HeapEntry, TaskEntry

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """Heaps over the scheduler's ``tasks`` and ``engines`` (shared, owned by the scheduler).

    The scheduler sets a task's state to ``scheduled`` before :meth:`push` and removes
    it with :meth:`remove` before changing its state again; queue order is each task's
    :meth:`TaskEntry.entry`.
    """

    def __init__(self, tasks: dict[int, TaskEntry], engines: dict[int, EngineEntry]) -> None:
        self._tasks = tasks
        self._engines = engines
        # Queued tasks without depend, which any engine can take.
        self._plain: list[HeapEntry] = []
        self._n_plain = 0
        # Queued tasks with depend; each engine indexes those it may take.
        self._depend: set[int] = set()
        self._epochs: Iterator[int] = itertools.count()

    def push(self, task: TaskEntry) -> None:
        """Queue ``task`` (state already ``scheduled``) at its place, with a fresh epoch."""
        task.epoch = next(self._epochs)
        entry = task.entry()
        if not task.has_depend:
            heapq.heappush(self._plain, entry)
            self._n_plain += 1
            return
        self._depend.add(task.id)
        limit = 2 * len(self._depend) + 64
        for engine in self._engines.values():
            if engine.can_take(task):
                if len(engine.candidates) > limit:
                    self.index(engine)
                else:
                    heapq.heappush(engine.candidates, entry)

    def remove(self, task: TaskEntry) -> None:
        """Take queued ``task`` out (before its state changes); its entries go stale."""
        if task.has_depend:
            self._depend.discard(task.id)
        else:
            self._n_plain -= 1
            if len(self._plain) > 2 * self._n_plain + 64:
                # In place, here and for the other heaps: a scheduling pass may hold a
                # reference.
                self._plain[:] = [e for e in self._plain if self._live(e)]
                heapq.heapify(self._plain)

    def index(self, engine: EngineEntry) -> None:
        """Rebuild ``engine``'s candidates (it arrived, or its properties changed)."""
        tasks = self._tasks
        engine.candidates[:] = [tasks[i].entry() for i in self._depend if engine.can_take(tasks[i])]
        heapq.heapify(engine.candidates)

    def pick(self, engine: EngineEntry) -> TaskEntry | None:
        """Pop and return the first queued task ``engine`` can take, if any.

        The task is still ``scheduled``: the caller calls :meth:`remove` next.
        """
        plain = self._plain
        while plain and not self._live(plain[0]):
            heapq.heappop(plain)
        cands = engine.candidates
        while cands:
            task = self._tasks.get(cands[0][2])
            if (
                task is not None
                and task.state is TaskState.SCHEDULED
                and task.epoch == cands[0][3]
                and engine.can_take(task)
            ):
                break
            heapq.heappop(cands)
        if cands and (not plain or cands[0] < plain[0]):
            return self._tasks[heapq.heappop(cands)[2]]
        if plain:
            return self._tasks[heapq.heappop(plain)[2]]
        return None

    def _live(self, entry: HeapEntry) -> bool:
        task = self._tasks.get(entry[2])
        return task is not None and task.state is TaskState.SCHEDULED and task.epoch == entry[3]
