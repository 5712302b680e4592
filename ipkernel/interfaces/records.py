"""Packed records: many small records and their frames as one flat list of ``bytes``.

PB's jelly and banana spend a Python-level step on every element of a message, so a
batch of ten thousand tasks sent as nested lists costs far more than the tasks' bytes.
The task interface sends its batches (client to controller, controller to engine and
back, results to clients) as one *packed message* instead::

    [header, frame, frame, ...]

``header`` is the records' fixed fields packed with :mod:`struct` (no pickle: the
controller reads it without trusting anything), one after the other; after each record's
fields come the sizes of its *frame groups* (a signed 32-bit count each, ``-1`` for a
group that is ``None``). The frames of every record's groups follow the header, in order,
each a separate ``bytes`` so that no string grows past the broker's limit.

A :class:`RecordCodec` names the fields (a :mod:`struct` format) and the number of frame
groups per record; both ends build the same codec.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "STATES",
    "STATUSES",
    "TASK_REPLY",
    "TASK_RESULT",
    "TASK_RUN",
    "TASK_SUBMIT",
    "MalformedRecords",
    "RecordCodec",
    "pack_results",
    "unpack_results",
]

Frames = list[bytes]


class MalformedRecords(ValueError):
    """A packed message does not match its codec; the message says how."""


class RecordCodec:
    """Pack and unpack records of ``fields`` (a :mod:`struct` format without byte-order
    prefix; little-endian, standard sizes) with ``groups`` frame groups each."""

    def __init__(self, fields: str, groups: int) -> None:
        self.groups = groups
        self._struct = struct.Struct("<" + fields + "i" * groups)
        self._nfields = len(self._struct.unpack(bytes(self._struct.size))) - groups

    def pack(self, records: Iterable[tuple[Sequence[Any], Sequence[Frames | None]]]) -> Frames:
        """``[(fields, groups), ...]`` to a packed message (``groups``: frame lists or None)."""
        pack = self._struct.pack
        header: list[bytes] = []
        frames: Frames = []
        for values, groups in records:
            counts = []
            for group in groups:
                if group is None:
                    counts.append(-1)
                else:
                    counts.append(len(group))
                    frames.extend(group)
            header.append(pack(*values, *counts))
        return [b"".join(header), *frames]

    def unpack(self, message: object) -> list[tuple[tuple[Any, ...], list[Frames | None]]]:
        """A packed message back to ``[(fields, groups), ...]``.

        :raises MalformedRecords: if ``message`` is not a non-empty list of ``bytes``, its
            header is not a whole number of records, a count is below ``-1``, or the
            counts do not add up to the number of frames.
        """
        if not isinstance(message, (list, tuple)) or not message:
            raise MalformedRecords("expected a non-empty list of bytes")
        header = message[0]
        if not isinstance(header, bytes) or len(header) % self._struct.size:
            raise MalformedRecords("the header is not a whole number of records")
        frames = message[1:]
        n = self._nfields
        records = []
        position = 0
        for row in self._struct.iter_unpack(header):
            groups: list[Frames | None] = []
            for count in row[n:]:
                if count == -1:
                    groups.append(None)
                    continue
                if count < 0 or position + count > len(frames):
                    raise MalformedRecords("frame counts do not match the frames sent")
                group = list(frames[position : position + count])
                position += count
                groups.append(group)
            records.append((row[:n], groups))
        if position != len(frames):
            raise MalformedRecords("frame counts do not match the frames sent")
        for frame in frames:
            if not isinstance(frame, bytes):
                raise MalformedRecords(f"a frame is a {type(frame).__name__}, not bytes")
        return records


# The task interface's packed messages (see ipkernel.controller.tasks and docs/internals.md).

#: Task outcome kinds in packed records, by code.
STATUSES = ("ok", "raised", "declined", "error")
#: Record states in packed results, by code.
STATES = ("scheduled", "pending", "succeeded", "failed")

#: Client to controller, ``run_tasks``: one record per task and per recovery task, fields
#: ``(taskid, retries)``, groups ``(body, depend)``. A record with ``taskid == -1`` is the
#: recovery task of the record before it. A body ``None`` travels apart (a large one).
TASK_SUBMIT = RecordCodec("qI", 2)

#: Controller to engine, ``run_task``: fields ``(taskid, digest)`` (the SHA-256 of the
#: ``depend`` frames, zeros without ``depend``), groups ``(body, depend)``.
TASK_RUN = RecordCodec("q32s", 2)

#: Engine to controller, the answer to ``run_task``: fields ``(taskid, status code,
#: seconds, properties version)``, one group: the outcome's frames (``ok``, ``raised``),
#: ``[type name, message]`` in UTF-8 (``error``), ``None`` (``declined``, whose version is
#: the field; or a large ``ok`` value, which travels apart).
TASK_REPLY = RecordCodec("qBdq", 1)

#: Controller to client, task results: fields ``(taskid, state code, status code or -1,
#: engine id or -1, submitted, started, completed, duration, attempts, recovered)``, times
#: NaN when unknown; one group: the outcome's frames, ``[type name, message]`` in UTF-8, or
#: ``None`` while unfinished (or for a large result, which travels apart).
TASK_RESULT = RecordCodec("qBbqddddII", 1)


def _time(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _untime(value: float) -> float | None:
    return None if value != value else value  # NaN stands for "unknown"


def pack_results(records: Sequence[dict[str, Any] | None]) -> Frames:
    """Pack task records (``TaskRecord.to_wire()`` dicts, or ``None`` for "not finished")
    with :data:`TASK_RESULT`."""
    rows: list[tuple[Sequence[Any], Sequence[Frames | None]]] = []
    for record in records:
        if record is None:
            rows.append(((-1, 0, -1, -1, *(math.nan,) * 4, 0, 0), (None,)))
            continue
        status = record["status"]
        value = record["value"]
        if status == "error":
            group: Frames | None = [str(value[0]).encode(), str(value[1]).encode()]
        elif status in ("ok", "raised") and value is not None:
            group = list(value)
        else:
            group = None
        engine = record["engine_id"]
        rows.append(
            (
                (
                    record["taskid"],
                    STATES.index(record["state"]),
                    -1 if status is None else STATUSES.index(status),
                    -1 if engine is None else engine,
                    _time(record["submitted"]),
                    _time(record["started"]),
                    _time(record["completed"]),
                    _time(record["duration"]),
                    record["attempts"],
                    record["recovered"],
                ),
                (group,),
            )
        )
    return TASK_RESULT.pack(rows)


def unpack_results(message: object) -> list[dict[str, Any] | None]:
    """The inverse of :func:`pack_results`.

    :raises MalformedRecords: for a message that is not a packed list of results.
    """
    out: list[dict[str, Any] | None] = []
    for fields, (group,) in TASK_RESULT.unpack(message):
        taskid, state, status, engine, submitted, started, completed, duration = fields[:8]
        attempts, recovered = fields[8:]
        if taskid == -1:
            out.append(None)
            continue
        if not 0 <= state < len(STATES) or not -1 <= status < len(STATUSES):
            raise MalformedRecords("unknown state or status code")
        name = None if status == -1 else STATUSES[status]
        value: Any = group
        if name == "error":
            if group is None or len(group) != 2:
                raise MalformedRecords("an error result needs a type name and a message")
            value = (group[0].decode(errors="replace"), group[1].decode(errors="replace"))
        out.append(
            {
                "taskid": taskid,
                "state": STATES[state],
                "status": name,
                "value": value,
                "engine_id": None if engine == -1 else engine,
                "submitted": _untime(submitted),
                "started": _untime(started),
                "completed": _untime(completed),
                "duration": _untime(duration),
                "attempts": attempts,
                "recovered": recovered,
            }
        )
    return out
