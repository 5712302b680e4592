"""The engine side of the task controller: scheduler events in, decisions carried out.

A :class:`Dispatcher` feeds the pure scheduler (:mod:`ipkernel.controller.scheduler`) what
happens on the engines (an engine registered or gone, its properties changed, a batch
answered) and the tasks the task controller starts or aborts, and carries out the
decisions that come back: tasks go to engines in batches
(:mod:`~ipkernel.controller.batches`, sized by :mod:`~ipkernel.controller.batch_size`),
aborted tasks are interrupted on their engine (``interrupt(taskid)``), a task a chain's
recovery task takes over moves on in its record (:mod:`~ipkernel.controller.chains`), and
finished tasks are recorded and reported. ``depend`` verdicts the engines give are
remembered (:mod:`~ipkernel.controller.verdicts`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipkernel.controller.batch_size import BatchSizer
from ipkernel.controller.batches import Batches
from ipkernel.controller.chains import Chains
from ipkernel.controller.replies import Outcome, parse_entry
from ipkernel.controller.scheduler.decisions import (
    ABORTED,
    ENGINE_ERROR,
    Decision,
    InterruptTask,
    RecoveryDropped,
    RecoveryQueued,
    RunTask,
    TaskDone,
)
from ipkernel.controller.scheduler.machine import Scheduler
from ipkernel.controller.store import TaskRecord
from ipkernel.controller.verdicts import DependVerdicts

__all__ = ["Dispatcher"]

#: What the engine said of the tasks an event was about: ``(outcome, seconds)`` by
#: scheduler id.
Reports = dict[int, tuple[Outcome, float | None]]


class Dispatcher:
    """Runs tasks on the engines of one
    :class:`~ipkernel.controller.service.ControllerService`, through the scheduler.

    :param service: provides ``registry``, ``queues`` (engine id to
        :class:`~ipkernel.controller.queue.EngineQueue`) and ``on_engine_added``,
        ``on_engine_removed``, ``on_properties_changed`` (told of an engine once its
        queue exists). The engines registered already are taken on at once.
    :param scheduler: with no tasks or engines yet; its slots per engine follow ``sizer``.
    :param chains: the unfinished tasks' records, saved as they change.
    :param sizer: the adaptive batch size.
    :param on_finished: called with each record once its task is finished.
    :param clock: an ``IReactorTime``, to read some answers at the next reactor turn.
    :param now: the wall clock for records' timestamps.
    """

    log = Logger()

    def __init__(
        self,
        service: Any,
        scheduler: Scheduler,
        chains: Chains,
        sizer: BatchSizer,
        *,
        on_finished: Callable[[TaskRecord], None],
        clock: IReactorTime,
        now: Callable[[], float],
    ) -> None:
        self._registry = service.registry
        self._scheduler = scheduler
        self._chains = chains
        self._sizer = sizer
        self._on_finished = on_finished
        self._now = now
        self._verdicts = DependVerdicts()
        self._engines: set[int] = set()  # engines the scheduler knows
        scheduler.set_slots(sizer.slots)
        self._batches = Batches(
            service.queues,
            chains,
            sizer,
            scheduler,
            settled=self._batch_settled,
            failed=self._batch_failed,
            dropped=self._batch_dropped,
            clock=clock,
            now=now,
        )
        service.on_engine_added(self._engine_added)
        service.on_engine_removed(self._engine_removed)
        service.on_properties_changed(self._properties_changed)
        for engine_id in self._registry.ids():
            self._add_engine(engine_id)

    def start(self, record: TaskRecord) -> None:
        """Queue ``record``'s task from its link in charge (sent at the next :meth:`flush`)."""
        self._process(self._chains.start(record, self._scheduler))

    def abort(self, sid: int) -> None:
        """Abort the task scheduler id ``sid`` stands for (``IndexError`` if finished)."""
        self._process(self._scheduler.abort(sid))
        self._batches.flush()

    def spin(self) -> None:
        """Run a scheduling pass and send what it decides."""
        self._process(self._scheduler.spin())
        self._batches.flush()

    def flush(self) -> None:
        """Send the engines the tasks assigned to them, as far as they may take them."""
        self._batches.flush()

    def engine_count(self) -> int:
        """How many engines can take tasks now."""
        return len(self._engines)

    def running(self, limit: int) -> dict[int, tuple[list[int], int]]:
        """For each engine with tasks in flight: the ids of the first ``limit`` tasks of
        the batch it is running, and how many tasks it has in flight."""
        running = {}
        for engine_id, (sids, count) in self._batches.in_flight(limit).items():
            records = (self._chains.active_record(sid) for sid in sids)
            running[engine_id] = ([r.taskid for r in records if r is not None], count)
        return running

    # -- engines ---------------------------------------------------------------------------

    def _engine_added(self, engine_id: int) -> None:
        self._add_engine(engine_id)
        self._batches.flush()

    def _add_engine(self, engine_id: int) -> None:
        if engine_id in self._engines:
            return
        self._engines.add(engine_id)
        self._verdicts.add_engine(engine_id)
        self._process(self._scheduler.engine_added(engine_id, 0))

    def _engine_removed(self, engine_id: int) -> None:
        if engine_id not in self._engines:
            return
        self._engines.discard(engine_id)
        self._verdicts.remove_engine(engine_id)
        unsent, oldest = self._batches.forget_engine(engine_id)
        self._scheduler.engine_busy(engine_id)  # hand nothing more to it meanwhile
        for sid in unsent:
            self._process(self._scheduler.task_returned(sid, engine_id))
        # The scheduler retries what the engine was running, or fails it (EngineError).
        self._process(self._scheduler.engine_removed(engine_id))
        self._chains.requeued(unsent + oldest, self._scheduler)
        self._batches.flush()

    def _properties_changed(self, engine_id: int, version: int) -> None:
        if engine_id not in self._engines or not isinstance(version, int):
            return
        if self._note_version(engine_id, version):
            self._batches.flush()

    def _note_version(self, engine_id: int, version: int) -> bool:
        """Tell the scheduler of a newer properties version; True if it was newer."""
        if not self._verdicts.newer(engine_id, version):
            return False
        self._process(self._scheduler.properties_changed(engine_id, version))
        return True

    # -- carrying out decisions ---------------------------------------------------------

    def _process(self, decisions: Iterable[Decision], outcomes: Reports | None = None) -> None:
        """Carry out ``decisions``; ``outcomes`` holds what the engine said of the tasks
        the event was about."""
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
                self._chains.recovery_queued(decision.taskid, decision.recovery_id)
            elif kind is InterruptTask:
                work.extend(self._interrupt(decision.taskid, decision.engine_id))
            elif kind is RecoveryDropped:
                self._chains.dropped(decision.taskid)
        for decision in done:
            self._task_done(decision, outcomes)

    def _assign(self, sid: int, engine_id: int) -> list[Decision]:
        spec = self._chains.spec(sid)
        assert spec is not None
        if spec.digest is not None and self._verdicts.declines(engine_id, spec.digest):
            # This engine said no to the same depend function at these properties.
            version = self._verdicts.version(engine_id)
            return self._scheduler.task_declined(sid, engine_id, version)
        self._chains.assigned(sid, engine_id, self._scheduler.attempts(sid))
        self._batches.assign(engine_id, sid)
        return []

    def _interrupt(self, sid: int, engine_id: int) -> list[Decision]:
        if self._batches.unsend(engine_id, sid):
            # Never sent: free its slot as though the engine had reported on it.
            return self._scheduler.task_finished(sid, engine_id, False)
        if engine_id in self._registry:
            d = self._registry.get(engine_id).call("interrupt", [sid])
            d.addErrback(lambda f: None)  # the engine may be gone; its removal says so
        return []

    def _task_done(self, done: TaskDone, outcomes: Reports | None) -> None:
        record = self._chains.active_record(done.taskid)
        if record is None:
            return  # forgotten, or a recovery task has taken over
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
            record.attempts = self._scheduler.attempts(done.taskid)
        except IndexError:
            pass
        self._chains.finish(record)
        self._on_finished(record)

    # -- batches back from the engines -----------------------------------------------------

    def _batch_failed(self, engine_id: int, batch: list[int], outcome: Outcome) -> None:
        """The engine could not run the batch at all: one failed attempt for each task."""
        for sid in batch:
            self._process(
                self._scheduler.task_finished(sid, engine_id, False), {sid: (outcome, None)}
            )
        self._chains.requeued(batch, self._scheduler)
        self._batches.flush()

    def _batch_dropped(self, engine_id: int, batch: list[int]) -> None:
        """The batch never started: send it again, but for the tasks aborted meanwhile,
        whose slots are now free."""
        live = [sid for sid in batch if sid in self._chains]
        for sid in batch:
            if sid not in self._chains:
                self._process(self._scheduler.task_finished(sid, engine_id, False))
        self._batches.resend(engine_id, live)
        self._process(self._scheduler.spin())
        self._batches.flush()

    def _batch_settled(self, engine_id: int, batch: list[int], entries: Sequence) -> None:
        """The engine reported on the batch's tasks, one entry each (a task it did not
        report on failed with ``EngineError``)."""
        expected = set(batch)
        parsed_entries = []
        for entry in entries:
            parsed = parse_entry(entry)
            if parsed is None or parsed[0] not in expected:
                self.log.warn("engine {e} sent a malformed task entry", e=engine_id)
                continue
            expected.discard(parsed[0])
            parsed_entries.append(parsed)
            if parsed[1] in ("ok", "raised"):
                self._sizer.observe(parsed[3])
        # The batch size follows the run times, before the passes below fill this engine.
        self._resize()
        scheduler = self._scheduler
        for sid, status, value, seconds in parsed_entries:
            if status == "declined":
                self._note_version(engine_id, value)
                spec = self._chains.spec(sid)
                if spec is not None and spec.digest is not None:
                    self._verdicts.declined(engine_id, spec.digest, value)
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
        self._chains.requeued(batch, scheduler)
        self._resize()
        self._process(scheduler.spin())
        self._batches.flush()

    def _resize(self) -> None:
        """Set the batch size (the scheduler's slots per engine) for what comes next."""
        counts = self._scheduler.counts()
        if self._sizer.retune(counts["scheduled"], counts["pending"], len(self._engines)):
            self._scheduler.set_slots(self._sizer.slots)
            self._batches.resized()
