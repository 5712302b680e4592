"""Task ids on the client side: the ids reserved from the controller and not used yet,
and the checks that turn a caller's id arguments into ints.

A client reserves ids in blocks (:class:`IdPool`), so that submitting a task names its id
without a round trip to the controller; the blocks grow as the client runs more tasks.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable

__all__ = ["FIRST_ID_BLOCK", "MAX_ID_BLOCK", "IdPool", "as_ranges", "id_list", "one_id"]

#: Ids a client reserves at first, and at most, in one round trip.
FIRST_ID_BLOCK = 16
MAX_ID_BLOCK = 4096


class IdPool:
    """Task ids reserved from the controller and not used yet (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._stop = 0
        self._block = FIRST_ID_BLOCK

    def take(self) -> int | None:
        """An unused reserved id, or ``None`` when the pool is empty."""
        with self._lock:
            if self._next < self._stop:
                self._next += 1
                return self._next - 1
            return None

    def want(self) -> int:
        """How many ids to reserve next: more each time, as a client that ran many tasks
        will likely run more."""
        with self._lock:
            count = self._block
            self._block = min(self._block * 2, MAX_ID_BLOCK)
            return count

    def add(self, first: int, count: int) -> None:
        """The controller reserved ``count`` ids from ``first`` on: use them next."""
        with self._lock:
            self._next, self._stop = first, first + count

    def unused(self) -> range:
        """The reserved ids not used yet (to claim again from a restarted controller)."""
        with self._lock:
            return range(self._next, self._stop)

    def drop(self) -> None:
        """Forget the unused ids (a controller that restarted without its task store
        does not know them)."""
        with self._lock:
            self._next = self._stop


def as_ranges(ids: Iterable[int]) -> list[list[int]]:
    """``[[first, count], ...]`` covering ``ids`` (runs of consecutive ids merged)."""
    out: list[list[int]] = []
    for taskid in sorted(set(ids)):
        if out and out[-1][0] + out[-1][1] == taskid:
            out[-1][1] += 1
        else:
            out.append([taskid, 1])
    return out


def one_id(taskid: object) -> int:
    """A task id as an int (numpy integers welcome); ``TypeError`` naming anything else."""
    try:
        return operator.index(taskid)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a task id is an int, not {taskid!r:.100}")


def id_list(taskids: int | Iterable[int]) -> list[int]:
    """One id or several, as a list of ints (numpy integers welcome); ``TypeError``
    naming anything else."""
    if hasattr(taskids, "__index__"):
        return [operator.index(taskids)]  # type: ignore[arg-type]
    try:
        return [operator.index(taskid) for taskid in taskids]  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"expected a task id or a list of task ids, not {taskids!r:.100}")
