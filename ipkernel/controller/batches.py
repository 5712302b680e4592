"""Batches to engines: the tasks assigned to each engine, sent through its queue.

One ``run_task`` command carries up to :attr:`BatchSizer.size
<ipkernel.controller.batch_size.BatchSizer.size>` tasks and is answered with one entry per
task (packed, see :mod:`ipkernel.interfaces.records`). While an engine has as many
batches in flight as it may (:attr:`~ipkernel.controller.batch_size.BatchSizer.batches_per_engine`)
the scheduler is told it is busy and gives it nothing more: nothing waits behind a
running task on a busy engine while another engine is free. When batches hold more than
one task, a second batch may wait in the engine's queue, which sends it the moment the
first is answered; that answer is read at the next reactor turn, so the engine does not
wait for the controller to read it. When an engine dies, the tasks of a batch still
waiting in its queue never started: they lose no attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipkernel.controller.batch_size import BatchSizer
from ipkernel.controller.chains import Chains
from ipkernel.controller.queue import EngineQueue
from ipkernel.controller.replies import (
    Outcome,
    batch_error,
    close_results,
    error_type,
    malformed,
    read_reply,
    split_outcome,
)
from ipkernel.controller.scheduler.machine import Scheduler
from ipkernel.controller.store import HeldPayload
from ipkernel.interfaces.records import TASK_RUN, MalformedRecords

__all__ = ["Batches"]

#: ``(engine_id, batch, entries)``: a batch is back with one entry per task it reported on
#: (unchecked :func:`~ipkernel.controller.replies.read_reply` entries).
Settled = Callable[[int, list[int], list], None]
#: ``(engine_id, batch, outcome)``: the engine could not run the batch at all.
Failed = Callable[[int, list[int], Outcome], None]
#: ``(engine_id, batch)``: the batch was dropped before it started (``clear_queue()``).
Dropped = Callable[[int, list[int]], None]

_NO_DIGEST = bytes(32)


class Batches:
    """Each engine's outbox (tasks assigned, not sent yet) and batches in flight.

    ``queues`` maps engine ids to their :class:`~ipkernel.controller.queue.EngineQueue`
    (an engine's queue exists before anyone assigns it tasks). Every batch that comes back
    is out of flight before it is reported to exactly one of ``settled``, ``failed`` or
    ``dropped``; a batch still in flight when its engine is forgotten
    (:meth:`forget_engine`) is never reported. ``clock`` serves to read answers at the
    next reactor turn.
    """

    log = Logger()

    def __init__(
        self,
        queues: Mapping[int, EngineQueue],
        chains: Chains,
        sizer: BatchSizer,
        scheduler: Scheduler,
        *,
        settled: Settled,
        failed: Failed,
        dropped: Dropped,
        clock: IReactorTime,
        now: Callable[[], float],
    ) -> None:
        self._queues = queues
        self._chains = chains
        self._sizer = sizer
        self._scheduler = scheduler
        self._settled = settled
        self._failed = failed
        self._dropped = dropped
        self._clock = clock
        self._now = now
        self._outbox: dict[int, list[int]] = {}  # engine -> scheduler ids to send
        self._inflight: dict[int, list[list[int]]] = {}  # engine -> batches sent, oldest first
        self._dirty: set[int] = set()  # engines with something in their outbox
        self._flushing = False

    def assign(self, engine_id: int, sid: int) -> None:
        """Task ``sid`` goes to engine ``engine_id`` with the next batch (:meth:`flush`)."""
        self._outbox.setdefault(engine_id, []).append(sid)
        self._dirty.add(engine_id)

    def unsend(self, engine_id: int, sid: int) -> bool:
        """Take task ``sid`` back if it was not sent yet; True if it was taken back."""
        outbox = self._outbox.get(engine_id)
        if outbox and sid in outbox:
            outbox.remove(sid)
            return True
        return False

    def resend(self, engine_id: int, sids: list[int]) -> None:
        """Send ``sids`` (from a batch that came back unstarted) first, at the next flush."""
        if sids:
            self._outbox[engine_id] = sids + self._outbox.get(engine_id, [])
            self._dirty.add(engine_id)

    def forget_engine(self, engine_id: int) -> tuple[list[int], list[int]]:
        """Engine ``engine_id`` is gone: forget its outbox and batches.

        Returns the tasks that never started (its outbox, and every batch in flight but
        the oldest: its queue sends one command at a time) and the tasks of the oldest
        batch in flight, which may have started (empty if none).
        """
        self._dirty.discard(engine_id)
        unsent = self._outbox.pop(engine_id, [])
        batches = self._inflight.pop(engine_id, [])
        for batch in batches[1:]:
            unsent.extend(batch)
        return unsent, (batches[0] if batches else [])

    def in_flight(self, limit: int) -> dict[int, tuple[list[int], int]]:
        """For each engine with batches in flight: the first ``limit`` scheduler ids of
        its oldest batch (the one it is running) and how many tasks it has in flight."""
        return {
            engine_id: (batches[0][:limit], sum(len(b) for b in batches))
            for engine_id, batches in self._inflight.items()
            if batches
        }

    def resized(self) -> None:
        """The batch size changed: tell the scheduler which engines are busy now."""
        for engine_id in self._inflight:
            self._update_busy(engine_id)

    def flush(self) -> None:
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
                if not self._send(engine_id):
                    waiting.add(engine_id)
        finally:
            self._flushing = False
            self._dirty |= {e for e in waiting if self._outbox.get(e)}

    # -- sending ---------------------------------------------------------------------------

    def _send(self, engine_id: int) -> bool:
        """Send ``engine_id`` what it may take now; False if tasks are left for later."""
        queue = self._queues.get(engine_id)
        if queue is None:
            # The engine is leaving (its queue is closed before its departure is told):
            # its departure takes the tasks back.
            return not self._outbox.get(engine_id)
        sizer = self._sizer
        while True:
            outbox = self._outbox.get(engine_id)
            if not outbox:
                self._outbox.pop(engine_id, None)
                return True
            inflight = self._inflight.setdefault(engine_id, [])
            if len(inflight) >= sizer.batches_per_engine:
                return False  # the rest goes when a batch comes back
            batch = outbox[: sizer.size]
            del outbox[: sizer.size]
            now = self._now()
            records = []
            held: dict[int, HeldPayload] = {}  # large bodies, sent apart, by record index
            for sid in batch:
                spec = self._chains.sent(sid, now)
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
            d.addCallback(self._answered, engine_id, batch)
            d.addErrback(lambda f: self.log.failure("handling a batch's answer failed", failure=f))

    def _update_busy(self, engine_id: int) -> None:
        if len(self._inflight.get(engine_id, ())) >= self._sizer.batches_per_engine:
            self._scheduler.engine_busy(engine_id)
        else:
            self._scheduler.engine_free(engine_id)

    # -- answers ---------------------------------------------------------------------------

    def _in_flight(self, engine_id: int, batch: list[int]) -> bool:
        return any(b is batch for b in self._inflight.get(engine_id, ()))

    def _take(self, engine_id: int, batch: list[int]) -> None:
        """The batch is back (or lost): forget it, and let the engine take more."""
        inflight = self._inflight[engine_id]
        inflight[:] = [b for b in inflight if b is not batch]
        if not inflight:
            del self._inflight[engine_id]
        self._update_busy(engine_id)

    def _answered(self, outcome: Any, engine_id: int, batch: list[int]) -> None:
        if not self._in_flight(engine_id, batch):
            # The engine left meanwhile; its removal has dealt with the batch.
            close_results(outcome)
            return
        status, value = split_outcome(outcome)
        if status == "tasks" and len(outcome) == 2 and len(self._inflight[engine_id]) > 1:
            # The engine's queue sends the next batch once this callback returns: read
            # this answer after that, at the next reactor turn.
            self._clock.callLater(0, self._answered_later, outcome, engine_id, batch)
        elif status == "tasks":
            self._read(engine_id, batch, outcome)
        elif status == "error" and error_type(value) == "QueueCleared":
            # A MultiEngine clear_queue() dropped the batch before it started.
            self._take(engine_id, batch)
            self._dropped(engine_id, batch)
        elif status == "error" and error_type(value) == "EngineError":
            # Most likely the engine died: the connection fails its calls before it tells
            # of its departure. Decide at the next turn, once the registry knows.
            self._clock.callLater(0, self._lost, engine_id, batch, outcome)
        else:
            self._fail(engine_id, batch, batch_error(outcome))

    def _answered_later(self, outcome: tuple, engine_id: int, batch: list[int]) -> None:
        if self._in_flight(engine_id, batch):
            self._read(engine_id, batch, outcome)

    def _read(self, engine_id: int, batch: list[int], answer: tuple) -> None:
        try:
            entries = read_reply(answer)
        except MalformedRecords as exc:
            self._fail(engine_id, batch, malformed(exc))
        else:
            self._take(engine_id, batch)
            self._settled(engine_id, batch, entries)

    def _lost(self, engine_id: int, batch: list[int], outcome: Outcome) -> None:
        if self._in_flight(engine_id, batch):
            self._fail(engine_id, batch, outcome)

    def _fail(self, engine_id: int, batch: list[int], outcome: Outcome) -> None:
        self._take(engine_id, batch)
        self._failed(engine_id, batch, outcome)
