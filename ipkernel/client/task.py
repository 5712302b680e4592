"""The Task client: farm tasks out to a load-balanced, fault-tolerant pool of engines.

::

    from ipkernel import client
    tc = client.TaskClient()                  # reads <security-dir>/ipcontroller-tc.furl
    tids = [tc.run(client.StringTask("a = %i" % n, pull="a")) for n in range(100)]
    tc.barrier(tids)
    tc.get_task_result(tids[73])              # TaskResult[ID:73]:{'a': 73}

A task is a :class:`StringTask` (code; ``client.Task`` is the same class) or a
:class:`MapTask` (a function call). Every option is a constructor keyword and an
attribute, read when the task is submitted. The client serializes the task (its body and
its ``depend`` function, separately) into frames that only the engine decodes; the
controller sees its ``retries`` and the shape of its recovery chain, nothing else.

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
import datetime
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
from ipkernel.errors import (
    CompositeError,
    IPKernelError,
    SerializationError,
    error_from_wire,
    format_error_line,
)
from ipkernel.security import KeyFile
from ipkernel.serialization import deserialize, deserialize_failure, serialize, serialize_failure
from ipkernel.wire.connect import call_controller, login
from ipkernel.wire.records import TASK_SUBMIT, unpack_results

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


# -- tasks ----------------------------------------------------------------------------------


class BaseTask:
    """What every kind of task has: data in and out, clean-up, fault tolerance, placement.

    :param pull: a name or a list of names whose values, after the task ran, make its
        result (:attr:`TaskResult.results`).
    :param push: a dict of names and values bound in the engine's namespace first.
    :param clear_before: reset the engine's namespace before the task.
    :param clear_after: reset it after the task (whether it succeeded or not).
    :param retries: how many times a failed task is run again (on any engine) before it
        counts as failed. An engine that dies while running it uses up one retry too.
    :param recovery_task: another task, run if this one fails for good; its result then
        stands under this task's id. It may have its own; a chain that loops is refused
        by ``run``.
    :param depend: a function of one argument, an engine's properties dict; the task runs
        only on engines where it returns true (an exception counts as false). It is
        evaluated on the engines.
    """

    def __init__(
        self,
        *,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        self.pull = pull
        self.push = push
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def _options_repr(self) -> str:
        parts = []
        for name, default in (
            ("pull", None),
            ("push", None),
            ("clear_before", False),
            ("clear_after", False),
            ("retries", 0),
            ("recovery_task", None),
            ("depend", None),
        ):
            value = getattr(self, name)
            if value != default:
                parts.append(f", {name}={value!r}")
        return "".join(parts)


class StringTask(BaseTask):
    """A task that runs code in an engine's namespace, as ``execute`` does.

    ``StringTask("a = f(x)", push={'x': 3}, pull="a")``; the other options are those of
    :class:`BaseTask`. ``client.Task`` is this class.
    """

    def __init__(
        self,
        expression: str,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        super().__init__(
            pull=pull,
            push=push,
            clear_before=clear_before,
            clear_after=clear_after,
            retries=retries,
            recovery_task=recovery_task,
            depend=depend,
        )
        self.expression = expression

    def _body(self) -> dict[str, Any]:
        if not isinstance(self.expression, str):
            raise TypeError(
                f"StringTask needs a string of code, not {type(self.expression).__name__}"
            )
        return {"kind": "string", "code": self.expression}

    def __repr__(self) -> str:
        return f"StringTask({self.expression!r}{self._options_repr()})"


#: IPython 0.9's name for a task made of code.
Task = StringTask


class MapTask(BaseTask):
    """A task that calls ``function(*args, **kwargs)`` on an engine.

    The return value is :attr:`TaskResult.result`; ``pull`` and the other options are
    those of :class:`BaseTask`. The function travels by value (closures and lambdas too).
    """

    def __init__(
        self,
        function: Callable[..., Any],
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        super().__init__(
            pull=pull,
            push=push,
            clear_before=clear_before,
            clear_after=clear_after,
            retries=retries,
            recovery_task=recovery_task,
            depend=depend,
        )
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def _body(self) -> dict[str, Any]:
        if not callable(self.function):
            raise TypeError(f"MapTask needs a callable, not {type(self.function).__name__}")
        args = () if self.args is None else self.args
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"MapTask args must be a list or tuple, not {type(args).__name__}")
        kwargs = {} if self.kwargs is None else self.kwargs
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise TypeError("MapTask kwargs must be a dict with string keys")
        return {"kind": "map", "function": self.function, "args": tuple(args), "kwargs": kwargs}

    def __repr__(self) -> str:
        name = getattr(self.function, "__name__", repr(self.function))
        return f"MapTask({name}, args={self.args!r}, kwargs={self.kwargs!r}{self._options_repr()})"


def _pull_names(pull: object) -> list[str]:
    if pull is None:
        return []
    if isinstance(pull, str):
        return [pull]
    if isinstance(pull, (list, tuple)) and all(isinstance(name, str) for name in pull):
        return list(pull)
    raise TypeError(f"pull must be a name or a list of names, not {pull!r}")


def _serialize_body(body: dict[str, Any]) -> list[bytes]:
    try:
        return serialize(body)
    except SerializationError:
        # Find the part that cannot be pickled, so the error names it.
        for key, value in (body.get("push") or {}).items():
            serialize(value, name=key)
        for key in ("function", "args", "kwargs"):
            if key in body:
                serialize(body[key], name=f"the task's {key}")
        raise


def task_to_wire(task: BaseTask) -> list[list]:
    """Check ``task`` and its recovery chain; return the wire form the controller takes.

    The form is ``[[retries, body frames, depend frames or None], ...]``: the task, then
    each of its recovery tasks in order.

    :raises ValueError: for negative ``retries`` or a recovery chain that loops.
    :raises TypeError: for an option of the wrong type (the message names it).
    :raises SerializationError: naming the value that cannot be pickled.
    """
    wires: list[list] = []
    seen: set[int] = set()
    node: object = task
    while node is not None:
        if not isinstance(node, BaseTask):
            raise TypeError(
                f"expected a StringTask or MapTask, not {type(node).__name__}"
                + (" (as recovery_task)" if wires else "")
            )
        if id(node) in seen:
            raise ValueError("the chain of recovery tasks loops: a task cannot recover itself")
        seen.add(id(node))
        retries = node.retries
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries < 2**31:
            raise ValueError(f"retries must be an int from 0 to 2**31 - 1, not {retries!r}")
        push = node.push
        if push is not None and (
            not isinstance(push, dict) or not all(isinstance(k, str) for k in push)
        ):
            raise TypeError("push must be a dict of names (strings) to values")
        if node.depend is not None and not callable(node.depend):
            raise TypeError(f"depend must be a function, not {type(node.depend).__name__}")
        body = node._body()
        body.update(
            push=push or None,
            pull=_pull_names(node.pull),
            clear_before=bool(node.clear_before),
            clear_after=bool(node.clear_after),
        )
        depend = None if node.depend is None else serialize(node.depend, name="depend")
        wires.append([retries, _serialize_body(body), depend])
        node = node.recovery_task
    return wires


# -- results --------------------------------------------------------------------------------


class ResultNS:
    """The pulled names of a task as attributes: ``tr.ns.a``."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.__dict__.update(results)

    def __repr__(self) -> str:
        return f"ResultNS({self.__dict__!r})"


def _when(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds)


class TaskResult:
    """The outcome of a finished task, with what is known of its run.

    Attributes: :attr:`taskid`, :attr:`engineid` (the engine of the attempt that finished,
    or ``None``), :attr:`submitted` and :attr:`completed` (datetimes), :attr:`duration`
    (seconds the finishing attempt took on its engine, ``None`` if none ran to the end),
    :attr:`attempts` (runs of the task in charge), :attr:`recovered` (0, or how far down
    the recovery chain the task in charge is), :attr:`failure` (``None``, or the exception,
    with the remote traceback text in its ``remote_traceback``).

    A failed task's result is returned, not raised: reading :attr:`results`, :attr:`ns` or
    :attr:`result` raises its failure, and so does :meth:`raise_exception`.
    """

    def __init__(
        self,
        taskid: int,
        *,
        results: dict[str, Any] | None = None,
        result: Any = None,
        failure: BaseException | None = None,
        engineid: int | None = None,
        submitted: datetime.datetime | None = None,
        completed: datetime.datetime | None = None,
        duration: float | None = None,
        attempts: int = 0,
        recovered: int = 0,
    ) -> None:
        self.taskid = taskid
        self._results = results if results is not None else {}
        self._result = result
        self.failure = failure
        self.engineid = engineid
        self.submitted = submitted
        self.completed = completed
        self.duration = duration
        self.attempts = attempts
        self.recovered = recovered

    @classmethod
    def from_wire(cls, record: dict[str, Any]) -> TaskResult:
        """Build a result from the controller's record of a finished task."""
        status, value = record.get("status"), record.get("value")
        results: dict[str, Any] = {}
        result = None
        failure: BaseException | None = None
        try:
            if status == "ok":
                results, result = deserialize(value)
            elif status == "raised":
                failure = deserialize_failure(value)
            elif status == "error":
                failure = error_from_wire(str(value[0]), str(value[1]))
            else:
                failure = IPKernelError(f"the controller sent a result with status {status!r}")
        except Exception as exc:  # a result that cannot be rebuilt here is its failure
            failure = exc
        if failure is not None and record.get("engine_id") is not None:
            try:
                if getattr(failure, "engine_id", None) is None:
                    failure.engine_id = record["engine_id"]  # type: ignore[attr-defined]
            except AttributeError:
                pass
        return cls(
            record["taskid"],
            results=results,
            result=result,
            failure=failure,
            engineid=record.get("engine_id"),
            submitted=_when(record.get("submitted")),
            completed=_when(record.get("completed")),
            duration=record.get("duration"),
            attempts=record.get("attempts") or 0,
            recovered=record.get("recovered") or 0,
        )

    @property
    def results(self) -> dict[str, Any]:
        """The pulled names and their values; raises the failure of a failed task."""
        self.raise_exception()
        return self._results

    @property
    def ns(self) -> ResultNS:
        """:attr:`results` by attribute (``tr.ns.a``); raises the failure of a failed task."""
        return ResultNS(self.results)

    @property
    def result(self) -> Any:
        """A :class:`MapTask`'s return value (``None`` for code); raises the failure."""
        self.raise_exception()
        return self._result

    def raise_exception(self) -> None:
        """Raise the task's failure, if it failed; do nothing otherwise."""
        if self.failure is not None:
            raise self.failure

    def __repr__(self) -> str:
        if self.failure is not None:
            return f"TaskResult[ID:{self.taskid}]:{format_error_line(self.failure)}"
        if self._result is not None and not self._results:
            return f"TaskResult[ID:{self.taskid}]:{self._result!r}"
        return f"TaskResult[ID:{self.taskid}]:{self._results!r}"


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
    """

    def __init__(
        self, avatar: pb.RemoteReference, source: str = "the key file", reactor: Any = None
    ) -> None:
        self._avatar = avatar
        self.source = source
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._ids = _IdPool()
        self._lock = threading.Lock()
        self._outgoing: list[tuple[int, list, Deferred | None]] = []
        self._flush_scheduled = False
        self._unacked: set[Deferred] = set()
        self._rejected: dict[int, BaseException] = {}

    @classmethod
    def connect(cls, reactor: Any, keyfile: KeyFile, source: str = "the key file") -> Deferred:
        """Log in to the Task interface of ``keyfile``'s controller; fires with a client."""
        return login(reactor, keyfile, source=source).addCallback(cls, source, reactor)

    def disconnect(self) -> None:
        """Close the connection to the controller (tasks already sent keep running)."""
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    # Plumbing.

    def _remote(self, method: str, *args: Any) -> Deferred:
        # Tasks submitted before this call must reach the controller before it.
        self._flush()
        return self._call_remote(method, *args)

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

    @inlineCallbacks
    def run(self, task: BaseTask):
        """Submit ``task``; fires with its id once the controller has accepted it.

        Fails at once with ``ValueError``/``TypeError`` for a bad option or a looping
        recovery chain, or ``SerializationError`` naming a value that cannot be pickled.
        """
        wire = task_to_wire(task)
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
        for taskid, wire, _ in batch:
            for n, (retries, body, depend) in enumerate(wire):
                records.append(((taskid if n == 0 else -1, retries), (body, depend)))
        try:
            d = self._call_remote("run_tasks", TASK_SUBMIT.pack(records))
        except Exception as exc:
            d = Deferred()
            d.errback(exc)
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
        refused = self._refusal([taskid])
        if refused is not None:
            return refused
        d = self._remote("get_task_result", taskid, bool(block))
        return d.addCallback(
            lambda m: None if m is None else TaskResult.from_wire(unpack_results(m)[0])
        )

    def get_task_results(self, taskids: Sequence[int], block: bool = False) -> Deferred:
        """Like :meth:`get_task_result` for several ids, in few round trips: a list."""
        taskids = _id_list(taskids)
        refused = self._refusal(taskids)
        if refused is not None:
            return refused
        # Groups small enough that one answer stays well under the broker's size limit.
        calls = [
            self._remote("get_task_results", taskids[i : i + RESULTS_PER_CALL], bool(block))
            for i in range(0, len(taskids), RESULTS_PER_CALL)
        ]
        d = gatherResults(calls, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, FirstError) else f)
        return d.addCallback(
            lambda answers: [
                None if r is None else TaskResult.from_wire(r)
                for m in answers
                for r in unpack_results(m)
            ]
        )

    def barrier(self, taskids: int | Sequence[int]) -> Deferred:
        """Fires with ``None`` once every task named is finished (failed ones included)."""
        taskids = _id_list(taskids)
        return self._refusal(taskids) or self._remote("barrier", taskids)

    def abort(self, taskid: int) -> Deferred:
        """Cancel a queued or running task; it finishes failed with ``TaskAborted``.

        A running task is interrupted on its engine, which stays usable. Fails with
        ``IndexError`` ("task ... already completed") for a finished task.
        """
        taskid = _one_id(taskid)
        return self._refusal([taskid]) or self._remote("abort", taskid)

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
    return sum(
        sum(len(f) for f in body) + (sum(len(f) for f in depend) if depend else 0)
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
    """

    def __init__(self, furl_or_file: str | Path | None = None, *, timeout: float = 10.0) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.TC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncTaskClient = self._bridge.call(
            AsyncTaskClient.connect, self._bridge.reactor, keyfile, source
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
        with the next ones submitted in a row.
        """
        wire = task_to_wire(task)
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
