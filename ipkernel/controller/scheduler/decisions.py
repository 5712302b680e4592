"""What the scheduler hands out: task states, the decisions its events return, and the
reasons a task finishes without success.

Plain values (frozen dataclasses, an enum, strings), so a caller can compare decisions
with ``==`` and a test can spell out the list it expects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ABORTED",
    "ENGINE_ERROR",
    "FAILED",
    "Decision",
    "InterruptTask",
    "RecoveryDropped",
    "RecoveryQueued",
    "RunTask",
    "TaskDone",
    "TaskState",
]

#: :attr:`TaskDone.reason` of a task whose user code failed on its last attempt.
FAILED = "failed"
#: :attr:`TaskDone.reason` of a task whose engine left while running its last attempt.
ENGINE_ERROR = "EngineError"
#: :attr:`TaskDone.reason` of a task cancelled by ``Scheduler.abort``.
ABORTED = "TaskAborted"


class TaskState(enum.StrEnum):
    """Where a task stands; the values are the keys of ``Scheduler.status``."""

    STANDBY = "standby"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunTask:
    """Send task ``taskid`` to engine ``engine_id`` (tentatively, if it has ``depend``)."""

    taskid: int
    engine_id: int


@dataclass(frozen=True, slots=True)
class InterruptTask:
    """Interrupt engine ``engine_id``, which is running the aborted task ``taskid``.

    The engine's slot stays taken until the engine reports back on ``taskid`` (finished
    or declined) or leaves.
    """

    taskid: int
    engine_id: int


@dataclass(frozen=True, slots=True)
class TaskDone:
    """Task ``taskid`` is finished; record its outcome.

    ``reason`` is ``None`` on success, else :data:`FAILED`, :data:`ENGINE_ERROR` or
    :data:`ABORTED`.
    """

    taskid: int
    succeeded: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryQueued:
    """Task ``taskid`` failed for good; its recovery task ``recovery_id`` is now queued."""

    taskid: int
    recovery_id: int


@dataclass(frozen=True, slots=True)
class RecoveryDropped:
    """Standby recovery task ``taskid`` will never run; the scheduler has forgotten it."""

    taskid: int


Decision = RunTask | InterruptTask | TaskDone | RecoveryQueued | RecoveryDropped
