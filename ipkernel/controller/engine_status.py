"""What each engine is doing, as plain data for a status view.

One dict per registered engine, built from what the controller holds: the engine's
registration info (host, pid, MPI rank), its queue (the command in flight and since when,
how many wait behind it), the tasks it runs, and the version of its properties it last
announced (the values themselves live on the engine, pickled, and are never read here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipkernel.controller.queue import EngineQueue
from ipkernel.controller.registry import EngineRegistry

__all__ = ["ENGINE_STATES", "engine_status"]

#: An engine's state in :func:`engine_status`: nothing in flight, a task batch in flight,
#: another command in flight.
ENGINE_STATES = ("idle", "tasks", "busy")

#: ``{engine id: (ids of the first tasks of the batch it runs, tasks in flight)}``.
Running = Mapping[int, tuple[list[int], int]]


def _plain(value: object, kind: type) -> Any:
    """``value`` if it is a ``kind`` (an engine's info is whatever the engine sent)."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def engine_status(
    registry: EngineRegistry,
    queues: Mapping[int, EngineQueue],
    running: Running,
    versions: Mapping[int, int],
) -> list[dict[str, Any]]:
    """One dict per registered engine, by ascending id.

    Keys: ``id``, ``host``, ``pid``, ``rank`` (from its registration info; ``None`` when
    absent), ``state`` (one of :data:`ENGINE_STATES`), ``running`` (the command in
    flight or ``None``), ``since`` (when that command was handed to the engine, on the
    queues' clock, or ``None``), ``queue`` (commands waiting behind it), ``tasks`` (ids
    of the first tasks of the batch it runs), ``task_count`` (tasks in flight on it),
    ``properties_version`` (the latest version of its properties it announced, 0 at
    first).
    """
    views = []
    no_tasks: tuple[list[int], int] = ([], 0)
    for engine_id in registry.ids():
        info = registry.get(engine_id).info
        queue = queues.get(engine_id)
        command = queue.in_flight if queue is not None else None
        if command is None:
            state = "idle"
        elif command == "run_task":
            state = "tasks"
        else:
            state = "busy"
        tasks, task_count = running.get(engine_id, no_tasks)
        views.append(
            {
                "id": engine_id,
                "host": _plain(info.get("host"), str),
                "pid": _plain(info.get("pid"), int),
                "rank": _plain(info.get("mpi_rank"), int),
                "state": state,
                "running": command,
                "since": queue.in_flight_since if queue is not None else None,
                "queue": queue.waiting if queue is not None else 0,
                "tasks": tasks,
                "task_count": task_count,
                "properties_version": versions.get(engine_id, 0),
            }
        )
    return views
