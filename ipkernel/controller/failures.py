"""The latest failed tasks, as plain data for a status view.

Only what the controller holds in the clear is shown: the task's id, engine, attempts,
times, and for a failure the controller or the engine named (``("error", (type,
message))``: ``EngineError``, ``TaskAborted``, ``TransferError`` ...) its type and
message. An exception raised by user code travels pickled, traceback and all, and the
controller never unpickles: of such a failure it shows the size of what it holds (a
client reads the traceback with ``get_task_result``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ipkernel.controller.store import TaskRecord

__all__ = ["RecentFailures"]

#: The longest message kept per failure, in characters.
MESSAGE_LIMIT = 2000


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class RecentFailures:
    """The ``keep`` latest failed tasks, newest first in :meth:`view`."""

    def __init__(self, keep: int = 20) -> None:
        self._failures: deque[dict[str, Any]] = deque(maxlen=keep)

    def add(self, record: TaskRecord) -> None:
        """Note ``record``, a task that has just failed (its outcome set)."""
        status, value = record.outcome if record.outcome is not None else (None, None)
        failure: dict[str, Any] = {
            "taskid": record.taskid,
            "engine": record.engine_id,
            "submitted": record.submitted,
            "completed": record.completed,
            "duration": _finite(record.duration),
            "attempts": record.attempts,
            "recovered": record.link,
            "status": status,
            "type": None,
            "message": None,
            "bytes": None,
        }
        if status == "error" and isinstance(value, (list, tuple)) and len(value) == 2:
            failure["type"] = str(value[0])
            failure["message"] = str(value[1])[:MESSAGE_LIMIT]
        elif isinstance(value, list):
            failure["bytes"] = sum(len(frame) for frame in value)
        elif value is not None:
            failure["bytes"] = getattr(value, "nbytes", None)
        self._failures.append(failure)

    def view(self) -> list[dict[str, Any]]:
        """The failures noted, newest first (copies: the caller may keep them)."""
        return [dict(f) for f in reversed(self._failures)]
