"""The task scheduler: a pure state machine that decides where and when each task runs.

Events in, decisions out, no I/O. The task controller feeds the scheduler what happened
(a task was submitted, an engine arrived or left, an engine finished or declined a task,
an engine's properties changed, a user aborted a task) and carries out the decisions each
event returns (:class:`RunTask`, :class:`InterruptTask`) and records the others
(:class:`TaskDone`, :class:`RecoveryQueued`, :class:`RecoveryDropped`). The scheduler never
touches the network, the reactor or the clock, and knows tasks and engines only by their
integer ids, so every behaviour is pinned down by plain function calls.

Model
-----
A task is in one of five states (:class:`TaskState`): ``standby`` (a recovery task known
ahead of time and queued only if needed), ``scheduled`` (queued, waiting for an engine),
``pending`` (sent to an engine), ``succeeded`` and ``failed``. As in IPython 0.9's
``queue_status``, *scheduled* tasks wait in the queue and *pending* tasks are on engines.

Each engine has ``slots_per_engine`` slots (1 by default: one task at a time). After every
event the scheduler runs a scheduling pass: while some engine has a free slot, the least
loaded engine (ties by lowest id) gets the first task in queue order that it can take. A
task it cannot take stays where it is and does not hold back the tasks behind it.

Queue order is first in, first out. A task that goes back to the queue (a retry, or a
decline) keeps its original place, ahead of everything submitted after it: in plain FIFO
that is the front of the queue. A recovery task takes the place of the task it recovers.
Subclasses change the order by overriding :meth:`Scheduler.priority`.

Retries and recovery: ``retries`` counts re-runs, so ``retries=2`` allows three attempts.
A failed attempt, or an engine that leaves while running the task, uses up one retry; a
task with none left finishes failed (:class:`TaskDone` with reason ``"failed"`` or
``"EngineError"``) and, if it has a recovery task, that task is queued
(:class:`RecoveryQueued`). Recovery tasks may have their own recovery task. When a task
finishes without needing its recovery chain (success or abort), the chain is dropped
(:class:`RecoveryDropped`).

Dependencies: a task submitted with ``has_depend`` carries a ``depend`` function that only
the engine evaluates, against its own properties, as the first step of a run. A
:class:`RunTask` for such a task is therefore tentative: the engine either runs it (and
reports :meth:`Scheduler.task_finished`) or declines it (:meth:`Scheduler.task_declined`,
naming the properties version it judged). The scheduler remembers each verdict per
(task, engine, properties version) and does not offer that task to that engine again until
the engine's properties change (:meth:`Scheduler.properties_changed`).

Cost: tasks without ``depend`` live in one shared heap, so each event costs O(log n) in the
number of queued tasks; tasks with ``depend`` are also indexed per engine, so submitting
one costs O(engines * log n) and a property change re-indexes that engine's candidates.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ABORTED",
    "ENGINE_ERROR",
    "FAILED",
    "Decision",
    "InterruptTask",
    "RecoveryDropped",
    "RecoveryQueued",
    "RunTask",
    "Scheduler",
    "TaskDone",
    "TaskState",
]

#: :attr:`TaskDone.reason` of a task whose user code failed on its last attempt.
FAILED = "failed"
#: :attr:`TaskDone.reason` of a task whose engine left while running its last attempt.
ENGINE_ERROR = "EngineError"
#: :attr:`TaskDone.reason` of a task cancelled by :meth:`Scheduler.abort`.
ABORTED = "TaskAborted"


class TaskState(enum.StrEnum):
    """Where a task stands; the values are the keys of :meth:`Scheduler.status`."""

    STANDBY = "standby"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunTask:
    """Send task ``taskid`` to engine ``engine_id`` (tentatively, if it has ``depend``)."""

    taskid: int
    engine_id: int


@dataclass(frozen=True, slots=True)
class InterruptTask:
    """Interrupt engine ``engine_id``, which is running the aborted task ``taskid``.

    The engine's slot stays taken until the engine reports back on ``taskid`` (finished
    or declined) or leaves.
    """

    taskid: int
    engine_id: int


@dataclass(frozen=True, slots=True)
class TaskDone:
    """Task ``taskid`` is finished; record its outcome.

    ``reason`` is ``None`` on success, else :data:`FAILED`, :data:`ENGINE_ERROR` or
    :data:`ABORTED`.
    """

    taskid: int
    succeeded: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryQueued:
    """Task ``taskid`` failed for good; its recovery task ``recovery_id`` is now queued."""

    taskid: int
    recovery_id: int


@dataclass(frozen=True, slots=True)
class RecoveryDropped:
    """Standby recovery task ``taskid`` will never run; the scheduler has forgotten it."""

    taskid: int


Decision = RunTask | InterruptTask | TaskDone | RecoveryQueued | RecoveryDropped

# A queue entry: (priority, sequence, taskid, epoch). (priority, sequence, taskid) is the
# task's place in the queue; the epoch, fresh each time the task is queued, tells a live
# entry from the stale ones that heaps keep until they surface.
_Entry = tuple[Any, int, int, int]
# An engine's properties version as the scheduler compares it: (incarnation, version). The
# incarnation changes when an engine id is registered again, so verdicts given by a
# previous engine holding the same id never apply to the new one.
_VersionKey = tuple[int, int]


@dataclass(slots=True, eq=False)
class _Task:
    id: int
    retries: int
    recovery: int | None
    has_depend: bool
    state: TaskState
    parent: int | None = None
    priority: Any = 0
    seq: int = 0
    epoch: int = -1
    attempts: int = 0
    engine: int | None = None
    declined: dict[int, _VersionKey] = field(default_factory=dict)

    def entry(self) -> _Entry:
        return (self.priority, self.seq, self.id, self.epoch)


@dataclass(slots=True, eq=False)
class _Engine:
    id: int
    incarnation: int
    version: _VersionKey
    running: set[int] = field(default_factory=set)
    # Bumped whenever the load changes; only the free-slot entry with the current token
    # is live.
    token: int = 0
    # Queued depend tasks this engine has not declined at its current version.
    candidates: list[_Entry] = field(default_factory=list)


class Scheduler:
    """Dynamic load balancing of tasks over engines, as a state machine.

    Every event method returns the list of decisions it produced, in order: first what
    the event itself decided (:class:`InterruptTask`, :class:`TaskDone`,
    :class:`RecoveryQueued`, :class:`RecoveryDropped`), then the :class:`RunTask`
    decisions of the scheduling pass that ends every event.

    Task ids are chosen by the caller and must not be reused for a different task.

    To change the queue order, subclass and override :meth:`priority`.
    """

    def __init__(self, slots_per_engine: int = 1) -> None:
        if slots_per_engine < 1:
            raise ValueError(f"slots_per_engine must be at least 1, not {slots_per_engine}")
        self.slots_per_engine = slots_per_engine
        self._tasks: dict[int, _Task] = {}
        self._ids: dict[TaskState, set[int]] = {state: set() for state in TaskState}
        self._engines: dict[int, _Engine] = {}
        # Queued tasks without depend, which any engine can take.
        self._plain: list[_Entry] = []
        self._n_plain = 0
        # Queued tasks with depend; each engine indexes those it may take.
        self._queued_depend: set[int] = set()
        # Engines with a free slot: (load, engine id, token).
        self._free: list[tuple[int, int, int]] = []
        self._seqs: Iterator[int] = itertools.count()
        self._epochs: Iterator[int] = itertools.count()
        self._incarnations: Iterator[int] = itertools.count()
        #: Engines that take no task now (for example a batch in flight); passes skip them.
        self.busy: set[int] = set()

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
        carries a ``depend`` function (see the module docstring). With ``standby=True`` the
        task is a recovery task: known, but queued only when the task naming it as
        ``recovery`` fails for good (a standby task nobody claims stays on standby until
        aborted).

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
        task = _Task(taskid, retries, recovery, has_depend, state)
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
        engine = _Engine(engine_id, incarnation, (incarnation, properties_version))
        self._engines[engine_id] = engine
        self._index_candidates(engine)
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
        self._compact_free()
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
        self._index_candidates(engine)
        return self._schedule()

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
            self._dequeue(task)
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

    def _task(self, taskid: int) -> _Task:
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

    def _set_state(self, task: _Task, state: TaskState) -> None:
        self._ids[task.state].discard(task.id)
        self._ids[state].add(task.id)
        task.state = state

    @staticmethod
    def _is_running_on(task: _Task | None, engine_id: int) -> bool:
        return task is not None and task.state is TaskState.PENDING and task.engine == engine_id

    def _can_take(self, task: _Task, engine: _Engine) -> bool:
        return task.declined.get(engine.id) != engine.version

    def _enqueue(self, task: _Task) -> None:
        self._set_state(task, TaskState.SCHEDULED)
        task.engine = None
        task.epoch = next(self._epochs)
        entry = task.entry()
        if not task.has_depend:
            heapq.heappush(self._plain, entry)
            self._n_plain += 1
            return
        self._queued_depend.add(task.id)
        limit = 2 * len(self._queued_depend) + 64
        for engine in self._engines.values():
            if self._can_take(task, engine):
                if len(engine.candidates) > limit:
                    self._index_candidates(engine)
                else:
                    heapq.heappush(engine.candidates, entry)

    def _dequeue(self, task: _Task) -> None:
        # Heap entries of the task go stale with the state change; they are dropped
        # when they surface, or when a heap is compacted.
        if task.has_depend:
            self._queued_depend.discard(task.id)
        else:
            self._n_plain -= 1
            if len(self._plain) > 2 * self._n_plain + 64:
                self._plain[:] = [e for e in self._plain if self._live(e)]
                heapq.heapify(self._plain)

    def _live(self, entry: _Entry) -> bool:
        task = self._tasks.get(entry[2])
        return task is not None and task.state is TaskState.SCHEDULED and task.epoch == entry[3]

    def _index_candidates(self, engine: _Engine) -> None:
        tasks = self._tasks
        engine.candidates[:] = [
            tasks[i].entry() for i in self._queued_depend if self._can_take(tasks[i], engine)
        ]
        heapq.heapify(engine.candidates)

    def _load_changed(self, engine: _Engine) -> None:
        engine.token += 1
        load = len(engine.running)
        if load < self.slots_per_engine:
            heapq.heappush(self._free, (load, engine.id, engine.token))
            if len(self._free) > 4 * len(self._engines) + 64:
                self._compact_free()

    def _compact_free(self) -> None:
        # In place, here and for the other heaps: a scheduling pass may hold a reference.
        self._free[:] = [
            (len(e.running), e.id, e.token)
            for e in self._engines.values()
            if len(e.running) < self.slots_per_engine
        ]
        heapq.heapify(self._free)

    def _release(self, engine: _Engine, taskid: int) -> None:
        engine.running.discard(taskid)
        self._load_changed(engine)

    def _finish(
        self, task: _Task, succeeded: bool, reason: str | None, out: list[Decision]
    ) -> None:
        self._set_state(task, TaskState.SUCCEEDED if succeeded else TaskState.FAILED)
        out.append(TaskDone(task.id, succeeded, reason))

    def _attempt_failed(self, task: _Task, reason: str, out: list[Decision]) -> None:
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

    def _drop_chain(self, task: _Task, out: list[Decision]) -> None:
        link = task.recovery
        while link is not None:
            rec = self._tasks.pop(link)
            self._ids[rec.state].discard(link)
            out.append(RecoveryDropped(link))
            link = rec.recovery

    def _pick(self, engine: _Engine) -> _Task | None:
        """Pop and return the first queued task ``engine`` can take, if any."""
        if engine.id in self.busy:
            return None
        plain = self._plain
        while plain and not self._live(plain[0]):
            heapq.heappop(plain)
        cands = engine.candidates
        while cands:
            task = self._tasks.get(cands[0][2])
            if (
                task is not None
                and task.state is TaskState.SCHEDULED
                and task.epoch == cands[0][3]
                and self._can_take(task, engine)
            ):
                break
            heapq.heappop(cands)
        if cands and (not plain or cands[0] < plain[0]):
            return self._tasks[heapq.heappop(cands)[2]]
        if plain:
            return self._tasks[heapq.heappop(plain)[2]]
        return None

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
            task = self._pick(engine)
            if task is None:
                # Nothing for this engine until an event adds candidates; the rest of
                # this pass only removes them.
                idle_without_work.append(slot)
                continue
            self._dequeue(task)
            self._set_state(task, TaskState.PENDING)
            task.engine = engine.id
            task.attempts += 1
            engine.running.add(task.id)
            self._load_changed(engine)
            out.append(RunTask(task.id, engine.id))
        for slot in idle_without_work:
            heapq.heappush(free, slot)
        return out
