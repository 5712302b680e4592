"""The MultiEngine client users call: :class:`MultiEngineClient`, blocking by default,
over the reactor thread.

::

    from ipkernel import client
    mec = client.MultiEngineClient()          # reads <security-dir>/ipcontroller-mec.furl
    mec.execute("a = id * 2")
    mec.pull("a")                             # [0, 2, 4, 6]
    pr = mec.execute("b = a + 1", targets=[0, 1], block=False)
    pr.get_result()

Its engine methods forward to the
:class:`~ipkernel.client.multiengine_async.AsyncMultiEngineClient` through
:mod:`ipkernel.client.blocking`, with the instance's ``targets`` and ``block`` as defaults.
The waits (``get_result``, ``gather``, ``barrier``) show a progress bar when they last
(:mod:`ipkernel.client.progress`); ``executor()`` makes a ``concurrent.futures``
executor (:mod:`ipkernel.client.executors`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ipkernel import paths
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.connection import describe
from ipkernel.client.executors import MultiEngineExecutor
from ipkernel.client.interrupts import interrupting
from ipkernel.client.key_files import find_key_file
from ipkernel.client.mapper import Mapper, parallel_decorator
from ipkernel.client.multiengine_async import AsyncMultiEngineClient, Targets
from ipkernel.client.progress import wait_all
from ipkernel.client.px import activate
from ipkernel.client.results import PendingResult
from ipkernel.interfaces.multiengine import check_targets

__all__ = ["MultiEngineClient"]


@interrupting("execute", "run", "map")
@forwarded(
    AsyncMultiEngineClient,
    targeted=(
        "execute",
        "run",
        "push",
        "pull",
        "zip_pull",
        "push_function",
        "pull_function",
        "get_result",
        "reset",
        "keys",
        "kill",
        "clear_queue",
        "queue_status",
        "set_properties",
        "get_properties",
        "has_properties",
        "del_properties",
        "clear_properties",
        "scatter",
        "gather",
        "map",
        "interrupt",
    ),
    blocking=("get_ids", "get_engine_info", "transfer_stats", "close"),
    waits=("get_result", "gather"),
)
class MultiEngineClient:
    """The MultiEngine client (blocking by default).

    ``MultiEngineClient()`` reads ``<security-dir>/ipcontroller-mec.furl``; pass a path
    (or the key's URL) to use another. ``targets`` (default ``'all'``) and ``block``
    (default ``True``) are the defaults of every method that acts on engines; each call
    can override them with the keywords of the same names. ``transport='stream'`` sends
    large data over the network even to engines on this host, ``'relay'`` all of it
    through the controller, never over direct links (default: ``'auto'``, or
    ``$IPKERNEL_TRANSPORT``).
    """

    def __init__(
        self,
        furl_or_file: str | Path | None = None,
        *,
        transport: str | None = None,
    ) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.MEC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncMultiEngineClient = self._bridge.call(
            AsyncMultiEngineClient.connect, self._bridge.reactor, keyfile, source, transport
        )
        self._bridge.serve(self._async.broker)
        self.targets: Targets = "all"
        self.block: bool = True
        self._pending: weakref.WeakSet[PendingResult] = weakref.WeakSet()

    def __repr__(self) -> str:
        return describe(type(self).__name__, self._async, targets=self.targets, block=self.block)

    def __getitem__(self, key: str) -> Any:
        """``mec['a']`` pulls ``a`` from the current targets."""
        return self.pull(key)

    def __setitem__(self, key: str, value: Any) -> None:
        """``mec['a'] = v`` pushes ``a = v`` to the current targets."""
        self.push({key: value})

    def barrier(self, pending_results: Iterable[PendingResult], progress: bool = True) -> None:
        """Wait until every :class:`PendingResult` given is done (errors are not raised);
        a wait that lasts shows a bar unless ``progress`` is false."""
        wait_all([pr.future for pr in pending_results], "barrier", progress)

    def flush(self) -> None:
        """Drop the results this client's non-blocking calls hold (others' are untouched)."""
        pending, self._pending = self._pending, weakref.WeakSet()
        for pr in pending:
            pr.forget()

    def mapper(
        self, dist: str = "b", targets: Targets | None = None, block: bool | None = None
    ) -> Mapper:
        """An object whose ``map`` uses these settings (``dist='b'``: contiguous blocks)."""
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        return Mapper(self, targets, block)

    def parallel(
        self, targets: Targets | None = None, block: bool | None = None
    ) -> Callable[[Callable[[Any], Any]], Callable[[Sequence[Any]], Any]]:
        """Decorator: ``@mec.parallel()`` turns ``f`` into ``seq -> map(f, seq)``."""
        return parallel_decorator(self.mapper(targets=targets, block=block))

    def activate(self) -> None:
        """Make this client the one the IPython magics (``%px``, ``%autopx``, ``%result``)
        use, loading them into the running IPython or Jupyter; RuntimeError outside."""
        activate(self)

    def executor(self, targets: Targets | None = None) -> MultiEngineExecutor:
        """A ``concurrent.futures`` executor whose calls go to ``targets`` (default: this
        client's ``targets``) in turn; see :mod:`ipkernel.client.executors`."""
        ids = check_targets(self.targets if targets is None else targets)
        if ids is None:
            ids = self.get_ids()
        return MultiEngineExecutor(self._bridge, self._async, ids)
