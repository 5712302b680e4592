"""The scheduler's state machine: :class:`Scheduler`, its events, queries and passes.

The model it follows (states, slots, queue order, retries, recovery, dependencies) is
described in :mod:`ipkernel.controller.scheduler`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

from .decisions import (
    ABORTED,
    ENGINE_ERROR,
    FAILED,
    Decision,
    InterruptTask,
    RecoveryDropped,
    RecoveryQueued,
    RunTask,
    TaskDone,
    TaskState,
)
from .entries import EngineEntry, TaskEntry
from .ready import ReadyQueue

__all__ = ["Scheduler"]


class Scheduler:
    """Dynamic load balancing of tasks over engines, as a state machine.

    Every event method returns the list of decisions it produced, in order: first what
    the event itself decided (:class:`InterruptTask`, :class:`TaskDone`,
    :class:`RecoveryQueued`, :class:`RecoveryDropped`), then the :class:`RunTask`
    decisions of the scheduling pass that ends every event. The capacity events
    (:meth:`set_slots`, :meth:`engine_busy`, :meth:`engine_free`) run no pass and
    return nothing: they only change what the next pass may hand out.

    Task ids are chosen by the caller and must not be reused for a different task.

    To change the queue order, subclass and override :meth:`priority`.
    """

    def __init__(self, slots_per_engine: int = 1) -> None:
        _check_slots(slots_per_engine)
        self._slots = slots_per_engine
        self._tasks: dict[int, TaskEntry] = {}
        self._ids: dict[TaskState, set[int]] = {state: set() for state in TaskState}
        self._engines: dict[int, EngineEntry] = {}
        self._ready = ReadyQueue(self._tasks, self._engines)
        # Engines with a free slot: (load, engine id, token). Tokens are never reused,
        # not even by a later engine of the same id, so an entry left by an engine that
        # has gone is recognised as stale wherever it is met.
        self._free: list[tuple[int, int, int]] = []
        self._tokens: Iterator[int] = itertools.count(1)
        self._seqs: Iterator[int] = itertools.count()
        self._incarnations: Iterator[int] = itertools.count()

    @property
    def slots_per_engine(self) -> int:
        """How many tasks each engine may hold at once (set with :meth:`set_slots`)."""
        return self._slots

    # -- the customisation point -------------------------------------------------------

    def priority(self, taskid: int) -> Any:
        """Return the sort key of task ``taskid``: lower keys run first.

        Called once, when the task first enters the queue (at :meth:`submit`, or when a
        recovery task is queued); the value must not change afterwards and must compare
        with every other task's. Tasks with equal keys run in submission order. The
        default returns ``0`` for every task, which gives first in, first out. A subclass
        that needs more than the id keeps its own table of task attributes.
        """
        return 0

    # -- events ------------------------------------------------------------------------

    def submit(
        self,
        taskid: int,
        *,
        retries: int = 0,
        recovery: int | None = None,
        has_depend: bool = False,
        standby: bool = False,
    ) -> list[Decision]:
        """A new task ``taskid``.

        ``retries`` is how many times it may be run again after a failed attempt.
        ``recovery`` names its recovery task, which must have been submitted before with
        ``standby=True`` and not be claimed by another task. ``has_depend`` says the task
        carries a ``depend`` function (see :mod:`ipkernel.controller.scheduler`). With
        ``standby=True`` the task is a recovery task: known, but queued only when the task
        naming it as ``recovery`` fails for good (a standby task nobody claims stays on
        standby until aborted).

        Raises ``ValueError`` for a known ``taskid``, negative ``retries``, or a
        ``recovery`` that is unknown, not on standby, already claimed, or would close a
        loop; nothing changes then.
        """
        if taskid in self._tasks:
            raise ValueError(f"task {taskid} already submitted")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries}")
        if recovery is not None:
            self._check_recovery(taskid, recovery)
        state = TaskState.STANDBY if standby else TaskState.SCHEDULED
        task = TaskEntry(taskid, retries, recovery, has_depend, state)
        self._tasks[taskid] = task
        if recovery is not None:
            self._tasks[recovery].parent = taskid
        if standby:
            self._ids[TaskState.STANDBY].add(taskid)
            return []
        task.priority = self.priority(taskid)
        task.seq = next(self._seqs)
        self._enqueue(task)
        return self._schedule()

    def engine_added(self, engine_id: int, properties_version: int = 0) -> list[Decision]:
        """Engine ``engine_id`` joined, its properties at ``properties_version``.

        Raises ``ValueError`` if that id is already registered.
        """
        if engine_id in self._engines:
            raise ValueError(f"engine {engine_id} already registered")
        incarnation = next(self._incarnations)
        engine = EngineEntry(engine_id, incarnation, (incarnation, properties_version))
        self._engines[engine_id] = engine
        self._ready.index(engine)
        self._load_changed(engine)
        return self._schedule()

    def engine_removed(self, engine_id: int) -> list[Decision]:
        """Engine ``engine_id`` left; the tasks it was running lost an attempt.

        Each such task is retried (back in its place in the queue) if it has retries
        left, else it finishes with reason :data:`ENGINE_ERROR` and its recovery task, if
        any, is queued. Raises ``ValueError`` for an unknown engine.
        """
        engine = self._engines.pop(engine_id, None)
        if engine is None:
            raise ValueError(f"no engine {engine_id}")
        out: list[Decision] = []
        for taskid in sorted(engine.running):
            task = self._tasks.get(taskid)
            if self._is_running_on(task, engine_id):
                assert task is not None
                self._attempt_failed(task, ENGINE_ERROR, out)
        out.extend(self._schedule())
        return out

    def task_finished(self, taskid: int, engine_id: int, succeeded: bool) -> list[Decision]:
        """Engine ``engine_id`` ran task ``taskid`` to the end; its user code succeeded or not.

        Success finishes the task. A failure is retried if retries are left, else the task
        finishes with reason :data:`FAILED` and its recovery task, if any, is queued. A
        report about a task the engine is not running (it was aborted, or the engine left
        already) only frees the engine's slot, if it holds one for that task.
        """
        engine = self._engines.get(engine_id)
        if engine is None or taskid not in engine.running:
            return []
        out: list[Decision] = []
        task = self._tasks.get(taskid)
        self._release(engine, taskid)
        if self._is_running_on(task, engine_id):
            assert task is not None
            if succeeded:
                self._finish(task, True, None, out)
                self._drop_chain(task, out)
            else:
                self._attempt_failed(task, FAILED, out)
        out.extend(self._schedule())
        return out

    def task_declined(self, taskid: int, engine_id: int, properties_version: int) -> list[Decision]:
        """Engine ``engine_id`` declined task ``taskid``: ``depend`` was false (or raised)
        for its properties at ``properties_version``.

        The task goes back to its place in the queue (a decline is not an attempt) and is
        not offered to that engine again while its properties stay at that version. A
        report about a task the engine is not running only frees the slot, as for
        :meth:`task_finished`. Raises ``ValueError`` if the task has no ``depend``.
        """
        engine = self._engines.get(engine_id)
        if engine is None or taskid not in engine.running:
            return []
        task = self._tasks.get(taskid)
        running_here = self._is_running_on(task, engine_id)
        if running_here and task is not None and not task.has_depend:
            raise ValueError(f"task {taskid} has no depend function to decline")
        self._release(engine, taskid)
        if running_here:
            assert task is not None
            task.attempts -= 1
            task.declined[engine_id] = (engine.incarnation, properties_version)
            self._enqueue(task)
        return self._schedule()

    def task_returned(self, taskid: int, engine_id: int) -> list[Decision]:
        """Engine ``engine_id`` will never start task ``taskid`` (its batch was not sent):
        the task goes back to its place in the queue, and this is not an attempt.

        A report about a task the engine is not running changes nothing.
        """
        engine = self._engines.get(engine_id)
        if engine is None or taskid not in engine.running:
            return []
        task = self._tasks.get(taskid)
        self._release(engine, taskid)
        if self._is_running_on(task, engine_id):
            assert task is not None
            task.attempts -= 1
            self._enqueue(task)
        return self._schedule()

    def properties_changed(self, engine_id: int, version: int) -> list[Decision]:
        """Engine ``engine_id``'s properties are now at ``version``.

        Versions must not repeat for one engine. Every waiting task becomes a candidate for
        that engine again. An unknown engine (one that already left) is ignored.
        """
        engine = self._engines.get(engine_id)
        if engine is None:
            return []
        engine.version = (engine.incarnation, version)
        self._ready.index(engine)
        return self._schedule()

    def set_slots(self, slots_per_engine: int) -> None:
        """Let each engine hold up to ``slots_per_engine`` tasks from now on.

        Runs no scheduling pass and so decides nothing; the next event's pass uses the
        new number. An engine already counted as having a free slot keeps it; the others
        are counted again when their load next changes (a task assigned or released).
        Raises ``ValueError`` if ``slots_per_engine`` is less than 1.
        """
        _check_slots(slots_per_engine)
        self._slots = slots_per_engine

    def engine_busy(self, engine_id: int) -> None:
        """Engine ``engine_id`` takes no new task for now (a batch in flight, say).

        Scheduling passes skip it until :meth:`engine_free`; the tasks it holds stay
        its. Runs no pass, and an unknown engine is ignored.
        """
        engine = self._engines.get(engine_id)
        if engine is not None:
            engine.busy = True

    def engine_free(self, engine_id: int) -> None:
        """Engine ``engine_id`` takes tasks again (undoes :meth:`engine_busy`).

        Runs no scheduling pass, so that the caller can first settle what freed the
        engine (the answers to a batch); its next event, or :meth:`spin`, hands the
        engine work. An unknown engine is ignored.
        """
        engine = self._engines.get(engine_id)
        if engine is not None:
            engine.busy = False

    def abort(self, taskid: int) -> list[Decision]:
        """Cancel task ``taskid``, which has not finished.

        A queued or standby task finishes at once with reason :data:`ABORTED`. A running
        one finishes the same way and an :class:`InterruptTask` is decided; its engine's
        slot is freed when the engine reports back. No retry, no recovery: the task's
        recovery chain is dropped. Raises ``IndexError`` for a finished or unknown task.
        """
        task = self._tasks.get(taskid)
        if task is None:
            raise IndexError(f"no task {taskid}")
        if task.state in (TaskState.SUCCEEDED, TaskState.FAILED):
            raise IndexError("task already completed")
        out: list[Decision] = []
        if task.state is TaskState.SCHEDULED:
            self._ready.remove(task)
        elif task.state is TaskState.PENDING:
            assert task.engine is not None
            out.append(InterruptTask(taskid, task.engine))
        elif task.parent is not None:
            self._tasks[task.parent].recovery = None
        self._finish(task, False, ABORTED, out)
        self._drop_chain(task, out)
        out.extend(self._schedule())
        return out

    def spin(self) -> list[Decision]:
        """Run a scheduling pass (every other event ends with one already)."""
        return self._schedule()

    # -- queries -------------------------------------------------------------------------

    def state(self, taskid: int) -> TaskState:
        """Return the state of task ``taskid``; ``IndexError`` if unknown."""
        return self._task(taskid).state

    def attempts(self, taskid: int) -> int:
        """Return how many times task ``taskid`` was sent to an engine and not declined."""
        return self._task(taskid).attempts

    def engine_of(self, taskid: int) -> int | None:
        """Return the engine running task ``taskid``, or that ran its last attempt.

        ``None`` while it waits in the queue or on standby, or if it never ran.
        """
        return self._task(taskid).engine

    def status(self) -> dict[str, list[int]]:
        """Return the ids of tasks by state, as for ``queue_status(verbose=True)``.

        Keys ``'scheduled'`` (queued, in queue order), ``'pending'`` (on engines),
        ``'succeeded'`` and ``'failed'`` (aborted tasks included), each sorted by id but
        the first. Standby recovery tasks are not listed.
        """
        queued = sorted(
            (self._tasks[i] for i in self._ids[TaskState.SCHEDULED]),
            key=lambda t: (t.priority, t.seq, t.id),
        )
        result = {TaskState.SCHEDULED.value: [t.id for t in queued]}
        for state in (TaskState.PENDING, TaskState.SUCCEEDED, TaskState.FAILED):
            result[state.value] = sorted(self._ids[state])
        return result

    def counts(self) -> dict[str, int]:
        """Return the number of tasks by state, as for ``queue_status()``, in O(1)."""
        return {
            state.value: len(self._ids[state])
            for state in (
                TaskState.SCHEDULED,
                TaskState.PENDING,
                TaskState.SUCCEEDED,
                TaskState.FAILED,
            )
        }

    def forget_finished(self) -> list[int]:
        """Forget every finished task (for ``clear()``); return their ids, sorted."""
        gone = sorted(self._ids[TaskState.SUCCEEDED] | self._ids[TaskState.FAILED])
        for taskid in gone:
            del self._tasks[taskid]
        self._ids[TaskState.SUCCEEDED].clear()
        self._ids[TaskState.FAILED].clear()
        return gone

    # -- internals -----------------------------------------------------------------------

    def _task(self, taskid: int) -> TaskEntry:
        task = self._tasks.get(taskid)
        if task is None:
            raise IndexError(f"no task {taskid}")
        return task

    def _check_recovery(self, taskid: int, recovery: int) -> None:
        rec = self._tasks.get(recovery)
        if rec is None:
            raise ValueError(f"task {taskid}: unknown recovery task {recovery}")
        if rec.state is not TaskState.STANDBY or rec.parent is not None:
            raise ValueError(
                f"task {taskid}: recovery task {recovery} is already used "
                "(not on standby, or claimed by another task)"
            )
        # Links always point at tasks submitted earlier, so a loop cannot form through
        # this API; the walk guards the invariant all the same.
        seen = {taskid}
        link: int | None = recovery
        while link is not None:
            if link in seen:
                raise ValueError(f"task {taskid}: recovery chain loops at task {link}")
            seen.add(link)
            link = self._tasks[link].recovery

    def _set_state(self, task: TaskEntry, state: TaskState) -> None:
        self._ids[task.state].discard(task.id)
        self._ids[state].add(task.id)
        task.state = state

    @staticmethod
    def _is_running_on(task: TaskEntry | None, engine_id: int) -> bool:
        return task is not None and task.state is TaskState.PENDING and task.engine == engine_id

    def _enqueue(self, task: TaskEntry) -> None:
        self._set_state(task, TaskState.SCHEDULED)
        task.engine = None
        self._ready.push(task)

    def _load_changed(self, engine: EngineEntry) -> None:
        engine.token = next(self._tokens)
        load = len(engine.running)
        if load < self._slots:
            heapq.heappush(self._free, (load, engine.id, engine.token))
            if len(self._free) > 4 * len(self._engines) + 64:
                self._compact_free()

    def _compact_free(self) -> None:
        # In place: a scheduling pass may hold a reference.
        self._free[:] = [
            (len(e.running), e.id, e.token)
            for e in self._engines.values()
            if len(e.running) < self._slots
        ]
        heapq.heapify(self._free)

    def _release(self, engine: EngineEntry, taskid: int) -> None:
        engine.running.discard(taskid)
        self._load_changed(engine)

    def _finish(
        self, task: TaskEntry, succeeded: bool, reason: str | None, out: list[Decision]
    ) -> None:
        self._set_state(task, TaskState.SUCCEEDED if succeeded else TaskState.FAILED)
        out.append(TaskDone(task.id, succeeded, reason))

    def _attempt_failed(self, task: TaskEntry, reason: str, out: list[Decision]) -> None:
        if task.attempts <= task.retries:
            self._enqueue(task)
            return
        self._finish(task, False, reason, out)
        if task.recovery is not None:
            rec = self._tasks[task.recovery]
            rec.priority = self.priority(rec.id)
            rec.seq = task.seq
            self._enqueue(rec)
            out.append(RecoveryQueued(task.id, rec.id))

    def _drop_chain(self, task: TaskEntry, out: list[Decision]) -> None:
        link = task.recovery
        while link is not None:
            rec = self._tasks.pop(link)
            self._ids[rec.state].discard(link)
            out.append(RecoveryDropped(link))
            link = rec.recovery

    def _schedule(self) -> list[Decision]:
        out: list[Decision] = []
        free = self._free
        scheduled = self._ids[TaskState.SCHEDULED]
        idle_without_work: list[tuple[int, int, int]] = []
        while free and scheduled:
            slot = heapq.heappop(free)
            engine = self._engines.get(slot[1])
            if engine is None or engine.token != slot[2]:
                continue
            task = None if engine.busy else self._ready.pick(engine)
            if task is None:
                # Nothing for this engine until an event adds candidates; the rest of
                # this pass only removes them.
                idle_without_work.append(slot)
                continue
            self._ready.remove(task)
            self._set_state(task, TaskState.PENDING)
            task.engine = engine.id
            task.attempts += 1
            engine.running.add(task.id)
            self._load_changed(engine)
            out.append(RunTask(task.id, engine.id))
        for slot in idle_without_work:
            heapq.heappush(free, slot)
        return out


def _check_slots(slots_per_engine: int) -> None:
    if slots_per_engine < 1:
        raise ValueError(f"slots_per_engine must be at least 1, not {slots_per_engine}")
