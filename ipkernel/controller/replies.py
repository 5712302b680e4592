"""An engine's answer to a batch of tasks, read: what each outcome means, entry by entry.

An engine answers ``run_task`` with ``("tasks", packed)``: one
:data:`~ipkernel.interfaces.records.TASK_REPLY` record per task; or with ``("tasks",
packed, results)`` when large results travelled apart (``results`` maps entry indexes to
the :class:`~ipkernel.controller.store.HeldPayload` kept for each, or the text of why it
was not kept); or with an ``("error", (type name, message))`` outcome for the whole batch.
Nothing here unpickles anything: the controller reads struct headers and keeps frames.
"""

from __future__ import annotations

from typing import Any

from ipkernel.controller.store import HeldPayload, close_held
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, MalformedRecords

__all__ = [
    "Outcome",
    "batch_error",
    "close_results",
    "error_type",
    "malformed",
    "parse_entry",
    "read_reply",
    "split_outcome",
]

#: A command's outcome: ``(status, value)``.
Outcome = tuple[str, Any]

_ERROR_CODE = STATUSES.index("error")


def split_outcome(outcome: object) -> tuple[Any, Any]:
    """``(status, value)`` of an answer, or ``(None, None)`` for one of no known shape."""
    if isinstance(outcome, (list, tuple)) and (
        len(outcome) == 2 or (len(outcome) == 3 and outcome[0] == "tasks")
    ):
        return outcome[0], outcome[1]
    return None, None


def error_type(value: object) -> Any:
    """The type name of an ``error`` outcome's value, or ``None``."""
    if isinstance(value, (list, tuple)) and value:
        return value[0]
    return None


def batch_error(outcome: object) -> Outcome:
    """The outcome of a whole batch that failed, as an outcome for each of its tasks."""
    status, value = split_outcome(outcome)
    if status in ("raised", "error"):
        return (status, value)
    return ("error", ("IPKernelError", f"the engine answered a batch with {status!r}"))


def malformed(exc: MalformedRecords) -> Outcome:
    """The outcome for each task of a batch whose answer could not be read."""
    return ("error", ("IPKernelError", f"malformed answer: {exc}"))


def close_results(outcome: object) -> None:
    """Free the large results of an answer nobody will read."""
    if isinstance(outcome, tuple) and len(outcome) == 3 and isinstance(outcome[2], dict):
        for held in outcome[2].values():
            close_held(held)


def read_reply(answer: tuple) -> list:
    """Unpack the entries of a ``("tasks", packed[, results])`` answer.

    With ``results``, put each large result in its entry, and make an entry whose result
    did not arrive an ``error`` (``TransferError``); results with no entry to go to are
    freed.

    :raises MalformedRecords: for an answer that cannot be read; its results are freed.
    """
    results = answer[2] if len(answer) == 3 else {}
    try:
        entries = TASK_REPLY.unpack(answer[1])
        if not isinstance(results, dict):
            raise MalformedRecords("its results are not a dict")
    except MalformedRecords:
        for value in results.values() if isinstance(results, dict) else ():
            close_held(value)
        raise
    for index, value in results.items():
        if not (isinstance(index, int) and 0 <= index < len(entries)):
            close_held(value)
            continue
        fields, _ = entries[index]
        if isinstance(value, HeldPayload):
            entries[index] = (fields, (value,))
        else:
            error = [b"TransferError", f"the task's result did not arrive: {value}".encode()]
            entries[index] = ((fields[0], _ERROR_CODE, fields[2], fields[3]), (error,))
    return entries


def parse_entry(entry: tuple) -> tuple[int, str, Any, float | None] | None:
    """Check one entry of :func:`read_reply`; return ``(taskid, status, value, seconds)``
    or ``None`` if it makes no sense."""
    (sid, code, seconds, version), (group,) = entry
    if not 0 <= code < len(STATUSES) or seconds != seconds or seconds < 0:  # NaN, negative
        return None
    status = STATUSES[code]
    if status in ("ok", "raised"):
        if not group:
            return None
        return sid, status, group, seconds
    if status == "declined":
        return sid, status, version, seconds
    if not group or len(group) != 2:
        return None
    try:
        return sid, status, (group[0].decode(), group[1].decode()), seconds
    except UnicodeDecodeError:
        return None
