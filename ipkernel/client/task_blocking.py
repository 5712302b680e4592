"""The Task client users call: :class:`TaskClient`, blocking, over the reactor thread.

::

    from ipkernel import client
    tc = client.TaskClient()                  # reads <security-dir>/ipcontroller-tc.furl
    tids = [tc.run(client.StringTask("a = %i" % n, pull="a")) for n in range(100)]
    tc.barrier(tids)
    tc.get_task_result(tids[73])              # TaskResult[ID:73]:{'a': 73}

Every method but :meth:`TaskClient.run` forwards to the
:class:`~ipkernel.client.task_async.AsyncTaskClient` through
:mod:`ipkernel.client.blocking`. ``run`` returns the new task's id at once: it takes an id
the client reserved ahead and queues the task, with no round trip to the controller and
none to the reactor thread.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ipkernel import paths
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.connection import describe
from ipkernel.client.key_files import find_key_file
from ipkernel.client.mapper import parallel_decorator
from ipkernel.client.results import PendingResult
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_batches import carries_payloads
from ipkernel.client.task_types import BaseTask, task_to_wire

__all__ = ["AT_EXIT_TIMEOUT", "TaskClient", "TaskMapper"]

#: How long, at most, a program's exit waits for the controller to take its last tasks.
AT_EXIT_TIMEOUT = 10.0


@forwarded(
    AsyncTaskClient,
    blockable=("map",),
    blocking=(
        "get_task_result",
        "get_task_results",
        "barrier",
        "abort",
        "queue_status",
        "spin",
        "clear",
        "sync",
    ),
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
        self.block: bool = True
        self._pending: weakref.WeakSet[PendingResult] = weakref.WeakSet()
        # Tasks still on their way when the program ends must not be lost with the
        # reactor thread.
        ref = weakref.ref(self)
        self._atexit = lambda: _sync_at_exit(ref)
        atexit.register(self._atexit)

    def __repr__(self) -> str:
        return describe(type(self).__name__, self._async, block=self.block)

    def run(self, task: BaseTask) -> int:
        """Submit ``task``; return its id (an int) at once.

        Raises ``ValueError``/``TypeError`` for a bad option or a looping recovery chain,
        ``SerializationError`` naming a value that cannot be pickled. The task leaves
        with the next ones submitted in a row; a task whose body is large (arrays of
        :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more) is sent before this
        returns, so its arrays may change afterwards.
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
