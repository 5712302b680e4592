"""Task records and where they are kept: the store interface and the in-memory store.

The task controller writes one :class:`TaskRecord` per submitted task (ids as the users
see them) and reads it back to answer ``get_task_result`` from any client, now or after
the submitting client has gone. A record holds only wire-safe values: the task's opaque
frames and the options the scheduler needs, its state, timestamps, engine, attempts and
the outcome of the run that settled it (its result bytes). Nothing in a record is ever
unpickled by the controller. A large body or result is not frames but a
:class:`HeldPayload`, which the controller keeps apart (see :mod:`ipkernel.wire.kept`)
and frees with :meth:`HeldPayload.close` once it is no longer needed; a store may move it
to a file (:mod:`~ipkernel.controller.store_payloads`).

:class:`ITaskStore` is the contract; :class:`MemoryStore` keeps records in a dict for the
controller's lifetime, and :class:`~ipkernel.controller.store_sqlite.SQLiteStore`
(``ipcontroller --db PATH``) in a database that outlives it. Every field of a record is a
number, a string, ``None`` or a list of ``bytes``, so a record maps onto one row (frames
as BLOBs); :meth:`ITaskStore.save` is called after every change the controller makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "FINISHED_STATES",
    "STATES",
    "HeldPayload",
    "ITaskStore",
    "MemoryStore",
    "TaskRecord",
    "TaskSpec",
    "body_name",
    "close_held",
    "is_held",
    "result_name",
]

#: The states a record can be in, as the keys of ``queue_status``.
STATES = ("scheduled", "pending", "succeeded", "failed")
#: States in which a task's result is final.
FINISHED_STATES = frozenset({"succeeded", "failed"})

Frames = list[bytes]


@runtime_checkable
class HeldPayload(Protocol):
    """A large task body or result the controller holds apart from its record."""

    #: Its size in bytes.
    nbytes: int
    #: True once :meth:`close` was called.
    closed: bool
    #: The file it is kept in (see :meth:`move_to`), or ``None`` while it is in memory.
    path: str | None

    def sendable(self, share: bool) -> Any:
        """A new object to put in a message to send it once (``share``: the receiver
        can map this process's shared memory)."""

    def move_to(self, path: str, *, owns_file: bool) -> None:
        """Write it to a new file at ``path`` (mode 0600) and let go of its memory; it is
        sent from the file from now on. With ``owns_file``, :meth:`close` deletes the
        file; otherwise whoever moved it does, when the file is no longer needed.

        :raises OSError: if the file cannot be written (the payload stays where it was).
        """

    def close(self) -> None:
        """Free it (and delete its file, if it owns one); it cannot be sent afterwards."""


def is_held(value: object) -> bool:
    """Whether ``value`` is a :class:`HeldPayload` rather than frames (or ``None``).

    Frames are checked first: a protocol check is slow, and this runs for every task.
    """
    return (
        value is not None
        and not isinstance(value, (list, tuple))
        and isinstance(value, HeldPayload)
    )


def close_held(value: object) -> None:
    """Free ``value`` if it is a :class:`HeldPayload` (frames need nothing)."""
    if is_held(value):
        value.close()  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One runnable task as the controller holds it.

    ``body`` is the serialized task (code or function and arguments, ``push``, ``pull``,
    ``clear_before``/``clear_after``), made by the client and read only by the engine:
    frames, or a :class:`HeldPayload` for a large one.
    ``depend`` is the serialized ``depend`` function or ``None``; ``digest`` is the
    SHA-256 of its frames (computed by the controller from the bytes, so tasks sharing a
    ``depend`` function share cached verdicts). ``retries`` is how many re-runs a failed
    attempt may have.
    """

    body: Frames | HeldPayload
    depend: Frames | None
    digest: bytes | None
    retries: int


@dataclass(slots=True, eq=False)
class TaskRecord:
    """A submitted task, its recovery chain, and what became of it.

    ``chain[0]`` is the task itself and ``chain[1:]`` its recovery tasks, in order;
    ``link`` is the index of the one now in charge (it moves on when a task fails for
    good and its recovery task is queued). The result under :attr:`taskid` is the
    outcome of the last link that ran, as in IPython 0.9, where a recovery task took over
    the id of the task it recovered.

    ``outcome`` is ``None`` until the task is finished, then ``("ok", frames)`` (or
    ``("ok", held payload)`` for a large result), ``("raised", frames)`` or ``("error",
    (type_name, message))``. Times are seconds
    since the epoch on the controller's clock; ``duration`` is the engine's own
    measurement of the attempt that finished (``None`` if no attempt ran to the end).
    ``attempts`` counts the runs of the link in charge, ``recovered`` is ``link`` once
    the task is finished.
    """

    taskid: int
    chain: list[TaskSpec]
    submitted: float
    state: str = "scheduled"
    link: int = 0
    started: float | None = None
    completed: float | None = None
    engine_id: int | None = None
    attempts: int = 0
    duration: float | None = None
    outcome: tuple[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True once the record holds the task's final outcome."""
        return self.state in FINISHED_STATES

    def to_wire(self) -> dict[str, Any]:
        """The record as the task adapter sends it to a client (outcome bytes included)."""
        status, value = self.outcome if self.outcome is not None else (None, None)
        return {
            "taskid": self.taskid,
            "state": self.state,
            "status": status,
            "value": list(value) if isinstance(value, tuple) else value,
            "engine_id": self.engine_id,
            "submitted": self.submitted,
            "started": self.started,
            "completed": self.completed,
            "duration": self.duration,
            "attempts": self.attempts,
            "recovered": self.link,
        }


class ITaskStore(Interface):
    """Where task records live; the controller is its only user, in the reactor thread."""

    def reserve_ids(count):
        """Return the first of ``count`` consecutive task ids never handed out before.

        Ids are never reused within the store's life (across controller restarts, for a
        persistent store, which keeps the reservation before it returns). Raises
        ``ValueError`` if ``count`` is less than 1.
        """

    def add(record):
        """Keep a new :class:`TaskRecord`; ``ValueError`` if its id is already known."""

    def get(taskid):
        """Return the record of ``taskid``, or ``None`` if there is none."""

    def state(taskid):
        """Return the state of ``taskid``'s record, or ``None`` if there is none (as
        :meth:`get`, without reading the whole record)."""

    def save(record):
        """The controller changed ``record`` (state, times, outcome ...): persist it."""

    def ids(state):
        """Return the ids of the records in ``state`` (one of :data:`STATES`), ascending."""

    def count(state):
        """Return how many records are in ``state``."""

    def unfinished():
        """Return the records not finished, by id (a restarted controller queues them)."""

    def remove_finished(before=None):
        """Forget every finished record (with ``before``, only those completed before
        that time) and free their large results; return the ids forgotten, ascending."""

    def committed(now=False):
        """Return a Deferred that fires with ``None`` once every change made so far is
        kept: at once for a store in memory; for one on disk, after its next periodic
        write, or with ``now`` after a write at the end of this reactor turn."""

    def close():
        """Write what is pending and let go of files; the store is not used afterwards."""

    def keep_next_engine_id(value):
        """Remember ``value`` as :attr:`next_engine_id` (a persistent store writes it
        before it returns; ``sqlite3.Error`` if it cannot)."""

    size = Attribute("The number of records held.")
    next_id = Attribute("The first id never handed out: every id below it was reserved.")
    next_engine_id = Attribute(
        "The first engine id the engine registry never gave out, as last kept: a "
        "restarted controller gives new engines ids past every engine of its earlier "
        "runs, so that an engine reconnecting late still finds its id free."
    )


def body_name(taskid: int, link: int) -> str:
    """The name a store gives the file of a large body (link ``link`` of task ``taskid``)."""
    return f"{taskid}.{link}.body"


def result_name(taskid: int) -> str:
    """The name a store gives the file of task ``taskid``'s large result."""
    return f"{taskid}.result"


@implementer(ITaskStore)
class MemoryStore:
    """Records in a dict, for the controller's lifetime (the default store).

    :meth:`save` only re-files a record whose state changed; the record objects
    themselves are the stored data. ``shelf`` (a
    :class:`~ipkernel.controller.store_payloads.PayloadShelf`), if given, takes the large
    bodies and results of the records, to move them to files past its memory budget.
    """

    def __init__(self, shelf: Any = None) -> None:
        self._records: dict[int, TaskRecord] = {}
        # The state each record was filed under at its last add/save.
        self._filed: dict[int, str] = {}
        self._by_state: dict[str, set[int]] = {state: set() for state in STATES}
        self._next_id = 0
        self._next_engine_id = 0
        self._shelf = shelf

    @property
    def size(self) -> int:
        return len(self._records)

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def next_engine_id(self) -> int:
        return self._next_engine_id

    def keep_next_engine_id(self, value: int) -> None:
        self._next_engine_id = value

    def reserve_ids(self, count: int) -> int:
        if count < 1:
            raise ValueError(f"cannot reserve {count} ids")
        first = self._next_id
        self._next_id += count
        return first

    def add(self, record: TaskRecord) -> None:
        if record.taskid in self._records:
            raise ValueError(f"task {record.taskid} already exists")
        if record.taskid >= self._next_id:
            # A record added under an id nobody reserved (a store being filled by hand)
            # still keeps later reservations from handing that id out again.
            self._next_id = record.taskid + 1
        self._records[record.taskid] = record
        self._file(record)
        if self._shelf is not None:
            for link, spec in enumerate(record.chain):
                if is_held(spec.body):
                    self._shelf.place(spec.body, body_name(record.taskid, link))

    def get(self, taskid: int) -> TaskRecord | None:
        return self._records.get(taskid)

    def state(self, taskid: int) -> str | None:
        return self._filed.get(taskid)

    def save(self, record: TaskRecord) -> None:
        if self._filed.get(record.taskid) != record.state and record.taskid in self._records:
            self._file(record)
            if self._shelf is not None and record.finished and record.outcome is not None:
                value = record.outcome[1]
                if is_held(value):
                    self._shelf.place(value, result_name(record.taskid))

    def ids(self, state: str) -> list[int]:
        return sorted(self._by_state[state])

    def count(self, state: str) -> int:
        return len(self._by_state[state])

    def unfinished(self) -> list[TaskRecord]:
        return [
            self._records[i]
            for i in sorted(self._by_state["scheduled"] | self._by_state["pending"])
        ]

    def remove_finished(self, before: float | None = None) -> list[int]:
        gone = sorted(self._by_state["succeeded"] | self._by_state["failed"])
        if before is not None:
            records = self._records
            gone = [t for t in gone if (records[t].completed or 0.0) < before]
        for taskid in gone:
            outcome = self._records[taskid].outcome
            if outcome is not None:
                close_held(outcome[1])
        self._forget(gone)
        return gone

    def committed(self, now: bool = False) -> Deferred:
        return succeed(None)

    def close(self) -> None:
        if self._shelf is not None:
            self._shelf.close()

    def _file(self, record: TaskRecord) -> None:
        old = self._filed.get(record.taskid)
        if old is not None:
            self._by_state[old].discard(record.taskid)
        self._by_state[record.state].add(record.taskid)
        self._filed[record.taskid] = record.state

    def _forget(self, taskids: Iterable[int]) -> None:
        for taskid in taskids:
            self._records.pop(taskid, None)
            state = self._filed.pop(taskid, None)
            if state is not None:
                self._by_state[state].discard(taskid)
