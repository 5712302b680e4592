"""The task controller: :class:`~ipkernel.interfaces.ITaskController` over the controller.

What clients ask of tasks is answered here: tasks are checked
(:mod:`~ipkernel.controller.submission`), filed in the task store
(:mod:`ipkernel.controller.store`) with their recovery chains
(:mod:`~ipkernel.controller.chains`) and handed to the engine side
(:mod:`~ipkernel.controller.dispatch`), which runs them through the pure scheduler
(:mod:`ipkernel.controller.scheduler`) and sends them to engines in batches; results are
read from the records, and blocking calls wait for them
(:mod:`~ipkernel.controller.waiters`). With a store that writes to disk, an answer that a
task was accepted or finished leaves only once the store has kept it, so that a
controller restarted after a crash never forgets what a client was told; records
finished longer ago than ``max_age`` seconds are removed as time goes by.

Everything the controller holds of a task is opaque: the client serializes the task body
and its ``depend`` function into frames, and only the engine decodes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from ipkernel.controller.batch_size import BatchSizer
from ipkernel.controller.chains import Chains
from ipkernel.controller.dispatch import Dispatcher
from ipkernel.controller.failures import RecentFailures
from ipkernel.controller.scheduler.machine import Scheduler
from ipkernel.controller.store import FINISHED_STATES, ITaskStore, MemoryStore, TaskRecord
from ipkernel.controller.submission import parse_task
from ipkernel.controller.throughput import Throughput
from ipkernel.controller.waiters import Waiters
from ipkernel.interfaces.task import ITaskController

__all__ = ["TaskController"]


@implementer(ITaskController)
class TaskController:
    """Tasks over the engines of one :class:`~ipkernel.controller.service.ControllerService`.

    :param service: provides ``registry``, ``queues`` (engine id to
        :class:`~ipkernel.controller.queue.EngineQueue`) and ``on_engine_added``,
        ``on_engine_removed``, ``on_properties_changed`` (told of an engine once its
        queue exists).
    :param clock: an ``IReactorTime``, to read some answers at the next reactor turn.
    :param store: where records go (:class:`~ipkernel.controller.store.MemoryStore` by
        default). Unfinished records found in it are queued again at once.
    :param scheduler: a :class:`~ipkernel.controller.scheduler.machine.Scheduler` (or a
        subclass) with no tasks or engines yet; its slots per engine follow the batch
        size (:attr:`sizer`).
    :param now: the wall clock for records' timestamps.
    :param max_age: if given, finished records are removed (with their results) once
        they are older than this many seconds (checked every ``max_age / 2`` seconds,
        at most a minute apart).
    """

    def __init__(
        self,
        service: Any,
        *,
        clock: IReactorTime,
        store: ITaskStore | None = None,
        scheduler: Scheduler | None = None,
        now: Callable[[], float] = time.time,
        max_age: float | None = None,
    ) -> None:
        self.store: ITaskStore = store if store is not None else MemoryStore()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        #: The adaptive batch size (its limits are class attributes, settable per instance).
        self.sizer = BatchSizer()
        self._now = now
        self._chains = Chains(self.store)
        self._waiters = Waiters()
        self._throughput = Throughput()
        self._failures = RecentFailures()
        self._dispatcher = Dispatcher(
            service,
            self.scheduler,
            self._chains,
            self.sizer,
            on_finished=self._finished,
            clock=clock,
            now=now,
        )
        for record in self.store.unfinished():
            self._restart(record)
        self._dispatcher.flush()
        self._expiry: LoopingCall | None = None
        if max_age is not None:
            if not max_age > 0:
                raise ValueError(f"max_age must be a positive number of seconds, not {max_age}")
            self._expiry = LoopingCall(self.remove_older, max_age)
            self._expiry.clock = clock
            self._expiry.start(min(max_age / 2, 60.0), now=False)

    # -- ITaskController -----------------------------------------------------------------

    def reserve_ids(self, count: int) -> int:
        """Return the first of ``count`` new consecutive task ids, for :meth:`run_many`.

        :raises ValueError: if ``count`` is less than 1.
        """
        return self.store.reserve_ids(count)

    def reclaim_ids(self, first: int, count: int) -> None:
        """Check that the ``count`` ids from ``first`` were handed out by
        :meth:`reserve_ids` (before a restart, maybe), so that a client that reserved
        them may submit under them again.

        :raises ValueError: if some of them were never handed out.
        """
        if first < 0 or count < 1 or first + count > self.store.next_id:
            raise ValueError(
                f"task ids {first} to {first + count - 1} were never reserved here (the "
                "controller restarted without the task store that reserved them, --db)"
            )

    def committed(self, now: bool = False) -> Deferred:
        """Fires with ``None`` once the store keeps every change made so far (tasks
        submitted, outcomes): at once for the in-memory store; for one on disk, when it
        next writes them (``now``: at the end of this reactor turn), so that tasks
        submitted in a burst, and finished soon after, are written together."""
        return self.store.committed(now)

    def run(self, task: object, taskid: int | None = None) -> int:
        """Submit ``task`` (wire form, see :func:`~ipkernel.controller.submission.parse_task`);
        return its id at once.

        ``taskid`` is an id from :meth:`reserve_ids` not used yet; by default a new one.

        :raises ValueError: for a malformed task or recovery chain, or an id in use.
        """
        taskid = self._submit(task, taskid)
        self._dispatcher.flush()
        return taskid

    def run_many(self, items: Iterable[tuple[int, object]]) -> list[BaseException | None]:
        """Submit several ``(taskid, task)`` at once, as :meth:`run` each would.

        Returns, per item, ``None`` if it was accepted or the exception that refused it
        (the others are submitted all the same).
        """
        errors: list[BaseException | None] = []
        for taskid, task in items:
            try:
                self._submit(task, taskid)
            except ValueError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        self._dispatcher.flush()
        return errors

    def get_task_result(self, taskid: int, block: bool = False) -> Deferred:
        """Fire with the record of ``taskid`` (:meth:`TaskRecord.to_wire`) once finished.

        With ``block=False`` fire at once, with ``None`` if it is not finished.
        Raises ``IndexError`` for an unknown id.
        """
        record = self._record(taskid)
        if record.finished:
            return self._kept(record.to_wire())
        if not block:
            return succeed(None)
        return self._waiters.wait(taskid).addCallback(lambda r: self._kept(r.to_wire()))

    def get_task_results(self, taskids: Sequence[int], block: bool = False) -> Deferred:
        """Like :meth:`get_task_result` for several ids: fire with a list, in order.

        With ``block=True`` wait until all are finished. Raises ``IndexError`` naming
        the first unknown id, before waiting for anything.
        """
        records = [self._record(taskid) for taskid in taskids]
        if not block:
            return self._kept([r.to_wire() if r.finished else None for r in records])
        # The records are the objects that get finished, so they are current once the
        # wait is over.
        d = self._wait_for(records)
        return d.addCallback(lambda _: self._kept([r.to_wire() for r in records]))

    def barrier(self, taskids: Sequence[int]) -> Deferred:
        """Fire with ``None`` once every task in ``taskids`` is finished.

        Raises ``IndexError`` naming the first unknown id.
        """
        unfinished = {taskid for taskid in taskids if not self._is_finished(taskid)}
        return self._waiters.wait_all(unfinished).addCallback(lambda _: self._kept(None))

    def abort(self, taskid: int) -> None:
        """Cancel task ``taskid``: queued, or running (its engine is interrupted).

        The task finishes at once, failed with ``TaskAborted``; its recovery tasks never
        run. Raises ``IndexError`` ("task already completed") for a finished task and
        ``IndexError`` for an unknown id.
        """
        chain = self._chains.get(taskid)
        if chain is None:
            self._record(taskid)
            raise IndexError(f"task {taskid} already completed")
        self._dispatcher.abort(chain.active)

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        """``{'scheduled': n, 'pending': n, 'succeeded': n, 'failed': n}``.

        *scheduled*: waiting for an engine; *pending*: on an engine; *failed* includes
        aborted tasks. With ``verbose=True`` each value is the ascending list of ids.
        """
        states = ("scheduled", "pending", "succeeded", "failed")
        if verbose:
            return {state: self.store.ids(state) for state in states}
        return {state: self.store.count(state) for state in states}

    def spin(self) -> None:
        """Run a scheduling pass now (every event runs one already)."""
        self._dispatcher.spin()

    def clear(self) -> None:
        """Forget the records of finished tasks (their results can no longer be fetched)."""
        self.store.remove_finished()
        self.scheduler.forget_finished()

    def remove_older(self, max_age: float) -> list[int]:
        """Forget the records of tasks finished more than ``max_age`` seconds ago; return
        their ids."""
        gone = self.store.remove_finished(before=self._now() - max_age)
        if gone:
            self.scheduler.forget_finished()
        return gone

    def close(self) -> None:
        """Stop removing old records and close the store (at the controller's stop)."""
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        self.store.close()

    def engine_count(self) -> int:
        """How many engines can take tasks now (for clients sizing a ``map``'s chunks)."""
        return self._dispatcher.engine_count()

    # -- read-only views (status pages) -----------------------------------------------------

    def throughput(self, now: float | None = None) -> dict[str, Any]:
        """Tasks finished per second over the last minutes: ``{'end': second, 'counts':
        [...]}``, one count per second up to ``end`` (``int(now)``, by default the
        records' clock), oldest first."""
        return self._throughput.view(self._now() if now is None else now)

    def recent_failures(self) -> list[dict[str, Any]]:
        """The latest failed tasks, newest first, as plain dicts (see
        :class:`~ipkernel.controller.failures.RecentFailures`)."""
        return self._failures.view()

    def running(self, limit: int = 8) -> dict[int, tuple[list[int], int]]:
        """By engine id, for each engine with tasks in flight: the ids of the first
        ``limit`` tasks of the batch it is running, and how many tasks it has in flight."""
        return self._dispatcher.running(limit)

    # -- records and waiting ---------------------------------------------------------------

    def _finished(self, record: TaskRecord) -> None:
        """``record``'s task is finished: count it, and wake whoever waits for it."""
        if record.completed is not None:
            self._throughput.count(record.completed)
        if record.state == "failed":
            self._failures.add(record)
        self._waiters.finished(record)

    def _submit(self, task: object, taskid: int | None) -> int:
        chain = parse_task(task)
        if taskid is None:
            taskid = self.store.reserve_ids(1)
        elif not isinstance(taskid, int) or isinstance(taskid, bool) or taskid < 0:
            raise ValueError(f"task ids are ints of at least 0, not {taskid!r}")
        record = TaskRecord(taskid, chain, submitted=self._now())
        try:
            self.store.add(record)
        except ValueError:
            raise ValueError(f"task id {taskid} is already in use") from None
        self._dispatcher.start(record)
        return taskid

    def _restart(self, record: TaskRecord) -> None:
        """Queue again a record a persistent store kept from an earlier run."""
        record.state = "scheduled"
        record.engine_id = None
        record.attempts = 0
        self.store.save(record)
        self._dispatcher.start(record)

    def _record(self, taskid: object) -> TaskRecord:
        if isinstance(taskid, int) and not isinstance(taskid, bool):
            chain = self._chains.get(taskid)
            if chain is not None:
                return chain.record
            record = self.store.get(taskid)
            if record is not None:
                return record
        raise IndexError(f"no task with id {taskid!r}")

    def _is_finished(self, taskid: object) -> bool:
        """Whether task ``taskid`` is finished (``IndexError`` for an unknown id), without
        reading its record."""
        if isinstance(taskid, int) and not isinstance(taskid, bool):
            if self._chains.get(taskid) is not None:
                return False
            state = self.store.state(taskid)
            if state is not None:
                return state in FINISHED_STATES
        raise IndexError(f"no task with id {taskid!r}")

    def _kept(self, answer: Any) -> Deferred:
        """Fire with ``answer`` once the store keeps what it says, written at the end of
        this reactor turn (a client waits for it)."""
        return self.store.committed(now=True).addCallback(lambda _: answer)

    def _wait_for(self, records: list[TaskRecord]) -> Deferred:
        """Fire with ``None`` once all of ``records`` are finished."""
        return self._waiters.wait_all({r.taskid for r in records if not r.finished})
