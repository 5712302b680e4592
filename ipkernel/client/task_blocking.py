"""The Task client users call: :class:`TaskClient`, blocking, over the reactor thread.

::

    from ipkernel import client
    tc = client.TaskClient()                  # reads <security-dir>/ipcontroller-tc.furl
    tids = [tc.run(client.StringTask("a = %i" % n, pull="a")) for n in range(100)]
    tc.barrier(tids)
    tc.get_task_result(tids[73])              # TaskResult[ID:73]:{'a': 73}

Most methods forward to the :class:`~ipkernel.client.task_async.AsyncTaskClient` through
:mod:`ipkernel.client.blocking`. ``run`` returns the new task's id at once: it takes an id
the client reserved ahead and sends the task at once (from the caller's own thread when
the reactor thread is idle), with no round trip to the controller and no thread switch;
tasks submitted while one is on its way leave together with the next call, or after
:data:`SEND_WITHIN` seconds at the latest. The waits (``map``, ``barrier``,
``get_task_result(s)``) show a progress bar counting their tasks when they last
(:mod:`ipkernel.client.progress`); ``executor()`` makes a ``concurrent.futures`` executor
(:mod:`ipkernel.client.executors`).
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ipkernel import paths
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.connection import describe
from ipkernel.client.executors import TaskExecutor
from ipkernel.client.key_files import find_key_file
from ipkernel.client.mapper import parallel_decorator
from ipkernel.client.progress import call_with_progress
from ipkernel.client.results import PendingResult
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_batches import carries_payloads
from ipkernel.client.task_types import BaseTask, TaskResult, task_to_wire

__all__ = ["AT_EXIT_TIMEOUT", "SEND_WITHIN", "TaskClient", "TaskMapper"]

#: How long, at most, a program's exit waits for the controller to take its last tasks.
AT_EXIT_TIMEOUT = 10.0

#: Seconds a task submitted while an earlier batch is on its way waits, at most, for the
#: program's next call to take it to the controller before a timer does (so that tasks
#: submitted in a row leave together, and none wakes the reactor thread).
SEND_WITHIN = 0.0005


@forwarded(
    AsyncTaskClient,
    blocking=("abort", "queue_status", "spin", "clear", "sync", "engine_count"),
)
class TaskClient:
    """The Task client (blocking).

    ``TaskClient()`` reads ``<security-dir>/ipcontroller-tc.furl``; pass a path (or the
    key's URL) to use another. :meth:`run` returns the task's id at once, without a round
    trip to the controller for each task; the other methods block until answered, but
    ``map`` with ``block=False`` returns a
    :class:`~ipkernel.client.results.PendingResult` (``block``, default ``True``, is the
    default of ``map``'s keyword of the same name). ``transport`` is as for
    :class:`~ipkernel.client.task_async.AsyncTaskClient`.
    """

    def __init__(
        self,
        furl_or_file: str | Path | None = None,
        *,
        transport: str | None = None,
    ) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.TC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncTaskClient = self._bridge.call(
            AsyncTaskClient.connect, self._bridge.reactor, keyfile, source, transport
        )
        self._bridge.serve(self._async.broker)
        self._bridge.call(
            self._async.send_within, SEND_WITHIN, self._bridge.handoff.call_from_thread
        )
        self.block: bool = True
        self._pending: weakref.WeakSet[PendingResult] = weakref.WeakSet()
        # Tasks still on their way when the program ends must not be lost with the
        # reactor thread.
        ref = weakref.ref(self)
        self._atexit = lambda: _sync_at_exit(ref)
        atexit.register(self._atexit)

    def __repr__(self) -> str:
        return describe(type(self).__name__, self._async, block=self.block)

    @property
    def reconnect_timeout(self) -> float:
        """Seconds a call waits for a controller that went away (crashed, restarting
        with ``--reuse-keys``) to accept a new login before it fails with
        :class:`~ipkernel.errors.ControllerUnreachable` (default 30)."""
        return self._async.reconnect_timeout

    @reconnect_timeout.setter
    def reconnect_timeout(self, seconds: float) -> None:
        self._async.reconnect_timeout = seconds

    def run(self, task: BaseTask) -> int:
        """Submit ``task``; return its id (an int) at once.

        Raises ``ValueError``/``TypeError`` for a bad option or a looping recovery chain,
        ``SerializationError`` naming a value that cannot be pickled. The task leaves at
        once, or, while an earlier batch is on its way, with the next ones submitted in
        a row, with the client's next call or :data:`SEND_WITHIN` seconds after the
        first of them at the latest; a task whose
        body is large (arrays of :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or
        more) is sent before this returns, so its arrays may change afterwards.
        """
        wire = task_to_wire(task)
        if carries_payloads(wire):
            # A large body is read from the caller's arrays while it is sent: return
            # once the controller holds it, so they may change afterwards.
            return self._bridge.call(self._async.run_wire, wire)
        taskid = self._async.take_id()
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
        block: bool | None = None,
        progress: bool = True,
    ) -> Any:
        """``[func(x) for x in seq]``, load balanced over the engines (see
        :meth:`AsyncTaskClient.map <ipkernel.client.task_async.AsyncTaskClient.map>`).

        ``block`` defaults to the client's ``block``; with ``block=False`` return a
        :class:`~ipkernel.client.results.PendingResult`. A blocking map that lasts shows a
        bar counting its tasks unless ``progress`` is false.
        """
        if self.block if block is None else block:
            return call_with_progress(
                self._bridge,
                self._async.map,
                (func, seq, chunksize, retries),
                label="map",
                show=progress,
                counted=True,
            )
        return self._pending_call(self._async.map, func, seq, chunksize, retries)

    def get_task_result(
        self, taskid: int, block: bool = False, progress: bool = True
    ) -> TaskResult | None:
        """The :class:`~ipkernel.client.task_types.TaskResult` of ``taskid``, or ``None``
        if it is not finished and ``block`` is false; ``IndexError`` for an unknown id. A
        blocking wait that lasts shows a bar unless ``progress`` is false."""
        return call_with_progress(
            self._bridge,
            self._async.get_task_result,
            (taskid, block),
            label="get_task_result",
            show=progress and block,
        )

    def get_task_results(
        self, taskids: Sequence[int], block: bool = False, progress: bool = True
    ) -> list[TaskResult | None]:
        """Like :meth:`get_task_result` for several ids, in few round trips: a list. A
        blocking wait that lasts shows a bar counting the tasks."""
        return call_with_progress(
            self._bridge,
            self._async.get_task_results,
            (taskids, block),
            label="get_task_results",
            show=progress and block,
            counted=True,
        )

    def barrier(self, taskids: int | Sequence[int], progress: bool = True) -> None:
        """Block until every task named is finished (failed ones included); a wait that
        lasts shows a bar counting them unless ``progress`` is false."""
        call_with_progress(
            self._bridge,
            self._async.barrier,
            (taskids,),
            label="barrier",
            show=progress,
            counted=True,
        )

    def result(self, taskid: int) -> PendingResult:
        """A :class:`~ipkernel.client.results.PendingResult` of the task's
        :class:`~ipkernel.client.task_types.TaskResult`: ``get_result()`` waits for it,
        ``await tc.result(tid)`` awaits it in asyncio."""
        return self._pending_call(self._async.get_task_result, taskid, True)

    def _pending_call(self, fn: Callable[..., Any], *args: Any) -> PendingResult:
        pending = PendingResult(self._bridge.submit(fn, *args), self)
        self._pending.add(pending)
        return pending

    def executor(self, retries: int = 0) -> TaskExecutor:
        """A ``concurrent.futures`` executor whose calls are tasks with ``retries``; see
        :mod:`ipkernel.client.executors`."""
        return TaskExecutor(self._bridge, self._async, retries)

    def mapper(
        self, chunksize: int | None = None, retries: int = 1, block: bool | None = None
    ) -> TaskMapper:
        """An object whose ``map`` uses these settings (``block=None``: the client's)."""
        return TaskMapper(self, chunksize, retries, block)

    def parallel(
        self, chunksize: int | None = None, retries: int = 1, block: bool | None = None
    ) -> Callable[[Callable[[Any], Any]], Callable[[Iterable[Any]], Any]]:
        """Decorator: ``@tc.parallel()`` turns ``f`` into ``seq -> tc.map(f, seq)``."""
        return parallel_decorator(self.mapper(chunksize, retries, block))

    def close(self) -> None:
        """Send what is still queued, wait until the controller has answered it, then
        disconnect from the controller."""
        try:
            self._bridge.call(self._async.close)
        finally:
            atexit.unregister(self._atexit)


def _sync_at_exit(ref: weakref.ref) -> None:
    client = ref()
    if client is None:
        return
    try:
        client.sync(AT_EXIT_TIMEOUT)
    except Exception:
        pass  # the process is ending: nothing more can be done about it


class TaskMapper:
    """``map`` with fixed ``chunksize``, ``retries`` and ``block`` (see ``mapper()``)."""

    def __init__(
        self, client: TaskClient, chunksize: int | None, retries: int, block: bool | None
    ) -> None:
        self.client = client
        self.chunksize = chunksize
        self.retries = retries
        self.block = block

    def map(self, func: Callable[[Any], Any], seq: Iterable[Any]) -> Any:
        """``[func(x) for x in seq]``, load balanced."""
        return self.client.map(
            func, seq, chunksize=self.chunksize, retries=self.retries, block=self.block
        )
