"""What the scheduler knows of each task and each engine, and how it keys its heaps.

Internal to the scheduler package: :class:`~.machine.Scheduler` owns these entries and
:class:`~.ready.ReadyQueue` indexes them; nothing outside the package sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .decisions import TaskState

__all__ = ["EngineEntry", "HeapEntry", "TaskEntry", "VersionKey"]

# A queue entry: (priority, sequence, taskid, epoch). (priority, sequence, taskid) is the
# task's place in the queue; the epoch, fresh each time the task is queued, tells a live
# entry from the stale ones that heaps keep until they surface.
HeapEntry = tuple[Any, int, int, int]
# An engine's properties version as the scheduler compares it: (incarnation, version). The
# incarnation changes when an engine id is registered again, so verdicts given by a
# previous engine holding the same id never apply to the new one.
VersionKey = tuple[int, int]


@dataclass(slots=True, eq=False)
class TaskEntry:
    """One task: its options, where it stands, and the engines that declined it."""

    id: int
    retries: int
    recovery: int | None
    has_depend: bool
    state: TaskState
    parent: int | None = None
    priority: Any = 0
    seq: int = 0
    epoch: int = -1
    attempts: int = 0
    engine: int | None = None
    declined: dict[int, VersionKey] = field(default_factory=dict)

    def entry(self) -> HeapEntry:
        """The task's heap entry for its current stay in the queue."""
        return (self.priority, self.seq, self.id, self.epoch)


@dataclass(slots=True, eq=False)
class EngineEntry:
    """One engine: its properties version, the tasks it holds, whether it is busy."""

    id: int
    incarnation: int
    version: VersionKey
    running: set[int] = field(default_factory=set)
    # Renewed whenever the load changes; only the free-slot entry with the current token
    # is live.
    token: int = 0
    # Set by Scheduler.engine_busy: scheduling passes skip the engine.
    busy: bool = False
    # Queued depend tasks this engine has not declined at its current version.
    candidates: list[HeapEntry] = field(default_factory=list)

    def can_take(self, task: TaskEntry) -> bool:
        """False if this engine declined ``task`` at its current properties version."""
        return task.declined.get(self.id) != self.version
