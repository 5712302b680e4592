"""The SQLite task store's writes: batched, in transactions that hold the reactor briefly.

The controller writes in its reactor thread, so writing must be cheap and short.
:class:`BatchedWrites` collects the records changed and writes them every ``interval``
seconds, in transactions of at most ``max_rows`` rows, one per reactor turn, so that a
burst never holds the reactor for long. A record changed many times between two writes is
written once, as it is then.

Most tasks are short: a new task's row waits (up to ``delay`` seconds), so that a task
that finishes meanwhile is one row written once, with its outcome, rather than a row and
an update. Nothing is lost by waiting: the controller tells a client it has accepted a
task only once the task's row is written (:meth:`~BatchedWrites.committed`), and a client
sends again, after a restart, the tasks it was not told about. Whoever cannot wait asks
for everything to be written at the end of the reactor turn (``committed(now=True)``).

The next task id (and the next engine id) is written at once, in a transaction of its
own (:meth:`~BatchedWrites.write_meta`): ids must never be handed out twice.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipkernel.controller.store import HeldPayload, TaskRecord
from ipkernel.controller.store_codec import COLUMNS, pack_chain, row_of

__all__ = ["DEFAULT_DELAY", "DEFAULT_INTERVAL", "MAX_ROWS", "BatchedWrites"]

#: Seconds between writes.
DEFAULT_INTERVAL = 0.25
#: Seconds a new task's row may wait for the task to finish (see the module docstring):
#: long enough for a task at the back of a burst of thousands to get its turn.
DEFAULT_DELAY = 3.0
#: Most rows written in one transaction (one reactor turn: about 10 ms).
MAX_ROWS = 500

_INSERT = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Everything but the id, the submission time and the chain, which never change.
_UPDATED = (COLUMNS[1], COLUMNS[2], *COLUMNS[4:-1])
_UPDATE = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in _UPDATED)} WHERE taskid = ?"


class BatchedWrites:
    """Pending changes of the task database ``db`` and their writing.

    :param file_of: names the file of a large payload (``""`` for none).
    :param written: called with the records of each transaction once it is committed.
    """

    log = Logger()

    def __init__(
        self,
        db: sqlite3.Connection,
        clock: IReactorTime,
        *,
        file_of: Callable[[HeldPayload], str],
        written: Callable[[list[TaskRecord]], None],
        interval: float = DEFAULT_INTERVAL,
        delay: float = DEFAULT_DELAY,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._file_of = file_of
        self._written = written
        self.interval = interval
        self.delay = delay
        self.max_rows = max_rows
        # New rows waiting, oldest first: task id -> (record, when it was added).
        self._young: dict[int, tuple[TaskRecord, float]] = {}
        self._inserts: dict[int, TaskRecord] = {}  # new rows to write at the next write
        self._updates: dict[int, TaskRecord] = {}
        # Taken to be written: (inserts, updates) left, and who waits for them.
        self._taken: list[tuple[list[TaskRecord], list[TaskRecord]]] = []
        self._taken_waiting: list[Deferred] = []
        self._waiting: list[tuple[float, Deferred]] = []  # (since when, Deferred)
        self._call: IDelayedCall | None = None
        self._call_time = 0.0
        self._urgent = False  # someone waits for every change to be written
        self.closed = False
        #: ``{"writes", "rows", "seconds", "max_seconds"}`` of the transactions so far.
        self.stats: dict[str, float] = {"writes": 0, "rows": 0, "seconds": 0.0, "max_seconds": 0.0}

    def insert(self, record: TaskRecord) -> None:
        """``record`` is new: write its row (within ``delay`` seconds)."""
        self._young[record.taskid] = (record, self._clock.seconds())
        if self._call is None:
            self._schedule(self.interval)

    def update(self, record: TaskRecord) -> None:
        """``record`` changed: write it (as a new row if that is not written yet) at the
        next write."""
        taskid = record.taskid
        if self._young.pop(taskid, None) is not None or taskid in self._inserts:
            self._inserts[taskid] = record
        else:
            self._updates[taskid] = record
        if self._call is None:
            self._schedule(self.interval)

    def pending(self) -> bool:
        """Whether changes are waiting to be written."""
        return bool(self._young or self._inserts or self._updates or self._taken)

    def committed(self, now: bool = False) -> Deferred:
        """A Deferred that fires with ``None`` once every change so far is written:
        within ``delay`` (and ``interval``) seconds, or with ``now`` at once (a few rows)
        or at the end of this reactor turn."""
        if not self.pending():
            return succeed(None)
        if now and not self._taken and self._small():
            # A few rows: written at once, which spares the caller a reactor turn.
            self._urgent = True
            self._take()
            if not self._taken or self._write_some():
                return succeed(None)
        d: Deferred = Deferred()
        if self._young or self._inserts or self._updates:
            self._waiting.append((self._clock.seconds(), d))
            if now:
                self._urgent = True
        else:
            self._taken_waiting.append(d)
        if now:
            self._schedule(0)
        return d

    def _small(self) -> bool:
        return len(self._young) + len(self._inserts) + len(self._updates) <= self.max_rows

    def write_meta(self, key: str, value: int) -> None:
        """Write ``value`` under ``key`` (``next_id``, ``next_engine_id``) now, in a
        transaction of its own.

        :raises sqlite3.Error: if it cannot be written (then no id may be handed out).
        """
        self._transaction(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )
        )

    def flush(self) -> None:
        """Write every change now, in as many transactions as it takes."""
        self._urgent = True
        self._take()
        while self._taken and not self.closed:
            if not self._write_some():
                break

    def close(self) -> None:
        """Write what is pending, then write nothing more."""
        self.flush()
        self.closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    # -- the work ----------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self.closed:
            return
        when = self._clock.seconds() + delay
        call = self._call
        if call is not None and call.active():
            if self._call_time <= when:
                return
            call.cancel()
        self._call_time = when
        self._call = self._clock.callLater(delay, self._step)

    def _step(self) -> None:
        """One reactor turn's share: take the changes due if nothing is being written,
        then write one transaction; come back at the next turn while some are left."""
        self._call = None
        if self.closed:
            return
        if not self._taken:
            self._take()
        if self._taken and not self._write_some():
            return
        if self._taken or self._urgent:
            self._schedule(0)
        elif self._young or self._inserts or self._updates:
            self._schedule(self.interval)

    def _take(self) -> None:
        """Take the changes due to be written (all of them if someone is in a hurry), and
        the waiters they satisfy."""
        young = self._young
        if self._urgent:
            due = [record for record, _ in young.values()]
            young.clear()
        else:
            due = []
            limit = self._clock.seconds() - self.delay
            while young:
                taskid = next(iter(young))
                record, since = young[taskid]
                if since > limit:
                    break
                del young[taskid]
                due.append(record)
        self._urgent = False
        inserts = [*due, *self._inserts.values()]
        if inserts or self._updates:
            self._taken.append((inserts, list(self._updates.values())))
            self._inserts, self._updates = {}, {}
        # A waiter is satisfied once no change older than it is left out.
        oldest = next(iter(young.values()))[1] if young else None
        satisfied = [d for since, d in self._waiting if oldest is None or since < oldest]
        self._waiting = [(s, d) for s, d in self._waiting if oldest is not None and s >= oldest]
        if self._taken:
            self._taken_waiting += satisfied
        else:
            self._fire(satisfied)

    def _write_some(self) -> bool:
        """Write up to ``max_rows`` rows of what was taken in one transaction; fire the
        waiters once all of it is written. False if the write failed (it is tried again
        later: the records stay in memory meanwhile, and the waiters are told all the
        same, since the controller goes on)."""
        inserts, updates = self._taken[0]
        rows = self.max_rows
        chunk_inserts, inserts[:] = inserts[:rows], inserts[rows:]
        rows = max(rows - len(chunk_inserts), 0)
        chunk_updates, updates[:] = updates[:rows], updates[rows:]
        started = time.perf_counter()
        try:
            self._transaction(lambda db: self._rows(db, chunk_inserts, chunk_updates))
        except (sqlite3.Error, ValueError) as exc:
            inserts[:0], updates[:0] = chunk_inserts, chunk_updates
            self.log.error("cannot write task records: {exc}; trying again later", exc=exc)
            waiting, self._taken_waiting = self._taken_waiting, []
            self._fire(waiting)
            self._schedule(max(self.interval, 1.0))
            return False
        seconds = time.perf_counter() - started
        stats = self.stats
        stats["writes"] += 1
        stats["rows"] += len(chunk_inserts) + len(chunk_updates)
        stats["seconds"] += seconds
        stats["max_seconds"] = max(stats["max_seconds"], seconds)
        if not inserts and not updates:
            self._taken.pop(0)
        self._written(chunk_inserts + chunk_updates)
        if not self._taken:
            waiting, self._taken_waiting = self._taken_waiting, []
            self._fire(waiting)
        return True

    def _rows(
        self, db: sqlite3.Connection, inserts: list[TaskRecord], updates: list[TaskRecord]
    ) -> None:
        file_of = self._file_of
        db.executemany(
            _INSERT, [(*row_of(r, file_of), pack_chain(r.chain, file_of)) for r in inserts]
        )
        db.executemany(_UPDATE, [_update_row(r, file_of) for r in updates])

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            work(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _fire(waiting: list[Deferred]) -> None:
        for d in waiting:
            d.callback(None)


def _update_row(record: TaskRecord, file_of: Callable[[HeldPayload], str]) -> tuple:
    row = row_of(record, file_of)
    return (row[1], row[2], *row[4:], record.taskid)
