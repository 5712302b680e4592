"""The Task client's load-balanced ``map``: what runs on an engine for one chunk, how big
the chunks are, and how the chunks' results are joined back.

:func:`map_chunk` travels to the engines by reference: they import it from here.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ipkernel.client.task_types import TaskResult
from ipkernel.errors import CompositeError
from ipkernel.serialization import deserialize_failure, serialize_failure

__all__ = ["CHUNKS_PER_ENGINE", "chunk_count", "join_map", "map_chunk"]

#: Chunks per engine a ``map`` aims at when no ``chunksize`` is given: enough for the
#: engines that finish first to take more, few enough that each chunk is worth a task.
CHUNKS_PER_ENGINE = 4


def chunk_count(n: int, chunksize: int | None, engines: int) -> int:
    """How many chunks ``n > 0`` items make: chunks of ``chunksize`` items, or by default
    about :data:`CHUNKS_PER_ENGINE` per engine (as for one engine when there is none yet:
    the chunks wait for engines like any task)."""
    if chunksize is None:
        chunksize = math.ceil(n / (CHUNKS_PER_ENGINE * max(1, engines)))
    return math.ceil(n / chunksize)


def map_chunk(func: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list, list]:
    """Run on an engine for one chunk of a ``map``: apply ``func`` to every item.

    Returns ``(values, failures)``: a failed item's value is ``None`` and its failure,
    serialized, is in ``failures`` as ``(index in the chunk, frames)``, so that one item's
    exception neither hides the others' nor loses the chunk's work.
    """
    values: list[Any] = []
    failures: list[tuple[int, list[bytes]]] = []
    for index, item in enumerate(items):
        try:
            values.append(func(item))
        except Exception as exc:
            tb = exc.__traceback__
            # The first frame is this function's: it means nothing to the user.
            text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else tb))
            exc.remote_traceback = text  # type: ignore[attr-defined]
            values.append(None)
            failures.append((index, serialize_failure(exc, engine_id=None, method="map")))
    return values, failures


def join_map(results: list[TaskResult], sizes: list[int]) -> list[Any]:
    """The ``map``'s values, in order, from its chunks' results (``sizes[i]`` items in
    chunk ``i``).

    :raises CompositeError: if any item failed: one ``(item index, 'map', exception)``
        entry per failed item, ``results`` holding every item's value or exception (a
        chunk that failed as a whole counts as the failure of each of its items).
    """
    values: list[Any] = []
    elist: list[tuple[int, str, BaseException]] = []
    for tr, size in zip(results, sizes, strict=True):
        base = len(values)
        if tr.failure is not None:
            values.extend([tr.failure] * size)
            elist.extend((base + i, "map", tr.failure) for i in range(size))
            continue
        chunk_values, failures = tr.result
        values.extend(chunk_values)
        for index, frames in failures:
            exc = deserialize_failure(frames)
            exc.engine_id = tr.engineid  # type: ignore[attr-defined]
            values[base + index] = exc
            elist.append((base + index, "map", exc))
    if elist:
        raise CompositeError(elist, values)
    return values
