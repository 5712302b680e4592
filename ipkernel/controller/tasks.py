"""The task controller: :class:`~ipkernel.interfaces.ITaskController` over the controller.

It ties together the pure :class:`~ipkernel.controller.scheduler.Scheduler`, the task
store (:mod:`ipkernel.controller.store`) and the engines' queues. Events (a task
submitted, an engine registered or gone, a batch answered, a property change, an abort)
go into the scheduler; its decisions come out and are carried out here: tasks are sent to
engines in batches through their queues (``run_task``), aborted tasks are interrupted on
their engine (``interrupt(taskid)``), finished tasks are recorded and their waiters woken.

Everything the controller holds of a task is opaque: the client serializes the task body
and its ``depend`` function into frames, and only the engine decodes them. In the clear
travel only what scheduling needs: ``retries``, whether there is a ``depend`` function,
and the shape of the recovery chain.

Batches and load balancing
--------------------------
A controller-engine round trip costs far more than running a tiny task, so tasks go to
an engine in batches: one ``run_task`` command carries up to ``slots_per_engine`` tasks
and is answered with one entry per task (packed, see :mod:`ipkernel.interfaces.records`). While
an engine has a batch in flight the scheduler gives it nothing more
(:class:`BatchScheduler`): nothing waits behind a running task on a busy engine while
another engine is free. After every batch the size is set to::

    min(max_batch, batch_seconds / run time, queued / (balance_factor * engines))

(at least 1), and to 1 while the run time is unknown. The run time is the engines' own
measurement, smoothed so that it rises fast and falls slowly, and forgotten whenever the
controller is idle, since the next burst may be nothing like the last. So long tasks go one
at a time to whichever engine is free, thousands of tiny tasks go :attr:`max_batch` at a
time, and while the queue is short every engine that frees up still finds work. When
batches hold more than one task, a second batch may wait in the engine's queue, which
sends it the moment the first is answered; that answer is read at the next reactor turn,
so the engine does not wait for this controller to read it. When an engine dies, the tasks
of a batch still waiting in its queue never started: they lose no attempt.

Recovery chains
---------------
A task and its recovery tasks share one record and one id, the task's: as in IPython 0.9,
when a task fails for good its recovery task takes over its id, and the result under that
id is the outcome of the last task of the chain that ran. The scheduler knows the
recovery tasks under negative ids of their own.

Dependencies
------------
``depend`` runs on the engines, never here. A task with ``depend`` is offered to an
engine, which evaluates ``depend`` against its own properties first and runs the task or
declines it, naming the properties version it judged. The scheduler does not offer that
task to that engine again until its properties change; this controller also remembers the
verdict per ``depend`` function (by the SHA-256 of its frames) and engine, so other tasks
with the same function are declined here, without a round trip, until the engine's
properties change. A change announced by the engine (set by a client, or by code running
there) makes every waiting task a candidate again, without ``spin()``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ipkernel.controller.scheduler import (
    ABORTED,
    ENGINE_ERROR,
    Decision,
    InterruptTask,
    RecoveryDropped,
    RecoveryQueued,
    RunTask,
    Scheduler,
    TaskDone,
    TaskState,
)
from ipkernel.controller.store import (
    HeldPayload,
    ITaskStore,
    MemoryStore,
    TaskRecord,
    TaskSpec,
    close_held,
)
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, TASK_RUN, MalformedRecords
from ipkernel.interfaces.task import ITaskController

__all__ = ["MAX_CHAIN", "BatchScheduler", "TaskController", "parse_task"]

#: The longest chain of recovery tasks accepted (a task and this many recoveries).
MAX_CHAIN = 100

Outcome = tuple[str, Any]


#: The scheduler the task controller uses by default; custom ones (priorities) subclass it.
BatchScheduler = Scheduler


def parse_task(task: object) -> list[TaskSpec]:
    """Check a task in its wire form and return its chain: the task, then its recoveries.

    The wire form is a list of ``[retries, body, depend]``, the task first and then each
    recovery task in order: ``retries`` an int of at least 0, ``body`` frames (a non-empty
    list of ``bytes``) or a :class:`~ipkernel.controller.store.HeldPayload`, ``depend``
    frames or ``None``.

    :raises ValueError: naming what is wrong, for a malformed task or a recovery chain
        longer than :data:`MAX_CHAIN`.
    """
    if not isinstance(task, (list, tuple)) or not task:
        raise ValueError("a task must be a non-empty list of [retries, body, depend]")
    if len(task) > MAX_CHAIN + 1:
        raise ValueError(f"a task may have at most {MAX_CHAIN} recovery tasks in a chain")
    chain: list[TaskSpec] = []
    for link in task:
        if not isinstance(link, (list, tuple)) or len(link) != 3:
            raise ValueError("each task of a chain must be [retries, body, depend]")
        retries, body, depend = link
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int of at least 0, not {retries!r}")
        if _is_frames(body):
            body = list(body)
        elif not isinstance(body, HeldPayload):
            raise ValueError("a task's body must be a non-empty list of bytes")
        digest = None
        if depend is not None:
            if not _is_frames(depend):
                raise ValueError("a task's depend must be a non-empty list of bytes or None")
            h = hashlib.sha256()
            for frame in depend:
                h.update(frame)
            digest = h.digest()
            depend = list(depend)
        chain.append(TaskSpec(body, depend, digest, retries))
    return chain


def _is_frames(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(frame, bytes) for frame in value)
    )


@dataclass(slots=True, eq=False)
class _Chain:
    """An unfinished record and the scheduler ids of its links (None: not submitted)."""

    record: TaskRecord
    sids: list[int | None]

    @property
    def active(self) -> int:
        sid = self.sids[self.record.link]
        assert sid is not None
        return sid


@implementer(ITaskController)
class TaskController:
    """Tasks over the engines of one :class:`~ipkernel.controller.service.ControllerService`.

    :param service: provides ``registry`` (with ``on_added``/``on_removed``), ``queues``
        (engine id to :class:`~ipkernel.controller.queue.EngineQueue`) and
        ``properties_listeners``.
    :param store: where records go (:class:`~ipkernel.controller.store.MemoryStore` by
        default). Unfinished records found in it are queued again at once.
    :param scheduler: a :class:`BatchScheduler` (or subclass) with no tasks or engines
        yet; its ``slots_per_engine`` is managed here.
    :param clock: an ``IReactorTime`` for the few things that wait for the next reactor
        turn (the global reactor by default).
    :param now: the wall clock for records' timestamps.
    """

    log = Logger()

    #: Most tasks in one batch to one engine.
    max_batch = 64
    #: How much work (seconds, by the smoothed run time) a batch of short tasks aims at.
    batch_seconds = 0.004
    #: A batch takes at most 1 / (balance_factor * engines) of the queued tasks, so that
    #: while the queue is short every engine that frees up finds work left.
    balance_factor = 4

    def __init__(
        self,
        service: Any,
        *,
        store: ITaskStore | None = None,
        scheduler: BatchScheduler | None = None,
        clock: Any = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.store: ITaskStore = store if store is not None else MemoryStore()
        self.scheduler = scheduler if scheduler is not None else BatchScheduler()
        self.scheduler.slots_per_engine = 1
        self._clock = clock
        self._now = now
        self._link_ids = itertools.count(-1, -1)
        self._chains: dict[int, _Chain] = {}  # task id -> its chain, while unfinished
        self._links: dict[int, tuple[_Chain, int]] = {}  # scheduler id -> (chain, index)
        self._waiters: dict[int, list[Callable[[TaskRecord], None]]] = {}
        self._engines: set[int] = set()  # engines the scheduler knows
        self._outbox: dict[int, list[int]] = {}  # engine -> scheduler ids to send
        self._inflight: dict[int, list[list[int]]] = {}  # engine -> batches sent, oldest first
        self._batch_size = 1
        self._versions: dict[int, int] = {}  # engine -> newest properties version seen
        self._verdicts: dict[int, dict[bytes, int]] = {}  # engine -> depend digest -> version
        self._estimate: float | None = None  # smoothed seconds per task on an engine
        self._dirty: set[int] = set()  # engines with something in their outbox
        self._flushing = False
        service.registry.on_added(self._engine_added)
        service.registry.on_removed(self._engine_removed)
        service.properties_listeners.append(self._properties_changed)
        for engine_id in service.registry.ids():
            self._add_engine(engine_id)
        for record in self.store.unfinished():
            self._restart(record)
        self._flush()

    @property
    def clock(self) -> Any:
        """The ``IReactorTime`` in use (the global reactor unless one was given)."""
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    # -- ITaskController -----------------------------------------------------------------

    def reserve_ids(self, count: int) -> int:
        """Return the first of ``count`` new consecutive task ids, for :meth:`run_many`.

        :raises ValueError: if ``count`` is less than 1.
        """
        return self.store.reserve_ids(count)

    def run(self, task: object, taskid: int | None = None) -> int:
        """Submit ``task`` (wire form, see :func:`parse_task`); return its id at once.

        ``taskid`` is an id from :meth:`reserve_ids` not used yet; by default a new one.

        :raises ValueError: for a malformed task or recovery chain, or an id in use.
        """
        taskid = self._submit(task, taskid)
        self._flush()
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
        self._flush()
        return errors

    def get_task_result(self, taskid: int, block: bool = False) -> Deferred:
        """Fire with the record of ``taskid`` (:meth:`TaskRecord.to_wire`) once finished.

        With ``block=False`` fire at once, with ``None`` if it is not finished.
        Raises ``IndexError`` for an unknown id.
        """
        record = self._record(taskid)
        if record.finished:
            return succeed(record.to_wire())
        if not block:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.setdefault(taskid, []).append(lambda r: d.callback(r.to_wire()))
        return d

    def get_task_results(self, taskids: Sequence[int], block: bool = False) -> Deferred:
        """Like :meth:`get_task_result` for several ids: fire with a list, in order.

        With ``block=True`` wait until all are finished. Raises ``IndexError`` naming
        the first unknown id, before waiting for anything.
        """
        records = [self._record(taskid) for taskid in taskids]
        if not block:
            return succeed([r.to_wire() if r.finished else None for r in records])
        # The records are the objects that get finished, so they are current once the
        # wait is over.
        d = self._wait_for([r.taskid for r in records])
        return d.addCallback(lambda _: [r.to_wire() for r in records])

    def barrier(self, taskids: Sequence[int]) -> Deferred:
        """Fire with ``None`` once every task in ``taskids`` is finished.

        Raises ``IndexError`` naming the first unknown id.
        """
        for taskid in taskids:
            self._record(taskid)
        return self._wait_for(list(taskids)).addCallback(lambda _: None)

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
        self._process(self.scheduler.abort(chain.active))
        self._flush()

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
        self._process(self.scheduler.spin())
        self._flush()

    def clear(self) -> None:
        """Forget the records of finished tasks (their results can no longer be fetched)."""
        for state in ("succeeded", "failed"):
            for taskid in self.store.ids(state):
                record = self.store.get(taskid)
                if record is not None and record.outcome is not None:
                    close_held(record.outcome[1])
        self.store.remove_finished()
        self.scheduler.forget_finished()

    def engine_count(self) -> int:
        """How many engines can take tasks now (for clients sizing a ``map``'s chunks)."""
        return len(self._engines)

    # -- submitting ----------------------------------------------------------------------

    def _submit(self, task: object, taskid: int | None) -> int:
        chain = parse_task(task)
        if taskid is None:
            taskid = self.store.reserve_ids(1)
        elif not isinstance(taskid, int) or isinstance(taskid, bool) or taskid < 0:
            raise ValueError(f"task ids are ints of at least 0, not {taskid!r}")
        elif taskid in self._chains or self.store.get(taskid) is not None:
            raise ValueError(f"task id {taskid} is already in use")
        record = TaskRecord(taskid, chain, submitted=self._now())
        self.store.add(record)
        self._start(record)
        return taskid

    def _restart(self, record: TaskRecord) -> None:
        """Queue again a record a persistent store kept from an earlier run."""
        record.state = "scheduled"
        record.engine_id = None
        record.attempts = 0
        self.store.save(record)
        self._start(record)

    def _start(self, record: TaskRecord) -> None:
        first = record.link
        sids: list[int | None] = [None] * len(record.chain)
        for index in range(first, len(record.chain)):
            sids[index] = record.taskid if index == first else next(self._link_ids)
        chain = _Chain(record, sids)
        decisions: list[Decision] = []
        # Recovery tasks first, from the end of the chain, on standby: each names the
        # next; the task itself last, which queues it.
        for index in range(len(record.chain) - 1, first - 1, -1):
            spec = record.chain[index]
            sid = sids[index]
            assert sid is not None
            self._links[sid] = (chain, index)
            decisions = self.scheduler.submit(
                sid,
                retries=spec.retries,
                recovery=sids[index + 1] if index + 1 < len(sids) else None,
                has_depend=spec.depend is not None,
                standby=index != first,
            )
        self._chains[record.taskid] = chain
        self._process(decisions)

    # -- engines ---------------------------------------------------------------------------

    def _engine_added(self, engine_id: int) -> None:
        self._add_engine(engine_id)
        self._flush()

    def _add_engine(self, engine_id: int) -> None:
        if engine_id in self._engines:
            return
        self._engines.add(engine_id)
        self._versions[engine_id] = 0
        self._verdicts[engine_id] = {}
        self._process(self.scheduler.engine_added(engine_id, 0))

    def _engine_removed(self, engine_id: int) -> None:
        if engine_id not in self._engines:
            return
        self._engines.discard(engine_id)
        self._versions.pop(engine_id, None)
        self._verdicts.pop(engine_id, None)
        self._dirty.discard(engine_id)
        unsent = self._outbox.pop(engine_id, [])
        batches = self._inflight.pop(engine_id, [])
        # Only the oldest batch can have reached the engine: its queue sends one command
        # at a time. The others' tasks never started, so they lose no attempt.
        for batch in batches[1:]:
            unsent.extend(batch)
        self.scheduler.busy.add(engine_id)  # hand nothing more to it meanwhile
        for sid in unsent:
            self._process(self.scheduler.task_returned(sid, engine_id))
        self.scheduler.busy.discard(engine_id)
        # The scheduler retries what the engine was running, or fails it (EngineError).
        self._process(self.scheduler.engine_removed(engine_id))
        self._sync(unsent + (batches[0] if batches else []))
        self._flush()

    def _properties_changed(self, engine_id: int, version: int) -> None:
        if engine_id not in self._engines or not isinstance(version, int):
            return
        if self._note_version(engine_id, version):
            self._flush()

    def _note_version(self, engine_id: int, version: int) -> bool:
        """Tell the scheduler of a newer properties version; True if it was newer."""
        if version <= self._versions.get(engine_id, 0):
            return False
        self._versions[engine_id] = version
        self._process(self.scheduler.properties_changed(engine_id, version))
        return True

    # -- carrying out decisions ---------------------------------------------------------

    def _process(
        self,
        decisions: Iterable[Decision],
        outcomes: dict[int, tuple[Outcome, float]] | None = None,
    ) -> None:
        """Carry out ``decisions``; ``outcomes`` holds what the engine said of the tasks
        the event was about (``(outcome, seconds)`` by scheduler id)."""
        work = deque(decisions)
        done: list[TaskDone] = []
        while work:
            decision = work.popleft()
            kind = type(decision)
            if kind is RunTask:
                work.extend(self._assign(decision.taskid, decision.engine_id))
            elif kind is TaskDone:
                done.append(decision)
            elif kind is RecoveryQueued:
                # The recovery task takes over the record (and its id).
                self._links.pop(decision.taskid, None)
                chain, index = self._links[decision.recovery_id]
                record = chain.record
                record.link = index
                record.state = "scheduled"
                record.engine_id = None
                record.attempts = 0
                self.store.save(record)
            elif kind is InterruptTask:
                work.extend(self._interrupt(decision.taskid, decision.engine_id))
            elif kind is RecoveryDropped:
                self._links.pop(decision.taskid, None)
        for decision in done:
            self._task_done(decision, outcomes)

    def _assign(self, sid: int, engine_id: int) -> list[Decision]:
        chain, index = self._links[sid]
        spec = chain.record.chain[index]
        if spec.digest is not None:
            declined_at = self._verdicts[engine_id].get(spec.digest)
            version = self._versions[engine_id]
            if declined_at == version:
                # This engine said no to the same depend function at these properties.
                return self.scheduler.task_declined(sid, engine_id, version)
        record = chain.record
        record.state = "pending"
        record.engine_id = engine_id
        record.attempts = self.scheduler.attempts(sid)
        self.store.save(record)
        self._outbox.setdefault(engine_id, []).append(sid)
        self._dirty.add(engine_id)
        return []

    def _interrupt(self, sid: int, engine_id: int) -> list[Decision]:
        outbox = self._outbox.get(engine_id)
        if outbox and sid in outbox:
            # Never sent: free its slot as though the engine had reported on it.
            outbox.remove(sid)
            return self.scheduler.task_finished(sid, engine_id, False)
        if engine_id in self.service.registry:
            d = self.service.registry.get(engine_id).call("interrupt", [sid])
            d.addErrback(lambda f: None)  # the engine may be gone; its removal says so
        return []

    def _task_done(self, done: TaskDone, outcomes: dict[int, tuple[Outcome, float]] | None) -> None:
        found = self._links.get(done.taskid)
        if found is None:
            return
        chain, index = found
        record = chain.record
        if record.link != index:
            return  # a recovery task has taken over
        entry = outcomes.get(done.taskid) if outcomes else None
        if done.reason == ENGINE_ERROR:
            engine = record.engine_id
            outcome: Outcome = (
                "error",
                ("EngineError", f"engine {engine} died while running task {record.taskid}"),
            )
            record.duration = None
        elif done.reason == ABORTED:
            outcome = ("error", ("TaskAborted", f"task {record.taskid} was aborted with abort()"))
            record.duration = None
        elif entry is not None:
            outcome, record.duration = entry
        else:  # pragma: no cover - every other TaskDone follows an engine's report
            outcome = ("error", ("IPKernelError", f"task {record.taskid} ended without an outcome"))
        record.outcome = outcome
        record.state = "succeeded" if done.succeeded else "failed"
        record.completed = self._now()
        try:
            record.attempts = self.scheduler.attempts(done.taskid)
        except IndexError:
            pass
        self.store.save(record)
        self._chains.pop(record.taskid, None)
        for sid in chain.sids:
            if sid is not None:
                self._links.pop(sid, None)
        for spec in record.chain:  # no link of a finished task runs again
            close_held(spec.body)
        for waiter in self._waiters.pop(record.taskid, ()):
            waiter(record)

    def _sync(self, sids: Iterable[int]) -> None:
        """Copy the scheduler's state of these tasks into their records (after events
        that may have put them back in the queue without a decision: retries, declines)."""
        for sid in sids:
            found = self._links.get(sid)
            if found is None:
                continue
            chain, index = found
            record = chain.record
            if record.link != index or record.finished:
                continue
            try:
                state = self.scheduler.state(sid)
            except IndexError:
                continue
            if state is TaskState.SCHEDULED and record.state != "scheduled":
                record.state = "scheduled"
                record.engine_id = None
                self.store.save(record)

    # -- batches ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the engines their assigned tasks, in batches, as far as they may take them.

        Re-entrant calls (an engine answering at once, in tests) only mark work; the
        outermost call sends it.
        """
        if self._flushing:
            return
        self._flushing = True
        waiting: set[int] = set()
        try:
            while self._dirty:
                engine_id = self._dirty.pop()
                if not self._send_batches(engine_id):
                    waiting.add(engine_id)
        finally:
            self._flushing = False
            self._dirty |= {e for e in waiting if self._outbox.get(e)}

    def _send_batches(self, engine_id: int) -> bool:
        """Send ``engine_id`` what it may take now; False if tasks are left for later."""
        queue = self.service.queues.get(engine_id)
        if queue is None:
            if not self._outbox.get(engine_id):
                return True
            # The registry tells its listeners of a new engine before the service has
            # filed the engine's queue: send at the next reactor turn.
            self.clock.callLater(0, self._flush)
            return False
        while True:
            outbox = self._outbox.get(engine_id)
            if not outbox:
                self._outbox.pop(engine_id, None)
                return True
            inflight = self._inflight.setdefault(engine_id, [])
            if len(inflight) >= self._batches_per_engine():
                return False  # the rest goes when a batch comes back
            batch = outbox[: self._batch_size]
            del outbox[: self._batch_size]
            now = self._now()
            records = []
            held: dict[int, HeldPayload] = {}  # large bodies, sent apart, by record index
            for sid in batch:
                chain, index = self._links[sid]
                spec = chain.record.chain[index]
                chain.record.started = now
                body = spec.body
                if not isinstance(body, list):
                    held[len(records)] = body
                    body = None
                records.append(((sid, spec.digest or _NO_DIGEST), (body, spec.depend)))
            inflight.append(batch)
            self._update_busy(engine_id)
            args: list = [TASK_RUN.pack(records)]
            if held:
                args.append(held)
            d = queue.submit("run_task", args)
            d.addCallback(self._batch_answered, engine_id, batch)
            d.addErrback(lambda f: self.log.failure("handling a batch's answer failed", failure=f))

    def _batches_per_engine(self) -> int:
        # Short tasks in a deep queue: a second batch waits in the engine's queue, sent
        # the moment the first is answered, so the engine does not idle while this
        # controller reads the answer. Otherwise one, so nothing waits behind a task.
        return 2 if self._batch_size > 1 else 1

    def _update_busy(self, engine_id: int) -> None:
        if len(self._inflight.get(engine_id, ())) >= self._batches_per_engine():
            self.scheduler.busy.add(engine_id)
        else:
            self.scheduler.busy.discard(engine_id)

    def _in_flight(self, engine_id: int, batch: list[int]) -> bool:
        return any(b is batch for b in self._inflight.get(engine_id, ()))

    def _take(self, engine_id: int, batch: list[int]) -> None:
        """The batch is back (or lost): forget it, and let the engine take more."""
        inflight = self._inflight[engine_id]
        inflight[:] = [b for b in inflight if b is not batch]
        if not inflight:
            del self._inflight[engine_id]
        self._update_busy(engine_id)

    def _batch_answered(self, outcome: object, engine_id: int, batch: list[int]) -> None:
        if not self._in_flight(engine_id, batch):
            # The engine left meanwhile; its removal has dealt with the batch.
            if isinstance(outcome, tuple) and len(outcome) == 3 and isinstance(outcome[2], dict):
                for held in outcome[2].values():
                    close_held(held)
            return
        status, value = _split_outcome(outcome)
        if status == "tasks" and len(outcome) == 3:  # type: ignore[arg-type]
            self._settle_with_results(engine_id, batch, value, outcome[2])  # type: ignore[index]
        elif status == "tasks" and len(self._inflight[engine_id]) > 1:
            # The engine's queue sends the next batch once this callback returns: read
            # this answer after that, at the next reactor turn.
            self.clock.callLater(0, self._batch_answered_later, outcome, engine_id, batch)
        elif status == "tasks":
            try:
                entries = TASK_REPLY.unpack(value)
            except MalformedRecords as exc:
                self._batch_failed(
                    engine_id, batch, ("error", ("IPKernelError", f"malformed answer: {exc}"))
                )
            else:
                self._settle_batch(engine_id, batch, entries)
        elif status == "error" and _error_type(value) == "QueueCleared":
            # A MultiEngine clear_queue() dropped the batch before it started: send it
            # again, but for the tasks aborted meanwhile, whose slots are now free.
            self._take(engine_id, batch)
            live = [sid for sid in batch if sid in self._links]
            for sid in batch:
                if sid not in self._links:
                    self._process(self.scheduler.task_finished(sid, engine_id, False))
            if live:
                self._outbox[engine_id] = live + self._outbox.get(engine_id, [])
                self._dirty.add(engine_id)
            self._process(self.scheduler.spin())
            self._flush()
        elif status == "error" and _error_type(value) == "EngineError":
            # Most likely the engine died: the connection fails its calls before it tells
            # of its departure. Decide at the next turn, once the registry knows.
            self.clock.callLater(0, self._batch_lost, engine_id, batch, outcome)
        else:
            self._batch_failed(engine_id, batch, _as_error(outcome))

    def _settle_with_results(
        self, engine_id: int, batch: list[int], packed: object, results: object
    ) -> None:
        """Settle a batch whose large results came apart: ``results`` maps entry indexes
        to the :class:`HeldPayload` kept for each, or the text of why it was not."""
        try:
            entries = TASK_REPLY.unpack(packed)
            if not isinstance(results, dict):
                raise MalformedRecords("its results are not a dict")
        except MalformedRecords as exc:
            for value in results.values() if isinstance(results, dict) else ():
                close_held(value)
            outcome = ("error", ("IPKernelError", f"malformed answer: {exc}"))
            self._batch_failed(engine_id, batch, outcome)
            return
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
        self._settle_batch(engine_id, batch, entries)

    def _batch_answered_later(self, outcome: object, engine_id: int, batch: list[int]) -> None:
        if not self._in_flight(engine_id, batch):
            return
        # Only the oldest batch in flight can be waiting here; make it look like the only
        # one so that the answer is read now.
        try:
            entries = TASK_REPLY.unpack(outcome[1])  # type: ignore[index]
        except MalformedRecords as exc:
            self._batch_failed(
                engine_id, batch, ("error", ("IPKernelError", f"malformed answer: {exc}"))
            )
        else:
            self._settle_batch(engine_id, batch, entries)

    def _batch_lost(self, engine_id: int, batch: list[int], outcome: Outcome) -> None:
        if self._in_flight(engine_id, batch):
            self._batch_failed(engine_id, batch, outcome)

    def _batch_failed(self, engine_id: int, batch: list[int], outcome: Outcome) -> None:
        """The engine could not run the batch at all: one failed attempt for each task."""
        self._take(engine_id, batch)
        for sid in batch:
            self._process(
                self.scheduler.task_finished(sid, engine_id, False), {sid: (outcome, None)}
            )
        self._sync(batch)
        self._flush()

    def _settle_batch(self, engine_id: int, batch: list[int], entries: Sequence) -> None:
        self._take(engine_id, batch)
        expected = set(batch)
        parsed_entries = []
        for entry in entries:
            parsed = _parse_entry(entry)
            if parsed is None or parsed[0] not in expected:
                self.log.warn("engine {e} sent a malformed task entry", e=engine_id)
                continue
            expected.discard(parsed[0])
            parsed_entries.append(parsed)
            if parsed[1] in ("ok", "raised"):
                self._observe(parsed[3])
        # The batch size follows the run times, before the passes below fill this engine.
        self._retune()
        scheduler = self.scheduler
        for sid, status, value, seconds in parsed_entries:
            if status == "declined":
                self._note_version(engine_id, value)
                found = self._links.get(sid)
                if found is not None:
                    digest = found[0].record.chain[found[1]].digest
                    if digest is not None:
                        self._verdicts[engine_id][digest] = value
                try:
                    decisions = scheduler.task_declined(sid, engine_id, value)
                except ValueError:  # declined a task without depend: count it a failure
                    outcome = ("error", ("IPKernelError", "the engine declined a task"))
                    decisions = scheduler.task_finished(sid, engine_id, False)
                    self._process(decisions, {sid: (outcome, seconds)})
                else:
                    self._process(decisions)
                continue
            self._process(
                scheduler.task_finished(sid, engine_id, status == "ok"),
                {sid: ((status, value), seconds)},
            )
        for sid in batch:
            if sid in expected:
                outcome = ("error", ("EngineError", f"engine {engine_id} did not report on it"))
                self._process(
                    scheduler.task_finished(sid, engine_id, False), {sid: (outcome, None)}
                )
        self._sync(batch)
        self._retune()
        self._process(scheduler.spin())
        self._flush()

    def _observe(self, seconds: float | None) -> None:
        if seconds is None:
            return
        estimate = self._estimate
        if estimate is None:
            self._estimate = seconds
        elif seconds > estimate:
            self._estimate = estimate + 0.5 * (seconds - estimate)
        else:
            self._estimate = estimate + 0.05 * (seconds - estimate)

    def _retune(self) -> None:
        """Set the batch size (the scheduler's slots per engine) for what comes next."""
        counts = self.scheduler.counts()
        queued = counts["scheduled"]
        if not queued and not counts["pending"]:
            # Idle: the next burst of tasks may be nothing like the last; learn afresh.
            self._estimate = None
        if self._estimate is None:
            size = 1
        else:
            by_time = int(self.batch_seconds / max(self._estimate, 1e-6))
            by_queue = queued // (self.balance_factor * max(1, len(self._engines)))
            size = max(1, min(self.max_batch, by_time, by_queue))
        if size != self._batch_size:
            self._batch_size = size
            self.scheduler.slots_per_engine = size * self._batches_per_engine()
            for engine_id in self._inflight:
                self._update_busy(engine_id)

    # -- records and waiters --------------------------------------------------------------

    def _record(self, taskid: object) -> TaskRecord:
        if isinstance(taskid, int) and not isinstance(taskid, bool):
            chain = self._chains.get(taskid)
            if chain is not None:
                return chain.record
            record = self.store.get(taskid)
            if record is not None:
                return record
        raise IndexError(f"no task with id {taskid!r}")

    def _wait_for(self, taskids: list[int]) -> Deferred:
        """Fire with ``None`` once all of ``taskids`` are finished (one Deferred, one
        counter, whatever their number)."""
        d: Deferred = Deferred()
        unfinished = {t for t in taskids if not self._record(t).finished}
        if not unfinished:
            d.callback(None)
            return d
        left = [len(unfinished)]

        def one_done(_: TaskRecord) -> None:
            left[0] -= 1
            if left[0] == 0:
                d.callback(None)

        for taskid in unfinished:
            self._waiters.setdefault(taskid, []).append(one_done)
        return d


def _split_outcome(outcome: object) -> tuple[Any, Any]:
    if isinstance(outcome, (list, tuple)) and (
        len(outcome) == 2 or (len(outcome) == 3 and outcome[0] == "tasks")
    ):
        return outcome[0], outcome[1]
    return None, None


def _error_type(value: object) -> Any:
    if isinstance(value, (list, tuple)) and value:
        return value[0]
    return None


def _as_error(outcome: object) -> Outcome:
    """The outcome of a whole batch that failed, as an outcome for each of its tasks."""
    status, value = _split_outcome(outcome)
    if status in ("raised", "error"):
        return (status, value)
    return ("error", ("IPKernelError", f"the engine answered a batch with {status!r}"))


_NO_DIGEST = bytes(32)
_ERROR_CODE = STATUSES.index("error")


def _parse_entry(entry: tuple) -> tuple[int, str, Any, float | None] | None:
    """Check one unpacked :data:`~ipkernel.interfaces.records.TASK_REPLY` record; return
    ``(taskid, status, value, seconds)`` or ``None`` if it makes no sense."""
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
