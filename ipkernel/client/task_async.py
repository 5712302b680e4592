"""The asynchronous Task client: the Task interface as Deferreds, for Twisted code.

::

    tc = yield AsyncTaskClient.connect(reactor, read_key_file(path))
    taskid = yield tc.run(StringTask("a = 2 ** 10", pull="a"))
    tr = yield tc.get_task_result(taskid, block=True)

The client serializes each task (:mod:`ipkernel.client.task_types`) into frames that only
the engine decodes; the controller sees its ``retries`` and the shape of its recovery
chain, nothing else. Submitting is cheap: ids come from blocks reserved ahead
(:mod:`ipkernel.client.task_ids`) and tasks leave in batches
(:mod:`ipkernel.client.task_batches`); large bodies and results travel apart
(:mod:`ipkernel.client.task_payloads`). A task the controller refuses (which a task built
here cannot be, short of a protocol mismatch) makes :meth:`~AsyncTaskClient.get_task_result`
and :meth:`~AsyncTaskClient.barrier` fail with the controller's error for that id.

A controller restarted with ``--reuse-keys --db`` keeps every task: the client logs in
again by itself (waiting up to :attr:`~AsyncTaskClient.reconnect_timeout` seconds), claims
the ids it reserved before, sends again the tasks whose acceptance it had not heard of,
and repeats the calls that were in flight (a blocking ``get_task_result`` or ``barrier``
goes on waiting).

The blocking :class:`~ipkernel.client.task_blocking.TaskClient` forwards to this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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

from ipkernel.client.connection import ControllerConnection
from ipkernel.client.partition import split
from ipkernel.client.progress import TaskCounter, task_groups
from ipkernel.client.task_batches import TaskBatches
from ipkernel.client.task_ids import IdPool, as_ranges, id_list, one_id
from ipkernel.client.task_map import chunk_count, join_map, map_chunk
from ipkernel.client.task_payloads import TaskPayloads
from ipkernel.client.task_types import BaseTask, MapTask, TaskResult, task_to_wire
from ipkernel.errors import ControllerRestarted, IPKernelError
from ipkernel.security import KeyFile
from ipkernel.security.roles import TASK
from ipkernel.wire.connect import login
from ipkernel.wire.transfer import transport_mode

__all__ = ["RESULTS_PER_CALL", "AsyncTaskClient"]

#: Most results asked for in one call (their packed answer must stay under the broker's
#: string limit).
RESULTS_PER_CALL = 20_000


class AsyncTaskClient(ControllerConnection):
    """The Task interface as Deferreds; build one with :meth:`connect`.

    Every method returns a Deferred; call them from the thread of ``reactor``, the
    reactor its connection runs in. :meth:`take_id` and :meth:`send` are the exceptions:
    any thread may call them.

    ``transport`` is ``'auto'`` (large task bodies and results through shared memory
    when the controller is on this host, streams otherwise) or ``'stream'`` or
    ``'relay'`` (always the network: task payloads always go through the controller);
    the default is ``$IPKERNEL_TRANSPORT``, else ``'auto'``.
    """

    #: Seconds a call waits for a controller that went away to be back (see the module
    #: docstring) before it fails with :class:`~ipkernel.errors.ControllerUnreachable`.
    reconnect_timeout = 30.0

    def __init__(
        self,
        avatar: pb.RemoteReference,
        reactor: Any,
        source: str = "the key file",
        transport: str | None = None,
    ) -> None:
        super().__init__(avatar, source)
        self._payloads = TaskPayloads(transport)
        self._ids = IdPool()
        self._batches = TaskBatches(self._remote, self._payloads, reactor, self._batch_lost)

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
        avatar = yield login(reactor, keyfile, TASK, source=source)
        client = cls(avatar, reactor, source, transport)
        yield client._payloads.negotiate(client._remote)
        return client

    def close(self) -> Deferred:
        """Wait until every task sent so far has been answered, then disconnect; fires
        with ``None``."""
        return self.sync().addBoth(lambda _: self.disconnect())

    def disconnect(self) -> None:
        """Close the connection to the controller (work already sent runs on)."""
        self._batches.close()
        super().disconnect()

    def send_within(self, delay: float, run_now: Callable[[Callable[[], Any]], None]) -> None:
        """For a caller outside the reactor thread (the blocking client): a task
        :meth:`send` queues while no batch is on its way leaves at once through
        ``run_now`` (the reactor handoff's ``call_from_thread``), later ones with the
        next call or ``delay`` seconds after the first of them, without waking the
        reactor thread (see :meth:`TaskBatches.send_within
        <ipkernel.client.task_batches.TaskBatches.send_within>`). Reactor code."""
        self._batches.send_within(delay, run_now)

    def _call(self, method: str, *args: Any, about: Sequence[int] = ()) -> Deferred:
        """Call the controller after the tasks submitted so far; fail instead with the
        controller's refusal of any task named in ``about``. A call in flight when the
        connection is lost is made again once the client has logged in again."""

        def attempt() -> Deferred:
            refused = self._batches.refusal(about)
            if refused is not None:
                return refused
            d = self._remote(method, *args)
            return d.addErrback(self._again_after_restart, method, args, about)

        return self._batches.after_sent(attempt)

    def _again_after_restart(
        self, failure: Any, method: str, args: tuple, about: Sequence[int]
    ) -> Any:
        if not failure.check(ControllerRestarted) or self.closed or self._relogin is None:
            return failure
        return self._call(method, *args, about=about)

    def _batch_lost(self) -> None:
        """A batch of tasks was lost with the connection: log in again to send it again
        (its tasks fail if the controller does not come back)."""
        self.reconnect().addErrback(self._lost_for_good)

    def _lost_for_good(self, failure: Any) -> None:
        if failure.check(ControllerRestarted) and not self.closed:
            self._batch_lost()  # lost again while logging in: try again
        else:
            self._batches.fail_lost(failure.value)

    @inlineCallbacks
    def _reconnected(self):
        """Logged in again: probe shared memory anew, claim the ids reserved before and
        send again the batches lost with the connection."""
        yield self._payloads.negotiate(self._remote)
        ranges = as_ranges([*self._ids.unused(), *self._batches.lost_ids()])
        if ranges:
            try:
                yield self._remote("reclaim_ids", ranges)
            except ValueError as exc:
                # A controller without its task store (--db): it knows none of them.
                self._ids.drop()
                self._batches.fail_lost(
                    IPKernelError(
                        "the controller restarted without the task store that had this "
                        f"task (start it with --db to keep tasks across restarts): {exc}"
                    )
                )
        self._batches.resend_lost()

    # Submitting.

    def reserve_ids(self, count: int) -> Deferred:
        """Fires with the first of ``count`` new task ids reserved for this client."""
        return self._call("reserve_ids", count)

    def take_id(self) -> int | None:
        """A task id reserved for this client and not used yet, or ``None`` when none is
        left (then :meth:`next_id` reserves more). Any thread; no round trip."""
        return self._ids.take()

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

        Tasks queued in a row leave together at the next reactor turn (or as
        :meth:`send_within` says), or before the next call to the controller.
        ``acknowledged`` fires with ``None`` once the controller
        accepted the task, or errbacks with its refusal.
        """
        self._batches.send(taskid, wire, acknowledged)

    def sync(self, timeout: float | None = None) -> Deferred:
        """Fires with ``None`` once every task sent so far has been answered (or after
        ``timeout`` seconds, if given, whatever happened)."""
        self._batches.flush()
        if self._batches.unanswered():
            # A controller with --db answers a batch once it has written its tasks, which
            # it may put off for a moment; a barrier on nothing has it write them now.
            self._call("barrier", []).addErrback(lambda f: None)
        return self._batches.sync(timeout)

    # Results and control.

    def get_task_result(self, taskid: int, block: bool = False) -> Deferred:
        """Fires with the :class:`TaskResult` of ``taskid``, or ``None`` if it is not
        finished and ``block`` is false. ``IndexError`` for an unknown id."""
        taskid = one_id(taskid)
        options = self._payloads.fetch_options()
        d = self._call("get_task_result", taskid, bool(block), options, about=[taskid])
        d.addCallback(self._payloads.results)
        return d.addCallback(
            lambda records: None if records[0] is None else TaskResult.from_wire(records[0])
        )

    def get_task_results(
        self, taskids: Sequence[int], block: bool = False, count: TaskCounter | None = None
    ) -> Deferred:
        """Like :meth:`get_task_result` for several ids, in few round trips: a list.

        A blocking wait keeps ``count`` (if given) of the tasks finished, for a progress
        bar (:mod:`ipkernel.client.progress`).
        """
        taskids = id_list(taskids)
        options = self._payloads.fetch_options()

        def fetch(group: list[int]) -> Deferred:
            d = self._call("get_task_results", group, bool(block), options, about=group)
            return d.addCallback(self._payloads.results)

        # Groups small enough that one answer stays well under the broker's size limit.
        calls = self._waits(taskids, fetch, count if block else None, RESULTS_PER_CALL)
        return _gather(calls).addCallback(
            lambda answers: [
                None if r is None else TaskResult.from_wire(r) for rs in answers for r in rs
            ]
        )

    def barrier(self, taskids: int | Sequence[int], count: TaskCounter | None = None) -> Deferred:
        """Fires with ``None`` once every task named is finished (failed ones included);
        keeps ``count`` (if given) of the tasks finished, for a progress bar."""
        taskids = id_list(taskids)
        return _gather(self._waits(taskids, self._barrier, count)).addCallback(lambda _: None)

    def _barrier(self, taskids: list[int]) -> Deferred:
        return self._call("barrier", taskids, about=taskids)

    def _waits(
        self,
        taskids: list[int],
        call: Callable[[list[int]], Deferred],
        count: TaskCounter | None,
        most: int | None = None,
    ) -> list[Deferred]:
        """``call(group)`` for groups of at most ``most`` of ``taskids``, counted by
        ``count`` if given (which then chooses the groups)."""
        if count is None:
            return [call(group) for group in task_groups(taskids, most)]
        return count.wait(taskids, call, self._barrier, most)

    def abort(self, taskid: int) -> Deferred:
        """Cancel a queued or running task; it finishes failed with ``TaskAborted``.

        A running task is interrupted on its engine, which stays usable. Fails with
        ``IndexError`` ("task ... already completed") for a finished task.
        """
        taskid = one_id(taskid)
        return self._call("abort", taskid, about=[taskid])

    def queue_status(self, verbose: bool = False) -> Deferred:
        """Fires with ``{'scheduled', 'pending', 'succeeded', 'failed'}``: counts, or with
        ``verbose=True`` lists of ids."""
        return self._call("queue_status", bool(verbose)).addCallback(dict)

    def spin(self) -> Deferred:
        """Ask the controller for a scheduling pass (it runs one on every event anyway)."""
        return self._call("spin")

    def clear(self) -> Deferred:
        """Make the controller forget the results of finished tasks."""
        return self._call("clear")

    @inlineCallbacks
    def map(
        self,
        func: Callable[[Any], Any],
        seq: Iterable[Any],
        chunksize: int | None = None,
        retries: int = 1,
        count: TaskCounter | None = None,
    ):
        """``[func(x) for x in seq]``, load balanced: one task per chunk of ``seq``.

        Chunks go to whichever engine is free. ``chunksize`` defaults to a size that
        gives each engine about :data:`~ipkernel.client.task_map.CHUNKS_PER_ENGINE`
        chunks. ``retries`` is each chunk's (an exception in ``func`` is not retried: it
        is that item's failure). With no engine registered the chunks wait for one, as
        every task does: this never fails with ``NoEnginesRegistered``. ``count``, if
        given, is kept of the chunks finished, for a progress bar.

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
        engines = 0
        if chunksize is None:
            engines = yield self.engine_count()
        parts = split(items, chunk_count(n, chunksize, engines))
        taskids = []
        for part in parts:
            taskid = yield self.next_id()
            self.send(taskid, task_to_wire(MapTask(map_chunk, (func, part), retries=retries)))
            taskids.append(taskid)
        try:
            results = yield self.get_task_results(taskids, block=True, count=count)
        except CancelledError:
            for taskid in taskids:
                self._call("abort", taskid).addErrback(lambda f: None)
            raise
        return join_map(results, [len(part) for part in parts])

    def engine_count(self) -> Deferred:
        """Fires with how many engines take tasks now."""
        return self._call("engine_count").addCallback(self._saw_engines)

    def _saw_engines(self, count: int) -> int:
        self.last_engine_count = count
        return count


def _gather(calls: list[Deferred]) -> Deferred:
    """Fires with the answers of ``calls`` in order, or fails with the first failure."""
    d = gatherResults(calls, consumeErrors=True)
    return d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, FirstError) else f)
