"""A joblib backend, named ``ipkernel``, that runs ``Parallel``'s batches as tasks.

::

    import joblib
    import ipkernel.joblib                 # registers the backend

    with joblib.parallel_config(backend="ipkernel"):
        squares = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(100))

Each batch of calls that joblib makes is one task of a :class:`~ipkernel.client.TaskClient`
(through its executor, :mod:`ipkernel.client.executors`), load balanced over the
engines; results come back through the client's reactor thread, so
``return_as='generator'`` (and ``'generator_unordered'``) and ``Parallel(timeout=...)``
work. ``n_jobs=-1`` (the default) means as many as there are engines.

The client is the default key file's (``<security-dir>/ipcontroller-tc.furl``), made on
first use and kept for later calls; :func:`register` names another, or a client already
made: ``ipkernel.joblib.register(tc=tc)``. Backend arguments do the same for one
``parallel_config``: ``parallel_config(backend='ipkernel', tc=tc)`` or
``furl_or_file=path``, and ``retries=n`` for the tasks.

joblib is an optional dependency (``pip install ipkernel[joblib]``): only this module
imports it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from ipkernel.client.executors import ClientFuture
from ipkernel.client.task_blocking import TaskClient

__all__ = ["IPKernelBackend", "register"]

_lock = threading.Lock()
# Clients by key file (None: the default one), made on first use and kept: a backend is
# made for every Parallel call, and logging in each time would cost more than most
# batches.
_clients: dict[str | None, TaskClient] = {}


def _client_for(furl_or_file: str | Path | None) -> TaskClient:
    key = None if furl_or_file is None else str(furl_or_file)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = TaskClient(furl_or_file)
        return client


class IPKernelBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` over a :class:`~ipkernel.client.TaskClient`.

    :param tc: the client to use (default: one of ``furl_or_file``).
    :param furl_or_file: the key file (or its URL) of the client to make, or reuse if
        this process made one already (default: the default key file).
    :param retries: each task's retries (default 0).
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_sharedmem = False

    def __init__(
        self,
        tc: TaskClient | None = None,
        furl_or_file: str | Path | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._tc = tc
        self._furl_or_file = furl_or_file
        self._retries = retries
        self._executor: Any = None
        self._futures: set[ClientFuture] = set()
        self._futures_lock = threading.Lock()

    def _client(self) -> TaskClient:
        if self._tc is None:
            self._tc = _client_for(self._furl_or_file)
        return self._tc

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches may run at once: ``n_jobs``, or for ``-1`` (``None``) as
        many as there are engines; ``-2`` one fewer, and so on. Never below 2: joblib
        runs a ``Parallel`` of one job in this process, not on the engines."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            engines = self._client().engine_count()
            n_jobs = engines + 1 + (-1 if n_jobs is None else n_jobs)
        return max(2, n_jobs)

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None, **_
    ) -> int:
        """Connect (if not yet) and return the number of jobs (see effective_n_jobs)."""
        self.parallel = parallel
        n_jobs = self.effective_n_jobs(n_jobs)
        if self._executor is None:
            self._executor = self._client().executor(retries=self._retries)
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> ClientFuture:
        """Run one batch (``func()``) as a task; ``callback(future)`` once it is done
        (in the client's reactor thread, where joblib dispatches the next batch)."""
        future = self._executor.submit(func)
        with self._futures_lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: ClientFuture) -> None:
        with self._futures_lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, future: ClientFuture) -> Any:
        """The batch's results, or its exception raised."""
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Abort the batches not finished, queued or running (their engines stay usable)."""
        with self._futures_lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def terminate(self) -> None:
        """End of a ``Parallel`` call: refuse more batches (the client stays open)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self.reset_batch_stats()


def register(
    tc: TaskClient | None = None,
    furl_or_file: str | Path | None = None,
    name: str = "ipkernel",
    make_default: bool = False,
    retries: int = 0,
) -> None:
    """Register the backend as ``name`` (again), running on ``tc``, or on a client of
    ``furl_or_file`` made on first use; ``make_default`` makes it joblib's default.
    Backend arguments given to ``parallel_config`` still take precedence."""

    def factory(**kwargs: Any) -> IPKernelBackend:
        if "tc" not in kwargs and "furl_or_file" not in kwargs:
            kwargs.update(tc=tc, furl_or_file=furl_or_file)
        kwargs.setdefault("retries", retries)
        return IPKernelBackend(**kwargs)

    register_parallel_backend(name, factory, make_default=make_default)


register_parallel_backend("ipkernel", IPKernelBackend)
