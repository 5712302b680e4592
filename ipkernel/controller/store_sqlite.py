"""Task records in SQLite (``ipcontroller --db PATH``), so that they outlive the controller.

One table holds one row per task: its chain of specs (frames as a BLOB), state, link,
times, engine, attempts, duration and outcome (result frames as a BLOB, or the error's
type and message); another holds the next task id, so that ids are never handed out
twice, restarts included, and the next engine id (see
:attr:`~ipkernel.controller.store.ITaskStore.next_engine_id`). Large bodies and results
are files beside the database (:class:`~ipkernel.controller.store_payloads.PayloadShelf`),
named in the rows. Rows are packed with :mod:`~ipkernel.controller.store_codec`; nothing
is ever unpickled.

The controller is the database's one writer (SQLite's exclusive locking mode: a second
controller on the same file is refused) and writes in the reactor thread, so writes are
batched (:mod:`~ipkernel.controller.store_writes`), into a WAL journal with
``synchronous=NORMAL`` (a commit survives the controller's crash; the operating system's
may lose the last few). What a restart needs is written: a task soon after it is
submitted (once finished, if it finishes within 3 s: one row written once), the
link of its chain in charge when a recovery task takes over, and its end. That a task is
running on an engine is not (a restart queues it again all the same), so a row reads
``scheduled`` until its task finishes, or ``pending`` if it was already running when
first written.

Records not finished stay in memory, as the objects the controller changes; a finished
record leaves memory once written, and :meth:`SQLiteStore.get` reads it back.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ipkernel.controller.store import (
    FINISHED_STATES,
    STATES,
    HeldPayload,
    ITaskStore,
    TaskRecord,
    body_name,
    is_held,
    result_name,
)
from ipkernel.controller.store_codec import COLUMNS, Malformed, record_from_row, unpack_chain
from ipkernel.controller.store_payloads import PayloadShelf
from ipkernel.controller.store_writes import DEFAULT_INTERVAL, BatchedWrites
from ipkernel.errors import IPKernelError

__all__ = ["SQLiteStore", "StoreUnavailable", "payload_directory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    taskid INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    link INTEGER NOT NULL,
    submitted REAL NOT NULL,
    started REAL,
    completed REAL,
    engine_id INTEGER,
    attempts INTEGER NOT NULL,
    duration REAL,
    status TEXT,
    error_type TEXT,
    error_message TEXT,
    result_file TEXT,
    result BLOB,
    chain BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
_SELECT_FINISHED = f"SELECT {', '.join(COLUMNS[:-1])} FROM tasks"  # all but the chain
_FINISHED = "state IN ('succeeded', 'failed')"
# What became of each id added since the store opened, one byte each, so that adding a
# task, and asking whether one is finished, costs no query; past this many ids, the
# database is asked.
_MAX_KNOWN = 1 << 26
_ADDED, _SUCCEEDED, _FAILED, _REMOVED = 1, 2, 3, 4
_CODES = {"succeeded": _SUCCEEDED, "failed": _FAILED}
_STATES_OF = {_SUCCEEDED: "succeeded", _FAILED: "failed"}


class StoreUnavailable(IPKernelError):
    """The task database cannot be opened: in use by another controller, unreadable, or
    not a task database; the message names the file."""


def payload_directory(db_path: str | os.PathLike[str]) -> Path:
    """Where the large payloads of the database at ``db_path`` go: ``<db_path>-payloads``."""
    path = Path(db_path)
    return path.with_name(path.name + "-payloads")


@implementer(ITaskStore)
class SQLiteStore:
    """Task records in the SQLite database at ``path`` (made if missing, mode 0600).

    :param clock: schedules the batched writes.
    :param shelf: a persistent :class:`PayloadShelf` for large payloads.
    :param interval: seconds between writes.
    :param now: the wall clock, for a record whose body file is lost at a restart.
    :raises StoreUnavailable: if the database cannot be opened for writing.
    """

    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: IReactorTime,
        shelf: PayloadShelf,
        interval: float = DEFAULT_INTERVAL,
        now: Any = time.time,
    ) -> None:
        self.path = Path(path)
        self._shelf = shelf
        self._db = _open(self.path)
        self.writes = BatchedWrites(
            self._db, clock, file_of=self._file_of, written=self._written, interval=interval
        )
        # Records in memory: the unfinished ones, and finished ones not written yet.
        self._live: dict[int, TaskRecord] = {}
        self._filed: dict[int, str] = {}  # state of each live record at its last add/save
        self._links: dict[int, int] = {}  # link in charge of each live record, as written
        self._counts = dict.fromkeys(STATES, 0)
        self._closed = False
        self._load(now)
        # Ids from here on were never in the database before it opened.
        self._first_new = self._next_id
        self._known = bytearray()  # one code (_ADDED ...) per id from _first_new on

    # -- ITaskStore --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return sum(self._counts.values())

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def next_engine_id(self) -> int:
        return self._next_engine_id

    def keep_next_engine_id(self, value: int) -> None:
        self.writes.write_meta("next_engine_id", value)
        self._next_engine_id = value

    def reserve_ids(self, count: int) -> int:
        if count < 1:
            raise ValueError(f"cannot reserve {count} ids")
        first = self._next_id
        # Kept before the ids are handed out: after a crash they must not be again.
        self.writes.write_meta("next_id", first + count)
        self._next_id = first + count
        return first

    def add(self, record: TaskRecord) -> None:
        taskid = record.taskid
        if taskid in self._live or self._exists(taskid):
            raise ValueError(f"task {taskid} already exists")
        if taskid >= self._next_id:
            self.writes.write_meta("next_id", taskid + 1)
            self._next_id = taskid + 1
        for link, spec in enumerate(record.chain):
            if is_held(spec.body):
                self._shelf.place(spec.body, body_name(taskid, link))
        self._note(taskid, _ADDED)
        self._live[taskid] = record
        self._filed[taskid] = record.state
        self._links[taskid] = record.link
        self._counts[record.state] += 1
        self.writes.insert(record)

    def get(self, taskid: int) -> TaskRecord | None:
        record = self._live.get(taskid)
        if record is not None:
            return record
        # A finished record: its chain is not needed (nothing of it runs again).
        row = self._db.execute(_SELECT_FINISHED + " WHERE taskid = ?", (taskid,)).fetchone()
        if row is None:
            return None
        return record_from_row(row, [], self._shelf.reopen)

    def state(self, taskid: int) -> str | None:
        state = self._filed.get(taskid)
        if state is not None:
            return state
        offset = taskid - self._first_new
        if 0 <= offset < _MAX_KNOWN:
            return _STATES_OF.get(self._known[offset]) if offset < len(self._known) else None
        row = self._db.execute("SELECT state FROM tasks WHERE taskid = ?", (taskid,)).fetchone()
        return None if row is None else row[0]

    def save(self, record: TaskRecord) -> None:
        taskid = record.taskid
        old = self._filed.get(taskid)
        if old is None:
            return  # not a live record of this store
        if old != record.state:
            self._counts[old] -= 1
            self._counts[record.state] += 1
            self._filed[taskid] = record.state
        if record.finished:
            self._note(taskid, _CODES[record.state])
            result = record.outcome[1] if record.outcome is not None else None
            if is_held(result):
                self._shelf.place(result, result_name(taskid))
            self.writes.update(record)
        elif self._links[taskid] != record.link:
            # A recovery task took over: a restart must start from it.
            self._links[taskid] = record.link
            self.writes.update(record)

    def ids(self, state: str) -> list[int]:
        if state not in FINISHED_STATES:
            return sorted(t for t, s in self._filed.items() if s == state)
        self.writes.flush()
        query = "SELECT taskid FROM tasks WHERE state = ? ORDER BY taskid"
        return [taskid for (taskid,) in self._db.execute(query, (state,))]

    def count(self, state: str) -> int:
        return self._counts[state]

    def unfinished(self) -> list[TaskRecord]:
        return [r for _, r in sorted(self._live.items()) if not r.finished]

    def remove_finished(self, before: float | None = None) -> list[int]:
        if before is None:
            self.writes.flush()
        # With ``before`` only written rows go: a record finished since the last write
        # is younger than any age worth removing, and goes at a later call if not.
        where = _FINISHED + ("" if before is None else " AND completed < ?")
        args: tuple = () if before is None else (before,)
        rows = self._db.execute(
            f"SELECT taskid, state, result_file FROM tasks WHERE {where} ORDER BY taskid", args
        ).fetchall()
        if not rows:
            return []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(f"DELETE FROM tasks WHERE {where}", args)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        # Many pages changed: copy them into the database now rather than during a
        # later write (clear() is waited for anyway).
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        for taskid, state, result_file in rows:
            self._counts[state] -= 1
            self._note(taskid, _REMOVED)
            if result_file:
                self._shelf.discard(result_file)
        return [taskid for taskid, _, _ in rows]

    def committed(self, now: bool = False) -> Deferred:
        return self.writes.committed(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.writes.close()
        self._db.close()
        self._shelf.close()
        stats = self.writes.stats
        self.log.info(
            "task store {path}: {writes} writes of {rows} rows, {total:.3f} s in all, "
            "longest {longest:.1f} ms",
            path=str(self.path),
            writes=int(stats["writes"]),
            rows=int(stats["rows"]),
            total=stats["seconds"],
            longest=stats["max_seconds"] * 1e3,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _written(self, records: list[TaskRecord]) -> None:
        """Rows of ``records`` are committed: finished ones leave memory, and their large
        bodies' files go (no committed row names them any more)."""
        for record in records:
            if record.finished and self._live.get(record.taskid) is record:
                del self._live[record.taskid]
                del self._filed[record.taskid]
                del self._links[record.taskid]
                for spec in record.chain:
                    if is_held(spec.body):
                        name = self._shelf.name_of(spec.body)
                        if name:
                            self._shelf.discard(name)

    def _file_of(self, held: HeldPayload) -> str:
        # "" names no file: opening it again fails, and the payload counts as lost.
        return self._shelf.name_of(held) or ""

    def _note(self, taskid: int, code: int) -> None:
        """Remember what became of ``taskid`` (one of the codes ``_ADDED`` ...)."""
        offset = taskid - self._first_new
        if 0 <= offset < _MAX_KNOWN:
            known = self._known
            if offset >= len(known):
                known.extend(bytes(max(offset + 1 - len(known), len(known), 4096)))
            known[offset] = code

    def _exists(self, taskid: int) -> bool:
        """Whether a record of ``taskid`` was ever added (and not only reserved)."""
        offset = taskid - self._first_new
        if 0 <= offset < _MAX_KNOWN:
            return offset < len(self._known) and self._known[offset] != 0
        row = self._db.execute("SELECT 1 FROM tasks WHERE taskid = ?", (taskid,)).fetchone()
        return row is not None

    # -- opening -----------------------------------------------------------------------------

    def _load(self, now: Any) -> None:
        """Read the next id, the counts and the unfinished records; delete payload files
        no row names (written by a run that crashed before committing them)."""
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        top = db.execute("SELECT MAX(taskid) FROM tasks").fetchone()[0]
        self._next_id = max(meta.get("next_id", 0), -1 if top is None else top + 1)
        self._next_engine_id = meta.get("next_engine_id", 0)
        for state, count in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
            if state not in self._counts:
                raise StoreUnavailable(f"{self.path} holds a task in an unknown state {state!r}")
            self._counts[state] = count
        named: set[str] = set()
        rows = db.execute(_SELECT + " WHERE state IN ('scheduled', 'pending') ORDER BY taskid")
        for row in rows.fetchall():
            record = self._revive(row, now)
            self._live[record.taskid] = record
            self._filed[record.taskid] = record.state
            self._links[record.taskid] = record.link
            if record.finished:
                self._counts[row[1]] -= 1
                self._counts[record.state] += 1
                self.writes.update(record)
            for spec in record.chain:
                if is_held(spec.body) and spec.body.path:
                    named.add(Path(spec.body.path).name)
        for (name,) in db.execute(f"SELECT result_file FROM tasks WHERE {_FINISHED}"):
            if name:
                named.add(name)
        for name in self._shelf.names() - named:
            self._shelf.discard(name)
        self.writes.flush()

    def _revive(self, row: tuple, now: Any) -> TaskRecord:
        """The unfinished record of ``row``; failed with ``TransferError`` if its chain
        cannot be read or a large body's file is gone."""
        try:
            chain = unpack_chain(row[-1], self._shelf.reopen)
        except (Malformed, OSError) as exc:
            record = record_from_row(row[:-1], [], self._shelf.reopen)
            record.state = "failed"
            record.completed = now()
            record.outcome = ("error", ("TransferError", f"the task's body is lost: {exc}"))
            self.log.warn("task {id} cannot run again: {exc}", id=record.taskid, exc=exc)
            return record
        return record_from_row(row[:-1], chain, self._shelf.reopen)


def _open(path: Path) -> sqlite3.Connection:
    """Open (or make) the database at ``path`` for this process alone.

    :raises StoreUnavailable: naming the file and why.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the task database {path}: {exc}") from None
    try:
        # Exclusive: this controller is the only one to use the file while it runs.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        # For a new database: large pages make a commit of many rows a few large writes.
        db.execute("PRAGMA page_size = 16384")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute("PRAGMA synchronous = NORMAL")
        # Copy the journal into the database every 4 MB or so (16 MB with the default,
        # at these pages): each copy, and its fsync, holds the reactor.
        db.execute("PRAGMA wal_autocheckpoint = 256")
        db.executescript(_SCHEMA)
        # The first write takes the lock, which exclusive mode then keeps.
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")
        columns = [r[1] for r in db.execute("PRAGMA table_info(tasks)")]
    except sqlite3.Error as exc:
        db.close()
        if "locked" in str(exc):
            raise StoreUnavailable(
                f"the task database {path} is in use by another controller"
            ) from None
        raise StoreUnavailable(f"{path} is not a task database ({exc})") from None
    if mode.lower() != "wal" or columns != list(COLUMNS):
        db.close()
        raise StoreUnavailable(f"{path} is not a task database of this version")
    return db
