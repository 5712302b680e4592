"""``concurrent.futures`` executors over the Task and MultiEngine clients.

::

    with tc.executor() as ex:                     # load balanced: each call is a task
        futures = [ex.submit(f, x) for x in range(100)]
        for future in concurrent.futures.as_completed(futures):
            print(future.result())
        print(list(ex.map(f, range(100), timeout=60)))

    ex = mec.executor(targets=[0, 1])             # round robin on engines 0 and 1

:class:`TaskExecutor` runs each ``submit`` as a ``MapTask`` and each chunk of a ``map``
as one; :class:`MultiEngineExecutor` runs each on the next target engine in turn.
Submitting never waits: calls queued in a row leave together at the next reactor turn
(a ``map``'s tasks in as few messages as the client's batching allows).

Futures are completed from the client's reactor thread as answers arrive: no thread
waits per future. So done callbacks run in that thread: keep them short and make no
blocking client call there (``submit`` is fine: it never blocks). A future is also
awaitable in asyncio (``await ex.submit(f, x)``).

``Future.cancel()`` stops the work it stands for: a call not sent yet is never sent; a
task is aborted (``tc.abort``), queued or running, and its engine stays usable. For a
task it returns ``True`` unless the result had already arrived.

A MultiEngine call, once sent, can no longer be cancelled: ``cancel()`` returns
``False``, and ``running()`` is ``True`` from then on (as for a call a
``ThreadPoolExecutor`` has started). The MultiEngine interface cannot stop that one
call: the engine's queue, which it joins behind every client's commands, can only be
cleared as a whole (``clear_queue`` drops the others' too), and ``interrupt`` stops
whatever runs on the engine at that moment, which nothing tells the client is this
call. Holding calls back in the client until the engine is free would let the client's
other commands overtake them. Stop a call that runs with ``mec.interrupt(targets)``.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from ipkernel.client.awaiting import awaitable
from ipkernel.client.task_types import MapTask, task_to_wire
from ipkernel.errors import CompositeError, NoEnginesRegistered

__all__ = [
    "ClientFuture",
    "MultiEngineExecutor",
    "TaskExecutor",
    "call_function",
    "call_chunk",
]

#: Most of a ``map``'s tasks whose results one request waits for. The groups grow from
#: one task (1, 2, 4, ...): the first results, which the caller reads first, come at once,
#: and a long map costs one request per this many tasks, not one per task.
RESULTS_PER_WAIT = 64


def call_function(call: tuple[Callable[..., Any], tuple, dict]) -> Any:
    """Run on an engine: ``fn(*args, **kwargs)`` for ``call = (fn, args, kwargs)``."""
    fn, args, kwargs = call
    return fn(*args, **kwargs)


def call_chunk(fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
    """Run on an engine for one chunk of an executor's ``map``: ``fn(*args)`` for each
    tuple of arguments. The first exception fails the chunk, as in
    ``ProcessPoolExecutor``."""
    return [fn(*args) for args in calls]


class ClientFuture(concurrent.futures.Future):
    """A future of one call made through an executor; :meth:`cancel` stops the call, or
    says it cannot (see the module's notes).

    :attr:`taskid` is the task's id (:class:`TaskExecutor`) once it has one, else
    ``None``.
    """

    def __init__(self, on_cancel: Callable[[ClientFuture], None]) -> None:
        super().__init__()
        self._on_cancel = on_cancel
        self._cancelling = threading.Lock()
        self.taskid: int | None = None
        self.sent = False

    def cancel(self) -> bool:
        """Cancel the call; ``False`` if its result has arrived or, for a MultiEngine
        call, once it has been sent (see the module's notes)."""
        with self._cancelling:
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            # wait() and as_completed() count a cancelled future once its executor
            # says so.
            self.set_running_or_notify_cancel()
        self._on_cancel(self)
        return True

    def start(self) -> bool:
        """Mark the call as started, past cancelling (:meth:`running` becomes true);
        ``False`` if it was cancelled first, and then it must not start."""
        with self._cancelling:
            return not self.cancelled() and self.set_running_or_notify_cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future`` in a running asyncio loop, without blocking it."""
        return awaitable(self).__await__()


def _settle(future: ClientFuture, value: Any = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless it was cancelled meanwhile (its late answer is dropped)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


def _results(futures: list[ClientFuture], end: float | None) -> Iterator[Any]:
    """The values of a ``map``'s chunks, in order; the futures left are cancelled when
    the iterator is closed early or a result is late (``TimeoutError``)."""
    try:
        futures.reverse()
        while futures:
            future = futures.pop()
            try:
                values = future.result(None if end is None else end - time.monotonic())
            finally:
                future.cancel()  # does nothing once it is done; stops a late one
            yield from values
    finally:
        for future in futures:
            future.cancel()


class _ClientExecutor(concurrent.futures.Executor):
    """What both executors share: the queue of calls to send, the futures not done."""

    def __init__(self, bridge: Any) -> None:
        self._bridge = bridge
        self._lock = threading.Lock()
        self._queue: list[tuple[list[Any], list[ClientFuture], bool]] = []
        self._scheduled = False
        self._shutdown = False
        self._outstanding: set[ClientFuture] = set()

    # What subclasses define.

    def _job(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """What the reactor thread needs to send one call (made in the caller's thread)."""
        raise NotImplementedError

    def _start(self, jobs: list[Any], futures: list[ClientFuture], batch: bool) -> None:
        """Send queued calls (reactor thread). ``batch``: the chunks of one ``map``."""
        raise NotImplementedError

    def _cancelled(self, future: ClientFuture) -> None:
        """Stop the remote work of a future that was just cancelled (any thread)."""

    def _not_started(self, futures: list[ClientFuture]) -> list[ClientFuture]:
        """The futures among ``futures`` whose calls have not started (blocking)."""
        return [f for f in futures if not f.sent]

    # The Executor interface.

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ClientFuture:
        """Schedule ``fn(*args, **kwargs)``; return its future at once.

        :raises TypeError: if ``fn`` is not callable.
        :raises RuntimeError: after :meth:`shutdown`.
        A call that cannot be sent (an argument that cannot be pickled: its
        ``SerializationError``) fails its future.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        return self._enqueue([(fn, args, kwargs)], batch=False)[0]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn(*args)`` for each tuple of items of ``iterables``, in order.

        Every call is submitted before this returns, ``chunksize`` items per task (or
        per engine call). The iterator raises ``TimeoutError`` if a result is not there
        ``timeout`` seconds after this call, and an item's exception when its value is
        reached; then, or when the iterator is closed early, the calls not finished are
        cancelled.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, not {type(fn).__name__}")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        end = None if timeout is None else time.monotonic() + timeout
        # As the built-in map (and Executor.map): the shortest iterable ends it.
        calls = list(zip(*iterables, strict=False))
        chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        futures = self._enqueue([(call_chunk, (fn, chunk), {}) for chunk in chunks], batch=True)
        return _results(futures, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with ``cancel_futures`` cancel the calls not started yet;
        with ``wait`` block until the others are done. The client stays open."""
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding)
        if cancel_futures and outstanding:
            for future in self._not_started(outstanding):
                future.cancel()
        if wait and outstanding:
            self._bridge.check_usable()
            concurrent.futures.wait(outstanding)

    # Plumbing.

    def _enqueue(self, calls: list[tuple], batch: bool) -> list[ClientFuture]:
        """Futures for ``calls`` (``(fn, args, kwargs)`` each), in order; the calls are
        queued for the reactor thread, which is woken once for all of them."""
        if threading.current_thread() is not self._bridge.thread:
            self._bridge.check_usable()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        futures: list[ClientFuture] = []
        jobs: list[Any] = []
        queued: list[ClientFuture] = []
        for fn, args, kwargs in calls:
            future = ClientFuture(self._cancelled)
            futures.append(future)
            try:
                jobs.append(self._job(fn, args, kwargs))
            except Exception as exc:
                future.set_exception(exc)
            else:
                queued.append(future)
        with self._lock:
            if self._shutdown:  # shut down meanwhile, by another thread
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._outstanding.update(queued)
            schedule = bool(queued) and not self._scheduled
            if queued:
                self._queue.append((jobs, queued, batch))
                self._scheduled = True
        for future in queued:
            future.add_done_callback(self._forget)
        if schedule:
            self._bridge.reactor.callFromThread(self._drain)
        return futures

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._outstanding.discard(future)  # type: ignore[arg-type]

    def _drain(self) -> None:
        with self._lock:
            queue, self._queue = self._queue, []
            self._scheduled = False
        for jobs, futures, batch in queue:
            self._start(jobs, futures, batch)


class TaskExecutor(_ClientExecutor):
    """An executor whose calls are tasks, load balanced over the engines.

    Made by ``TaskClient.executor()``. Each ``submit`` is ``MapTask(fn, args, kwargs,
    retries=retries)``, whose future completes as soon as its task does. A ``map`` makes
    one task per chunk of ``chunksize`` items and waits for their results in groups (1,
    2, 4, ... up to :data:`RESULTS_PER_WAIT` tasks), so a chunk's values can wait for the
    rest of its group (its ``timeout`` counts until then). A future's
    :attr:`~ClientFuture.taskid` is its task's id once it has one; a failed task's future
    raises the task's failure (the function's exception, ``TaskAborted``,
    ``EngineError``). Arrays passed as arguments must not change until the call is done.
    """

    def __init__(self, bridge: Any, client: Any, retries: int = 0) -> None:
        super().__init__(bridge)
        self._client = client
        self._retries = retries
        # Sends happen in order, one group after the other, while ids are reserved.
        self._tail: Deferred = succeed(None)

    def _job(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> list:
        return task_to_wire(MapTask(fn, args, kwargs, retries=self._retries))

    def _start(self, jobs: list[Any], futures: list[ClientFuture], batch: bool) -> None:
        self._tail.addCallback(lambda _: self._send(jobs, futures, batch))

    @inlineCallbacks
    def _send(self, jobs: list[Any], futures: list[ClientFuture], batch: bool):
        sent: list[ClientFuture] = []
        try:
            for wire, future in zip(jobs, futures, strict=True):
                if future.cancelled():
                    continue  # cancelled before it left: it never runs
                taskid = yield self._client.next_id()
                future.taskid = taskid
                if future.cancelled():
                    continue
                self._client.send(taskid, wire)
                future.sent = True
                sent.append(future)
        except Exception as exc:  # no ids: the controller is gone
            for future in futures:
                if not future.sent:
                    _settle(future, error=exc)
        try:
            self._watch(sent, batch)
        except Exception as exc:
            # Never leave a future waiting for good (nor stop the sends after these).
            for future in sent:
                _settle(future, error=exc)

    def _watch(self, sent: list[ClientFuture], batch: bool) -> None:
        """Ask for the results of ``sent``: one waiting request per task, or for a
        ``map``'s chunks, per group (the first request also sends the tasks)."""
        start, step = 0, 1
        while start < len(sent):
            group = sent[start : start + step]
            if len(group) > 1:
                d = self._client.get_task_results([f.taskid for f in group], True)
            else:
                d = self._client.get_task_result(group[0].taskid, True).addCallback(
                    lambda result: [result]
                )
            d.addCallbacks(self._arrived, self._lost, callbackArgs=(group,), errbackArgs=(group,))
            start += step
            if batch:
                step = min(2 * step, RESULTS_PER_WAIT)

    @staticmethod
    def _arrived(results: list[Any], group: list[ClientFuture]) -> None:
        for tr, future in zip(results, group, strict=True):
            if tr.failure is not None:
                _settle(future, error=tr.failure)
            else:
                _settle(future, tr.result)

    @staticmethod
    def _lost(failure: Any, group: list[ClientFuture]) -> None:
        for future in group:
            _settle(future, error=failure.value)

    def _cancelled(self, future: ClientFuture) -> None:
        if future.taskid is not None:
            self._bridge.reactor.callFromThread(self._abort, future.taskid)

    def _abort(self, taskid: int) -> None:
        # A task that finished meanwhile has nothing left to stop.
        self._client.abort(taskid).addErrback(lambda _: None)

    def _not_started(self, futures: list[ClientFuture]) -> list[ClientFuture]:
        unsent = [f for f in futures if not f.sent]
        if threading.current_thread() is self._bridge.thread:
            return unsent  # no blocking call from the reactor thread
        status = self._bridge.call(self._client.queue_status, True)
        scheduled = set(status.get("scheduled", ()))
        return unsent + [f for f in futures if f.sent and f.taskid in scheduled]


def _one_failure(exc: BaseException) -> BaseException:
    """A call on one engine fails with a one-entry ``CompositeError``: its exception."""
    if isinstance(exc, CompositeError) and len(exc.elist) == 1:
        return exc.elist[0][2]
    return exc


class MultiEngineExecutor(_ClientExecutor):
    """An executor whose calls go to the target engines in turn (round robin).

    Made by ``MultiEngineClient.executor(targets)``. Each ``submit`` is one call on one
    engine, queued there behind that engine's other commands, and runs in the engine's
    namespace's ``__main__``; a ``map`` makes one call per chunk. A failed call's future
    raises the engine's exception (or ``EngineError``). A call not sent yet can be
    cancelled; once sent it is running for ``concurrent.futures`` (``cancel()`` returns
    ``False``): see the module's notes.
    """

    def __init__(self, bridge: Any, client: Any, targets: Sequence[int]) -> None:
        super().__init__(bridge)
        self._client = client
        self._targets = list(targets)
        if not self._targets:
            raise NoEnginesRegistered("an executor needs at least one engine to run on")
        self._turn = 0

    @property
    def targets(self) -> list[int]:
        """The engine ids the calls go to, in turn."""
        return list(self._targets)

    def _job(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
        return fn, args, kwargs

    def _start(self, jobs: list[Any], futures: list[ClientFuture], batch: bool) -> None:
        for (fn, args, kwargs), future in zip(jobs, futures, strict=True):
            if not future.start():
                continue  # cancelled before it left: it never runs
            engine_id = self._targets[self._turn % len(self._targets)]
            self._turn += 1
            future.sent = True
            try:
                d = self._client.apply(fn, args, kwargs, targets=engine_id)
            except Exception as exc:
                _settle(future, error=exc)
                continue
            d.addCallbacks(
                lambda values, f=future: _settle(f, values[0]),
                lambda failure, f=future: _settle(f, error=_one_failure(failure.value)),
            )
