"""A task record as a row of the SQLite store, and back: struct-packed BLOBs, no pickle.

Frames (``list[bytes]``) become one BLOB: their count, each one's length, then the bytes.
A recovery chain becomes one BLOB of its links, each with its ``retries``, its body
(frames, or the name of the file a large body was moved to), its ``depend`` frames and
their digest. Nothing here runs user code: the controller never decodes what the frames
hold.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from ipkernel.controller.store import HeldPayload, TaskRecord, TaskSpec

__all__ = [
    "COLUMNS",
    "Malformed",
    "pack_chain",
    "pack_frames",
    "record_from_row",
    "row_of",
    "unpack_chain",
    "unpack_frames",
]

_COUNT = struct.Struct("<I")
_ONE_FRAME = struct.Struct("<IQ")  # the count (1) and length of a single frame
_LINK = struct.Struct("<IBQ")  # retries, flags, size of the body that follows
_BODY_IN_FILE = 1
_HAS_DEPEND = 2
_DIGEST_SIZE = 32

#: The columns of the ``tasks`` table, in the order of :func:`row_of` (small ones first,
#: so that reading a row's state never touches its BLOBs' overflow pages).
COLUMNS = (
    "taskid",
    "state",
    "link",
    "submitted",
    "started",
    "completed",
    "engine_id",
    "attempts",
    "duration",
    "status",
    "error_type",
    "error_message",
    "result_file",
    "result",
    "chain",
)


class Malformed(ValueError):
    """A BLOB that is not what this module packs (a damaged or foreign database)."""


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """``frames`` as one BLOB."""
    count = len(frames)
    if count == 1:  # most bodies and results: spare building a format
        return _ONE_FRAME.pack(1, len(frames[0])) + frames[0]
    return struct.pack(f"<I{count}Q", count, *map(len, frames)) + b"".join(frames)


def unpack_frames(blob: bytes, offset: int = 0) -> tuple[list[bytes], int]:
    """The frames packed at ``offset`` of ``blob`` and the offset after them.

    :raises Malformed: if ``blob`` does not hold frames there.
    """
    try:
        (count,) = _COUNT.unpack_from(blob, offset)
        offset += _COUNT.size
        lengths = struct.unpack_from(f"<{count}Q", blob, offset)
        offset += 8 * count  # a u64 length each
    except struct.error as exc:
        raise Malformed(f"frames cut short: {exc}") from None
    frames = []
    for length in lengths:
        end = offset + length
        if end > len(blob):
            raise Malformed("frames cut short")
        frames.append(bytes(blob[offset:end]))
        offset = end
    return frames, offset


def pack_chain(chain: Sequence[TaskSpec], file_of: Callable[[HeldPayload], str]) -> bytes:
    """A recovery chain as one BLOB; ``file_of`` names the file of a large body (``""``
    for none: such a body counts as lost when the chain is read back)."""
    out = [_COUNT.pack(len(chain))]
    for spec in chain:
        body = spec.body
        if isinstance(body, list):
            packed = pack_frames(body)
            flags = 0
        else:
            packed = file_of(body).encode()
            flags = _BODY_IN_FILE
        depend = spec.depend
        if depend is None:
            out += (_LINK.pack(spec.retries, flags, len(packed)), packed)
        else:
            out += (
                _LINK.pack(spec.retries, flags | _HAS_DEPEND, len(packed)),
                packed,
                pack_frames(depend),
                spec.digest or b"\0" * _DIGEST_SIZE,
            )
    return b"".join(out)


def unpack_chain(blob: bytes, reopen: Callable[[str], HeldPayload]) -> list[TaskSpec]:
    """The chain :func:`pack_chain` made; ``reopen(name)`` opens a large body's file.

    :raises Malformed: for a BLOB that is not a chain.
    :raises OSError: from ``reopen``, for a body file that cannot be opened.
    """
    try:
        (count,) = _COUNT.unpack_from(blob, 0)
        offset = _COUNT.size
        chain = []
        for _ in range(count):
            retries, flags, size = _LINK.unpack_from(blob, offset)
            offset += _LINK.size
            raw = bytes(blob[offset : offset + size])
            offset += size
            if flags & _BODY_IN_FILE:
                body: Any = reopen(raw.decode())
            else:
                body, _ = unpack_frames(raw)
            depend = digest = None
            if flags & _HAS_DEPEND:
                depend, offset = unpack_frames(blob, offset)
                digest = bytes(blob[offset : offset + _DIGEST_SIZE])
                offset += _DIGEST_SIZE
            chain.append(TaskSpec(body, depend, digest, retries))
    except (struct.error, UnicodeDecodeError) as exc:
        raise Malformed(f"a task chain that cannot be read: {exc}") from None
    return chain


def row_of(record: TaskRecord, file_of: Callable[[HeldPayload], str]) -> tuple:
    """The columns of ``record`` (:data:`COLUMNS` but ``chain``) for an insert or update;
    ``file_of`` names the file of a large result."""
    status = error_type = error_message = result_file = result = None
    if record.outcome is not None:
        status, value = record.outcome
        if status == "error":
            error_type, error_message = str(value[0]), str(value[1])
        elif isinstance(value, (list, tuple)):
            result = pack_frames(value)
        else:
            result_file = file_of(value)
    return (
        record.taskid,
        record.state,
        record.link,
        record.submitted,
        record.started,
        record.completed,
        record.engine_id,
        record.attempts,
        record.duration,
        status,
        error_type,
        error_message,
        result_file,
        result,
    )


def record_from_row(
    row: Sequence[Any], chain: list[TaskSpec], reopen: Callable[[str], HeldPayload]
) -> TaskRecord:
    """The record of a row (:data:`COLUMNS` but ``chain``, which is given decoded).

    A large result's file is opened with ``reopen(name)``; if that fails the result
    becomes a ``TransferError`` naming the file.
    """
    (taskid, state, link, submitted, started, completed, engine_id, attempts, duration,
     status, error_type, error_message, result_file, result) = row  # fmt: skip
    outcome: tuple[str, Any] | None = None
    if status == "error":
        outcome = ("error", (error_type, error_message))
    elif status is not None:
        if result_file is not None:
            try:
                outcome = (status, reopen(result_file))
            except OSError as exc:
                outcome = ("error", ("TransferError", f"the task's result file is lost: {exc}"))
        else:
            outcome = (status, unpack_frames(result)[0])
    return TaskRecord(
        taskid,
        chain,
        submitted,
        state=state,
        link=link,
        started=started,
        completed=completed,
        engine_id=engine_id,
        attempts=attempts,
        duration=duration,
        outcome=outcome,
    )
