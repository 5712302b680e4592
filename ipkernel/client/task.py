"""The Task client: farm tasks out to a load-balanced, fault-tolerant pool of engines.

::

    from ipkernel import client
    tc = client.TaskClient()                  # reads <security-dir>/ipcontroller-tc.furl
    tids = [tc.run(client.StringTask("a = %i" % n, pull="a")) for n in range(100)]
    tc.barrier(tids)
    tc.get_task_result(tids[73])              # TaskResult[ID:73]:{'a': 73}

A task is a :class:`StringTask` (code; ``client.Task`` is the same class) or a
:class:`MapTask` (a function call), defined with :class:`TaskResult` in
:mod:`ipkernel.client.task_types` and importable from here. The client serializes the
task (its body and its ``depend`` function, separately) into frames that only the engine
decodes; the controller sees its ``retries`` and the shape of its recovery chain, nothing
else. Large bodies and results travel apart (:mod:`ipkernel.client.task_payloads`).

Submitting is cheap: the client reserves blocks of task ids from the controller, so
:meth:`TaskClient.run` knows the new task's id at once, and sends the tasks submitted in a
row together in one message, without waiting for each to be acknowledged. A task the
controller refuses (which a task this module built cannot be, short of a protocol
mismatch) makes :meth:`~TaskClient.get_task_result` and :meth:`~TaskClient.barrier` raise
the controller's error for that id.

:class:`AsyncTaskClient` is the same interface as Deferreds, for Twisted code;
:class:`TaskClient` is the blocking facade users call, forwarded through
:mod:`ipkernel.client.blocking`.
"""

from __future__ import annotations

import atexit
import math
import operator
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    fail,
    gatherResults,
    inlineCallbacks,
)
from twisted.spread import pb

from ipkernel import paths
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.multiengine import find_key_file, parallel_decorator
from ipkernel.client.partition import split
from ipkernel.client.results import PendingResult
from ipkernel.client.task_payloads import TaskPayloads
from ipkernel.client.task_types import (
    BaseTask,
    MapTask,
    StringTask,
    Task,
    TaskResult,
    task_to_wire,
)
from ipkernel.errors import (
    CompositeError,
    error_from_wire,
)
from ipkernel.frames import Serialized
from ipkernel.interfaces.records import TASK_SUBMIT
from ipkernel.security import KeyFile
from ipkernel.serialization import deserialize_failure, serialize_failure
from ipkernel.wire.connect import call_controller, login
from ipkernel.wire.transfer import transport_mode

__all__ = [
    "AsyncTaskClient",
    "MapTask",
    "StringTask",
    "Task",
    "TaskClient",
    "TaskMapper",
    "TaskResult",
]

#: Ids a client reserves at first, and at most, in one round trip.
FIRST_ID_BLOCK = 16
MAX_ID_BLOCK = 4096
#: Most tasks, and about the most bytes, sent in one ``run_tasks`` message.
SEND_MAX_TASKS = 2048
SEND_MAX_BYTES = 8 * 1024 * 1024
#: Most results asked for in one call (their packed answer must stay under the broker's
#: string limit).
RESULTS_PER_CALL = 20_000
#: How long, at most, a program's exit waits for the controller to take its last tasks.
AT_EXIT_TIMEOUT = 10.0
#: Chunks per engine a ``map`` aims at when no ``chunksize`` is given: enough for the
#: engines that finish first to take more, few enough that each chunk is worth a task.
CHUNKS_PER_ENGINE = 4


# -- map --------------------------------------------------------------------------------------


def _map_chunk(func: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list, list]:
    """Run on an engine for one chunk of a ``map``: apply ``func`` to every item.

    Returns ``(values, failures)``: a failed item's value is ``None`` and its failure,
    serialized, is in ``failures`` as ``(index in the chunk, frames)``, so that one item's
    exception neither hides the others' nor loses the chunk's work.
    """
    values: list[Any] = []
    failures: list[tuple[int, list[bytes]]] = []
    for index, item in enumerate(items):
        try:
            values.append(func(item))
        except Exception as exc:
            tb = exc.__traceback__
            # The first frame is this function's: it means nothing to the user.
            text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else tb))
            exc.remote_traceback = text  # type: ignore[attr-defined]
            values.append(None)
            failures.append((index, serialize_failure(exc, engine_id=None, method="map")))
    return values, failures


# -- the asynchronous client ------------------------------------------------------------------


class _IdPool:
    """Task ids reserved from the controller and not used yet (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._stop = 0
        self._block = FIRST_ID_BLOCK

    def take(self) -> int | None:
        with self._lock:
            if self._next < self._stop:
                self._next += 1
                return self._next - 1
            return None

    def want(self) -> int:
        """How many ids to reserve next: more each time, as a client that ran many tasks
        will likely run more."""
        with self._lock:
            count = self._block
            self._block = min(self._block * 2, MAX_ID_BLOCK)
            return count

    def add(self, first: int, count: int) -> None:
        with self._lock:
            self._next, self._stop = first, first + count


class AsyncTaskClient:
    """The Task interface as Deferreds; build one with :meth:`connect`.

    Every method returns a Deferred; call them from the reactor thread. :meth:`send` is
    the exception: any thread may call it.

    ``transport`` is ``'auto'`` (large task bodies and results through shared memory
    when the controller is on this host, streams otherwise) or ``'stream'`` (always the
    network); the default is ``$IPKERNEL_TRANSPORT``, else ``'auto'``.
    """

    def __init__(
        self,
        avatar: pb.RemoteReference,
        source: str = "the key file",
        reactor: Any = None,
        transport: str | None = None,
    ) -> None:
        self._avatar = avatar
        self.source = source
        self._payloads = TaskPayloads(transport)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._ids = _IdPool()
        self._lock = threading.Lock()
        self._outgoing: list[tuple[int, list, Deferred | None]] = []
        self._flush_scheduled = False
        self._unacked: set[Deferred] = set()
        # The batches with large bodies not answered yet.
        self._with_bodies: set[Deferred] = set()
        self._rejected: dict[int, BaseException] = {}

    @classmethod
    @inlineCallbacks
    def connect(
        cls,
        reactor: Any,
        keyfile: KeyFile,
        source: str = "the key file",
        transport: str | None = None,
    ):
        """Log in to the Task interface of ``keyfile``'s controller; fires with a client."""
        transport_mode(transport)  # a bad value fails before connecting
        avatar = yield login(reactor, keyfile, source=source)
        client = cls(avatar, source, reactor, transport)
        yield client._payloads.negotiate(client._call_remote)
        return client

    def disconnect(self) -> None:
        """Close the connection to the controller (tasks already sent keep running)."""
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    # Plumbing.

    def _remote(self, method: str, *args: Any, about: Sequence[int] = ()) -> Deferred:
        """Call the controller after the tasks submitted so far; fail instead with the
        controller's refusal of any task named in ``about``."""
        # Tasks submitted before this call must reach the controller before it. A batch
        # with large bodies is accepted only once they have arrived, after later calls
        # may have: such calls wait for its answer.
        self._flush()

        def call(_: object = None) -> Deferred:
            return self._refusal(about) or self._call_remote(method, *args)

        if not self._with_bodies:
            return call()
        return gatherResults(list(self._with_bodies), consumeErrors=True).addBoth(call)

    def _call_remote(self, method: str, *args: Any) -> Deferred:
        return call_controller(self._avatar, self.source, method, *args)

    def _refusal(self, taskids: Iterable[int]) -> Deferred | None:
        """A failed Deferred if the controller refused one of ``taskids``, else None."""
        for taskid in taskids:
            error = self._rejected.get(taskid)
            if error is not None:
                return fail(error)
        return None

    # Submitting.

    def reserve_ids(self, count: int) -> Deferred:
        """Fires with the first of ``count`` new task ids reserved for this client."""
        return self._remote("reserve_ids", count)

    @inlineCallbacks
    def next_id(self):
        """Fires with a task id reserved for this client and not used yet."""
        while True:
            taskid = self._ids.take()
            if taskid is not None:
                return taskid
            count = self._ids.want()
            first = yield self.reserve_ids(count)
            self._ids.add(first, count)

    def run(self, task: BaseTask) -> Deferred:
        """Submit ``task``; fires with its id once the controller has accepted it (and
        holds its body: until then a large body's arrays are read, and must not change).

        Fails at once with ``ValueError``/``TypeError`` for a bad option or a looping
        recovery chain, or ``SerializationError`` naming a value that cannot be pickled.
        """
        try:
            wire = task_to_wire(task)
        except Exception:
            return fail()
        return self.run_wire(wire)

    @inlineCallbacks
    def run_wire(self, wire: list):
        """Submit a task already in its wire form (:func:`task_to_wire`); as :meth:`run`."""
        taskid = yield self.next_id()
        d: Deferred = Deferred()
        self.send(taskid, wire, d)
        yield d
        return taskid

    def send(self, taskid: int, wire: list, acknowledged: Deferred | None = None) -> None:
        """Queue the task ``wire`` under the reserved id ``taskid`` (any thread).

        Tasks queued in a row leave together at the next reactor turn, or before the next
        call to the controller. ``acknowledged`` fires with ``None`` once the controller
        accepted the task, or errbacks with its refusal.
        """
        with self._lock:
            self._outgoing.append((taskid, wire, acknowledged))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._reactor.callFromThread(self._flush)

    def _flush(self) -> None:
        with self._lock:
            outgoing, self._outgoing = self._outgoing, []
            self._flush_scheduled = False
        start = 0
        while start < len(outgoing):
            stop, size = start, 0
            while stop < len(outgoing) and stop - start < SEND_MAX_TASKS and size < SEND_MAX_BYTES:
                size += _wire_size(outgoing[stop][1])
                stop += 1
            self._send_batch(outgoing[start:stop])
            start = stop

    def _send_batch(self, batch: list[tuple[int, list, Deferred | None]]) -> None:
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
            if payloads:
                args += (payloads,)
            d = self._call_remote("run_tasks", *args)
        except Exception as exc:
            d = Deferred()
            d.errback(exc)
        if payloads:
            # Once answered, the controller holds every body (or has refused it).
            d.addBoth(self._payloads.sent, list(payloads.values()))
            self._with_bodies.add(d)
            d.addBoth(lambda result: self._with_bodies.discard(d) or result)
        self._unacked.add(d)

        def answered(refused: list) -> None:
            for taskid, type_name, message in refused:
                self._rejected[taskid] = error_from_wire(str(type_name), str(message))
            for taskid, _, ack in batch:
                if ack is None:
                    continue
                error = self._rejected.get(taskid)
                if error is None:
                    ack.callback(None)
                else:
                    ack.errback(error)

        def failed(failure: Any) -> None:
            for taskid, _, ack in batch:
                self._rejected[taskid] = failure.value
                if ack is not None:
                    ack.errback(failure.value)

        d.addCallbacks(answered, failed)
        d.addBoth(lambda _: self._unacked.discard(d))

    def sync(self, timeout: float | None = None) -> Deferred:
        """Fires with ``None`` once every task sent so far has been answered (or after
        ``timeout`` seconds, if given, whatever happened)."""
        self._flush()
        pending = list(self._unacked)
        d = gatherResults(pending, consumeErrors=True)
        if timeout is not None:
            d.addTimeout(timeout, self._reactor)
        return d.addBoth(lambda _: None)

    # Results and control.

    def get_task_result(self, taskid: int, block: bool = False) -> Deferred:
        """Fires with the :class:`TaskResult` of ``taskid``, or ``None`` if it is not
        finished and ``block`` is false. ``IndexError`` for an unknown id."""
        taskid = _one_id(taskid)
        options = self._payloads.fetch_options()
        d = self._remote("get_task_result", taskid, bool(block), options, about=[taskid])
        d.addCallback(self._payloads.results)
        return d.addCallback(
            lambda records: None if records[0] is None else TaskResult.from_wire(records[0])
        )

    def get_task_results(self, taskids: Sequence[int], block: bool = False) -> Deferred:
        """Like :meth:`get_task_result` for several ids, in few round trips: a list."""
        taskids = _id_list(taskids)
        # Groups small enough that one answer stays well under the broker's size limit.
        options = self._payloads.fetch_options()
        step = RESULTS_PER_CALL
        groups = [taskids[i : i + step] for i in range(0, len(taskids), step)]
        calls = [
            self._remote("get_task_results", group, bool(block), options, about=group).addCallback(
                self._payloads.results
            )
            for group in groups
        ]
        d = gatherResults(calls, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, FirstError) else f)
        return d.addCallback(
            lambda answers: [
                None if r is None else TaskResult.from_wire(r) for rs in answers for r in rs
            ]
        )

    def barrier(self, taskids: int | Sequence[int]) -> Deferred:
        """Fires with ``None`` once every task named is finished (failed ones included)."""
        taskids = _id_list(taskids)
        return self._remote("barrier", taskids, about=taskids)

    def abort(self, taskid: int) -> Deferred:
        """Cancel a queued or running task; it finishes failed with ``TaskAborted``.

        A running task is interrupted on its engine, which stays usable. Fails with
        ``IndexError`` ("task ... already completed") for a finished task.
        """
        taskid = _one_id(taskid)
        return self._remote("abort", taskid, about=[taskid])

    def queue_status(self, verbose: bool = False) -> Deferred:
        """Fires with ``{'scheduled', 'pending', 'succeeded', 'failed'}``: counts, or with
        ``verbose=True`` lists of ids."""
        return self._remote("queue_status", bool(verbose)).addCallback(dict)

    def spin(self) -> Deferred:
        """Ask the controller for a scheduling pass (it runs one on every event anyway)."""
        return self._remote("spin")

    def clear(self) -> Deferred:
        """Make the controller forget the results of finished tasks."""
        return self._remote("clear")

    @inlineCallbacks
    def map(
        self,
        func: Callable[[Any], Any],
        seq: Iterable[Any],
        chunksize: int | None = None,
        retries: int = 1,
    ):
        """``[func(x) for x in seq]``, load balanced: one task per chunk of ``seq``.

        Chunks go to whichever engine is free. ``chunksize`` defaults to a size that
        gives each engine about :data:`CHUNKS_PER_ENGINE` chunks. ``retries`` is each
        chunk's (an exception in ``func`` is not retried: it is that item's failure).

        Fails with :class:`~ipkernel.errors.CompositeError` if any item failed: one
        ``(item index, 'map', exception)`` entry per failed item in ``elist``, and
        ``results`` holding every item's value or exception. Cancelling the Deferred
        aborts the chunks not finished.
        """
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        items = seq if hasattr(seq, "__len__") and hasattr(seq, "__getitem__") else list(seq)
        n = len(items)  # type: ignore[arg-type]
        if n == 0:
            return []
        if chunksize is None:
            engines = yield self._remote("engine_count")
            chunksize = math.ceil(n / (CHUNKS_PER_ENGINE * max(1, engines)))
        parts = split(items, math.ceil(n / chunksize))
        taskids = []
        for part in parts:
            taskid = yield self.next_id()
            self.send(taskid, task_to_wire(MapTask(_map_chunk, (func, part), retries=retries)))
            taskids.append(taskid)
        try:
            results = yield self.get_task_results(taskids, block=True)
        except CancelledError:
            for taskid in taskids:
                self._remote("abort", taskid).addErrback(lambda f: None)
            raise
        return _join_map(results, [len(part) for part in parts])


def _join_map(results: list[TaskResult], sizes: list[int]) -> list[Any]:
    values: list[Any] = []
    elist: list[tuple[int, str, BaseException]] = []
    for tr, size in zip(results, sizes, strict=True):
        base = len(values)
        if tr.failure is not None:
            values.extend([tr.failure] * size)
            elist.extend((base + i, "map", tr.failure) for i in range(size))
            continue
        chunk_values, failures = tr.result
        values.extend(chunk_values)
        for index, frames in failures:
            exc = deserialize_failure(frames)
            exc.engine_id = tr.engineid  # type: ignore[attr-defined]
            values[base + index] = exc
            elist.append((base + index, "map", exc))
    if elist:
        raise CompositeError(elist, values)
    return values


def _wire_size(wire: list[list]) -> int:
    """The bytes a task's wire form puts in the ``run_tasks`` message itself."""
    return sum(
        (0 if isinstance(body, Serialized) else sum(len(f) for f in body))
        + (sum(len(f) for f in depend) if depend else 0)
        for _, body, depend in wire
    )


def _one_id(taskid: object) -> int:
    try:
        return operator.index(taskid)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a task id is an int, not {taskid!r:.100}")


def _id_list(taskids: int | Iterable[int]) -> list[int]:
    """One id or several, as a list of ints (numpy integers welcome)."""
    if hasattr(taskids, "__index__"):
        return [operator.index(taskids)]  # type: ignore[arg-type]
    try:
        return [operator.index(taskid) for taskid in taskids]  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"expected a task id or a list of task ids, not {taskids!r:.100}")


# -- the synchronous client ---------------------------------------------------------------------


@forwarded(
    AsyncTaskClient,
    targeted=(),
    untargeted=(
        "get_task_result",
        "get_task_results",
        "barrier",
        "abort",
        "queue_status",
        "spin",
        "clear",
    ),
)
class TaskClient:
    """The Task client (blocking).

    ``TaskClient()`` reads ``<security-dir>/ipcontroller-tc.furl``; pass a path (or the
    key's URL) to use another. :meth:`run` returns the task's id at once, without a round
    trip to the controller for each task; the other methods block until answered.
    ``transport`` is as for :class:`AsyncTaskClient`.
    """

    def __init__(
        self,
        furl_or_file: str | Path | None = None,
        *,
        timeout: float = 10.0,
        transport: str | None = None,
    ) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.TC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncTaskClient = self._bridge.call(
            AsyncTaskClient.connect, self._bridge.reactor, keyfile, source, transport
        )
        self._pending: weakref.WeakSet[PendingResult] = weakref.WeakSet()
        # Tasks still on their way when the program ends must not be lost with the
        # reactor thread.
        ref = weakref.ref(self)
        self._atexit = lambda: _sync_at_exit(ref)
        atexit.register(self._atexit)

    def run(self, task: BaseTask) -> int:
        """Submit ``task``; return its id (an int) at once.

        Raises ``ValueError``/``TypeError`` for a bad option or a looping recovery chain,
        ``SerializationError`` naming a value that cannot be pickled. The task leaves
        with the next ones submitted in a row; a task whose body is large (arrays of
        :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more) is sent before this
        returns, so its arrays may change afterwards.
        """
        wire = task_to_wire(task)
        if any(isinstance(body, Serialized) for _, body, _ in wire):
            # A large body is read from the caller's arrays while it is sent: return
            # once the controller holds it, so they may change afterwards.
            return self._bridge.call(self._async.run_wire, wire)
        taskid = self._async._ids.take()
        if taskid is None:
            taskid = self._bridge.call(self._async.next_id)
        self._async.send(taskid, wire)
        return taskid

    def map(
        self,
        func: Callable[[Any], Any],
        seq: Iterable[Any],
        chunksize: int | None = None,
        retries: int = 1,
        block: bool = True,
    ) -> Any:
        """``[func(x) for x in seq]``, load balanced over the engines (see
        :meth:`AsyncTaskClient.map`). With ``block=False`` return a
        :class:`~ipkernel.client.results.PendingResult`."""
        if block:
            return self._bridge.call(self._async.map, func, seq, chunksize, retries)
        pending = PendingResult(
            self._bridge.submit(self._async.map, func, seq, chunksize, retries), self
        )
        self._pending.add(pending)
        return pending

    def mapper(
        self, chunksize: int | None = None, retries: int = 1, block: bool = True
    ) -> TaskMapper:
        """An object whose ``map`` uses these settings."""
        return TaskMapper(self, chunksize, retries, block)

    def parallel(
        self, chunksize: int | None = None, retries: int = 1, block: bool = True
    ) -> Callable[[Callable[[Any], Any]], Callable[[Iterable[Any]], Any]]:
        """Decorator: ``@tc.parallel()`` turns ``f`` into ``seq -> tc.map(f, seq)``."""
        return parallel_decorator(self.mapper(chunksize, retries, block))

    def sync(self) -> None:
        """Wait until the controller has answered every task submitted so far."""
        self._bridge.call(self._async.sync)

    def close(self) -> None:
        """Send what is still queued, then disconnect from the controller."""
        try:
            self.sync()
        finally:
            self._bridge.reactor.callFromThread(self._async.disconnect)
            atexit.unregister(self._atexit)


def _sync_at_exit(ref: weakref.ref) -> None:
    client = ref()
    if client is None:
        return
    try:
        client._bridge.call(client._async.sync, AT_EXIT_TIMEOUT)
    except Exception:
        pass  # the process is ending: nothing more can be done about it


class TaskMapper:
    """``map`` with fixed ``chunksize``, ``retries`` and ``block`` (see ``mapper()``)."""

    def __init__(
        self, client: TaskClient, chunksize: int | None, retries: int, block: bool
    ) -> None:
        self.client = client
        self.chunksize = chunksize
        self.retries = retries
        self.block = block

    def map(self, func: Callable[[Any], Any], seq: Iterable[Any]) -> Any:
        """``[func(x) for x in seq]``, load balanced."""
        return self.client.map(func, seq, self.chunksize, self.retries, self.block)
