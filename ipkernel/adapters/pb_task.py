"""The Task interface over PB: validate, forward, translate errors.

One :class:`TaskAdapter` per logged-in Task client. It holds no scheduling logic: each
remote method checks its arguments' types and forwards to the task controller
(:class:`~ipkernel.controller.tasks.TaskController`); the controller's errors
(``IndexError`` for an unknown or finished task, ``ValueError`` for a malformed one) cross
as :class:`~ipkernel.wire.errors.WireError`.

Per-client state is the id blocks the client reserved: a client submits tasks under ids
it reserved (``reserve_ids``), so it knows each task's id without waiting for an answer
and can send many tasks in one message (``run_tasks``); it cannot submit under an id it
did not reserve.

Batches of tasks and of results cross as packed messages (:mod:`ipkernel.interfaces.records`),
not as nested lists, which PB would encode element by element. Large task bodies and
results ride along as payloads (``{record index: payload}``, the record's frames
``None``): the controller keeps them (:mod:`ipkernel.wire.kept`), a body once it has
arrived whole, before the task is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.spread import pb

from ipkernel import shm
from ipkernel.interfaces.records import TASK_SUBMIT, MalformedRecords, pack_results
from ipkernel.wire import kept
from ipkernel.wire.errors import WireError, to_wire

#: Most ids one ``reserve_ids`` call may ask for.
MAX_RESERVE = 1 << 16
#: Most task ids one call may name (``run_tasks``, ``barrier``, ``get_task_results``).
MAX_IDS = 1 << 20


def _forward(method: Callable[..., Any], *args: Any) -> Deferred:
    return maybeDeferred(method, *args).addErrback(to_wire)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError("TypeError", f"{what} must be an int, not {type(value).__name__}")
    return value


def _ids(value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_IDS:
        raise WireError("TypeError", "task ids must be an int or a list of ints")
    return [_int(v, "a task id") for v in value]


class TaskAdapter(pb.Referenceable):
    """A Task client's avatar over one :class:`~ipkernel.controller.tasks.TaskController`."""

    def __init__(self, tasks: Any) -> None:
        self._tasks = tasks
        self._reserved: list[range] = []
        # Whether this client and the controller can open each other's segments.
        self._share = False

    def _owns(self, taskid: object) -> bool:
        return (
            isinstance(taskid, int)
            and not isinstance(taskid, bool)
            and any(taskid in block for block in self._reserved)
        )

    def remote_reserve_ids(self, count: object) -> int:
        """Reserve ``count`` consecutive new ids for this client; return the first."""
        count = _int(count, "count")
        if not 1 <= count <= MAX_RESERVE:
            raise WireError("ValueError", f"count must be between 1 and {MAX_RESERVE}")
        first = self._tasks.reserve_ids(count)
        last = self._reserved[-1] if self._reserved else None
        if last is not None and last.stop == first:
            self._reserved[-1] = range(last.start, first + count)
        else:
            self._reserved.append(range(first, first + count))
        return first

    def remote_reclaim_ids(self, ranges: object) -> None:
        """Take back ids this client reserved before the controller restarted:
        ``[[first, count], ...]``, each handed out by this controller's task store.
        ``ValueError`` if one never was (the controller restarted without ``--db``)."""
        if not isinstance(ranges, (list, tuple)) or len(ranges) > MAX_RESERVE:
            raise WireError("TypeError", "reclaim_ids needs a list of [first, count]")
        claimed = []
        for entry in ranges:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise WireError("TypeError", "reclaim_ids needs a list of [first, count]")
            first, count = _int(entry[0], "first"), _int(entry[1], "count")
            try:
                self._tasks.reclaim_ids(first, count)
            except ValueError as exc:
                raise WireError("ValueError", str(exc)) from None
            claimed.append(range(first, first + count))
        self._reserved.extend(claimed)

    def remote_shm_probe(self, probe: object) -> list | None:
        """Given the client's shared-memory probe, answer with the controller's if the
        controller can open the client's segments (same host and user), else ``None``."""
        mine = shm.local_probe()
        self._share = mine is not None and shm.same_host(probe)
        return mine.to_wire() if self._share and mine is not None else None

    def remote_run_tasks(
        self, message: object, payloads: object = None, waited: object = False
    ) -> Deferred:
        """Submit the tasks packed in ``message`` (:data:`~ipkernel.interfaces.records.TASK_SUBMIT`)
        under ids this client reserved; ``payloads`` maps record indexes to the large
        bodies sent apart (those records' bodies are ``None``); ``waited`` says that the
        client waits for this answer (a task store on disk then writes the tasks at once
        rather than with its next batch).

        Fires, once every payload is held here and the task store keeps the tasks, with
        ``[[taskid, type_name, message], ...]`` for the tasks refused (usually none: a
        body that did not arrive refuses its task with ``TransferError``); the others are
        accepted. A message that cannot be unpacked is refused as a whole (``TypeError``).
        """
        try:
            records = TASK_SUBMIT.unpack(message)
        except MalformedRecords as exc:
            raise WireError("TypeError", f"run_tasks: {exc}") from None
        if not isinstance(waited, bool):
            raise WireError("TypeError", "run_tasks: waited must be True or False")
        if payloads is None:
            return self._submit(records, {}, waited)
        if not isinstance(payloads, dict) or not all(
            isinstance(i, int) and 0 <= i < len(records) and records[i][1][0] is None
            for i in payloads
        ):
            # The payloads are dropped unkept: their streams are aborted.
            raise WireError("TypeError", "run_tasks: payloads must name records without a body")
        indexes = list(payloads)
        keeps = [kept.keep(payloads[i]) for i in indexes]
        d = DeferredList(keeps, consumeErrors=True)
        return d.addCallback(
            lambda results: self._submit(records, dict(zip(indexes, results, strict=True)), True)
        )

    def _submit(self, records: list, held: dict[int, tuple[bool, Any]], waited: bool) -> Deferred:
        """Submit unpacked records; ``held`` maps record indexes to ``(ok, kept payload
        or failure)``, the outcome of keeping each large body. Fires with the refusals
        once the task store keeps the tasks accepted (at once if ``waited``)."""
        tasks: list[tuple[int, list]] = []
        failed: dict[int, str] = {}  # task id -> why a body of its chain is missing
        for index, ((taskid, retries), (body, depend)) in enumerate(records):
            if index in held:
                ok, value = held[index]
                if ok:
                    body = value
                else:
                    owner = taskid if taskid != -1 else (tasks[-1][0] if tasks else taskid)
                    failed[owner] = f"a task's body did not arrive: {value.getErrorMessage()}"
            if taskid == -1:
                if not tasks:
                    raise WireError("TypeError", "run_tasks: a recovery task with no task")
                tasks[-1][1].append([retries, body, depend])
            else:
                tasks.append((taskid, [[retries, body, depend]]))
        refused: list[list] = []
        accepted: list[tuple[int, list]] = []
        for taskid, chain in tasks:
            if taskid in failed:
                refused.append([taskid, "TransferError", failed[taskid]])
                _close_chain(chain)
            elif self._owns(taskid):
                accepted.append((taskid, chain))
            else:
                refused.append(
                    [taskid, "ValueError", f"task id {taskid} was not reserved by this client"]
                )
                _close_chain(chain)
        for (taskid, chain), error in zip(accepted, self._tasks.run_many(accepted), strict=True):
            if error is not None:
                refused.append([taskid, type(error).__name__, str(error)])
                _close_chain(chain)
        # Accepted only once kept: a controller restarted after a crash still has them
        # (the client sends again what it was not told about). A client that sent
        # large bodies, or says it waits, waits for the answer: keep them at once.
        return self._tasks.committed(waited).addCallback(lambda _: refused)

    def remote_get_task_result(
        self, taskid: object, block: object = False, options: object = None
    ) -> Deferred:
        """``[packed records, payloads]`` for ``taskid``: its record (``None`` if not
        finished and not ``block``), as :meth:`remote_get_task_results`."""
        d = _forward(self._tasks.get_task_result, _int(taskid, "taskid"), bool(block))
        return d.addCallback(lambda record: self._pack([record], options))

    def remote_get_task_results(
        self, taskids: object, block: object = False, options: object = None
    ) -> Deferred:
        """``[packed records, {index: payload}]`` for ``taskids``, in order: a large
        result is sent apart, through shared memory if ``options`` has ``shm`` and this
        client can map the controller's segments, streamed otherwise."""
        d = _forward(self._tasks.get_task_results, _ids(taskids), bool(block))
        return d.addCallback(self._pack, options)

    def _pack(self, records: list, options: object) -> list:
        share = self._share and isinstance(options, dict) and bool(options.get("shm"))
        payloads: dict[int, Any] = {}
        wire = []
        for index, record in enumerate(records):
            value = None if record is None else record.get("value")
            if isinstance(value, kept.KeptPayload):
                payloads[index] = value.sendable(share)
                record = dict(record, value=None)
            wire.append(record)
        return [pack_results(wire), payloads]

    def remote_barrier(self, taskids: object) -> Deferred:
        """Fire with ``None`` once every task named is finished."""
        return _forward(self._tasks.barrier, _ids(taskids))

    def remote_abort(self, taskid: object) -> Deferred:
        """Cancel a queued or running task (``IndexError`` once it has finished)."""
        return _forward(self._tasks.abort, _int(taskid, "taskid"))

    def remote_queue_status(self, verbose: object = False) -> Deferred:
        """Counts (or ids) of tasks by state."""
        return _forward(self._tasks.queue_status, bool(verbose))

    def remote_spin(self) -> Deferred:
        """Run a scheduling pass."""
        return _forward(self._tasks.spin)

    def remote_clear(self) -> Deferred:
        """Forget finished tasks' records."""
        return _forward(self._tasks.clear)

    def remote_engine_count(self) -> int:
        """How many engines take tasks now."""
        return self._tasks.engine_count()


def _close_chain(chain: list) -> None:
    """Free the kept bodies of a chain that was not accepted."""
    for _, body, _ in chain:
        if isinstance(body, kept.KeptPayload):
            body.close()


def task_avatar_factory(tasks: Any) -> Callable[[pb.Broker], TaskAdapter]:
    """The gate's avatar factory for the Task role (one adapter per connection)."""

    def make(broker: pb.Broker) -> TaskAdapter:
        return TaskAdapter(tasks)

    return make
