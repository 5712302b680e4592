"""Submitting tasks in batches: the tasks a client submits in a row leave together.

:class:`TaskBatches` queues tasks (from any thread) and sends them at the next reactor
turn, or before the next call to the controller (for a caller outside the reactor
thread, :meth:`TaskBatches.send_within`: at once while nothing is on its way, else with
the next call or a timer that wakes no thread), in ``run_tasks`` messages of at most
:data:`SEND_MAX_TASKS` tasks and about :data:`SEND_MAX_BYTES` bytes, without waiting for
each to be acknowledged. It remembers the tasks the controller refused, so that a later
call naming one fails with the controller's error, and it holds calls back while a batch
whose large bodies are still arriving has not been answered. A batch whose answer is lost
with the connection (:class:`~ipkernel.errors.ControllerRestarted`) is kept, to be sent
again, under the same ids, once the client has logged in again (:meth:`TaskBatches.resend_lost`):
the controller has it only if it committed it before it went away, and then refuses the
copy as a task already in use, which counts as accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults

from ipkernel.client.task_payloads import TaskPayloads
from ipkernel.errors import ControllerRestarted, error_from_wire
from ipkernel.frames import Serialized
from ipkernel.interfaces.records import TASK_SUBMIT
from ipkernel.wire.lazy_wake import LazyWake

__all__ = ["SEND_MAX_BYTES", "SEND_MAX_TASKS", "TaskBatches", "carries_payloads"]

#: Most tasks, and about the most bytes, sent in one ``run_tasks`` message.
SEND_MAX_TASKS = 2048
SEND_MAX_BYTES = 8 * 1024 * 1024

#: A queued task: its id, its wire form, and the Deferred to fire once it is answered.
Queued = tuple[int, list, Deferred | None]


class TaskBatches:
    """The tasks one client submitted, on their way to the controller.

    :param call_remote: ``call_remote(method, *args)`` calls the controller (a Deferred).
    :param payloads: the client's payload policy, which packs large bodies.
    :param reactor: gives ``callFromThread`` (and ``callLater``, for :meth:`sync`'s
        timeout).
    :param on_lost: called when a batch's answer was lost with the connection (the
        client then logs in again and calls :meth:`resend_lost`, or :meth:`fail_lost`).
    """

    def __init__(
        self,
        call_remote: Callable[..., Deferred],
        payloads: TaskPayloads,
        reactor: Any,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._call_remote = call_remote
        self._payloads = payloads
        self._reactor = reactor
        self._lock = threading.Lock()
        self._outgoing: list[Queued] = []
        self._flush_scheduled = False
        self._unacked: set[Deferred] = set()
        # The batches with large bodies not answered yet.
        self._with_bodies: set[Deferred] = set()
        self._rejected: dict[int, BaseException] = {}
        self._on_lost = on_lost
        # Batches whose answer was lost with the connection, with their Deferreds.
        self._lost: list[tuple[list[Queued], Deferred]] = []
        # The timer that sends queued tasks when no call does, and how to send at once
        # (see send_within).
        self._lazy: LazyWake | None = None
        self._run_now: Callable[[Callable[[], Any]], None] | None = None

    def send_within(self, delay: float, run_now: Callable[[Callable[[], Any]], None]) -> None:
        """Send from a thread other than the reactor's without waking it (reactor code).

        From now on, a task queued while no batch is on its way (none sent and not
        answered yet) leaves at once, through ``run_now(flush)`` (which sends it from the
        calling thread when the reactor is idle: ``ReactorHandoff.call_from_thread``),
        so the controller has it as soon as can be. Tasks queued while one is on its way
        wait to leave together, with the next call to the controller or ``delay``
        seconds after the first of them at the latest, through a timer that wakes no
        thread (:mod:`ipkernel.wire.lazy_wake`). Until :meth:`close`.
        """
        if self._lazy is None:
            self._lazy = LazyWake(self._reactor, self.flush, delay)
            self._run_now = run_now

    def close(self) -> None:
        """Stop the timer of :meth:`send_within` (reactor code); tasks queued later
        leave at the next reactor turn again."""
        lazy, self._lazy = self._lazy, None
        self._run_now = None
        if lazy is not None:
            lazy.close()

    def send(self, taskid: int, wire: list, acknowledged: Deferred | None = None) -> None:
        """Queue the task ``wire`` under the reserved id ``taskid`` (any thread).

        Tasks queued in a row leave together at the next reactor turn (or as
        :meth:`send_within` says), or before the next call to the controller.
        ``acknowledged`` fires with ``None`` once the controller accepted the task, or
        errbacks with its refusal.
        """
        with self._lock:
            self._outgoing.append((taskid, wire, acknowledged))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
            run_now = self._run_now
            if self._lazy is not None and self._unacked:
                self._lazy.arm()  # under the lock: a flush's disarm cannot overtake it
                return
        if run_now is not None:
            run_now(self.flush)
        else:
            self._reactor.callFromThread(self.flush)

    def flush(self) -> None:
        """Send every queued task now, in as few messages as the limits allow."""
        with self._lock:
            outgoing, self._outgoing = self._outgoing, []
            if self._flush_scheduled and self._lazy is not None:
                self._lazy.disarm()
            self._flush_scheduled = False
        start = 0
        while start < len(outgoing):
            stop, size = start, 0
            while stop < len(outgoing) and stop - start < SEND_MAX_TASKS and size < SEND_MAX_BYTES:
                size += _wire_size(outgoing[stop][1])
                stop += 1
            self._send_batch(outgoing[start:stop])
            start = stop

    def after_sent(self, call: Callable[[], Deferred]) -> Deferred:
        """Send the queued tasks, then ``call()``; returns its Deferred.

        Tasks submitted before a call must reach the controller before it. A batch with
        large bodies is accepted only once they have arrived, after later calls may have:
        while one is not answered, ``call`` waits for it.
        """
        self.flush()
        if not self._with_bodies:
            return call()
        return gatherResults(list(self._with_bodies), consumeErrors=True).addBoth(lambda _: call())

    def refusal(self, taskids: Iterable[int]) -> Deferred | None:
        """A failed Deferred if the controller refused one of ``taskids``, else None."""
        for taskid in taskids:
            error = self._rejected.get(taskid)
            if error is not None:
                return fail(error)
        return None

    def sync(self, timeout: float | None = None) -> Deferred:
        """Fires with ``None`` once every task sent so far has been answered (or after
        ``timeout`` seconds, if given, whatever happened)."""
        self.flush()
        d = gatherResults(list(self._unacked), consumeErrors=True)
        if timeout is not None:
            d.addTimeout(timeout, self._reactor)
        return d.addBoth(lambda _: None)

    def unanswered(self) -> bool:
        """Whether some batch sent has not been answered yet."""
        return bool(self._unacked)

    def lost_ids(self) -> list[int]:
        """The ids of the tasks whose batch was lost with the connection."""
        return [taskid for batch, _ in self._lost for taskid, _, _ in batch]

    def resend_lost(self) -> None:
        """Send again the batches lost with the connection (after a new login)."""
        lost, self._lost = self._lost, []
        for batch, done in lost:
            self._send_batch(batch, done)

    def fail_lost(self, error: BaseException) -> None:
        """Give up the batches lost with the connection: their tasks fail with ``error``."""
        lost, self._lost = self._lost, []
        for batch, done in lost:
            for taskid, _, ack in batch:
                self._rejected[taskid] = error
                if ack is not None:
                    ack.errback(error)
            done.callback(None)

    def _send_batch(self, batch: list[Queued], done: Deferred | None = None) -> None:
        """Send ``batch``; ``done`` (made here for a first send) fires once it is answered
        for good, which may be after a resend."""
        resend = done is not None
        if done is None:
            done = Deferred()
            self._unacked.add(done)
            done.addBoth(lambda result: self._unacked.discard(done) or result)
        records = []
        # Large bodies travel apart: record index -> payload (the record's body is None).
        payloads: dict[int, Any] = {}
        for taskid, wire, _ in batch:
            for n, (retries, body, depend) in enumerate(wire):
                if isinstance(body, Serialized):
                    payloads[len(records)] = self._payloads.pack(body)
                    body = None
                records.append(((taskid if n == 0 else -1, retries), (body, depend)))
        try:
            args: tuple = (TASK_SUBMIT.pack(records),)
            if any(ack is not None for _, _, ack in batch):
                # Someone waits for the acceptance: a controller with --db, which may
                # put off writing new tasks for a moment, writes these at once.
                args += (payloads or None, True)
            elif payloads:
                args += (payloads,)
            d = self._call_remote("run_tasks", *args)
        except Exception as exc:
            d = Deferred()
            d.errback(exc)
        if payloads:
            # Once answered, the controller holds every body (or has refused it).
            d.addBoth(self._payloads.sent, list(payloads.values()))
            if done not in self._with_bodies:
                self._with_bodies.add(done)
                done.addBoth(lambda result: self._with_bodies.discard(done) or result)

        def answered(refused: list) -> None:
            for taskid, type_name, message in refused:
                if resend and type_name == "ValueError" and "already in use" in str(message):
                    continue  # the controller had kept it before it went away
                self._rejected[taskid] = error_from_wire(str(type_name), str(message))
            for taskid, _, ack in batch:
                if ack is None:
                    continue
                error = self._rejected.get(taskid)
                if error is None:
                    ack.callback(None)
                else:
                    ack.errback(error)
            done.callback(None)

        def failed(failure: Any) -> None:
            if failure.check(ControllerRestarted) and self._on_lost is not None:
                self._lost.append((batch, done))
                self._on_lost()
                return
            for taskid, _, ack in batch:
                self._rejected[taskid] = failure.value
                if ack is not None:
                    ack.errback(failure.value)
            done.callback(None)

        d.addCallbacks(answered, failed)


def carries_payloads(wire: list[list]) -> bool:
    """Whether a task's wire form has a large body, which travels apart from its batch."""
    return any(isinstance(body, Serialized) for _, body, _ in wire)


def _wire_size(wire: list[list]) -> int:
    """The bytes a task's wire form puts in the ``run_tasks`` message itself."""
    return sum(
        (0 if isinstance(body, Serialized) else sum(len(f) for f in body))
        + (sum(len(f) for f in depend) if depend else 0)
        for _, body, depend in wire
    )
