"""The MultiEngine client: run code and move data on chosen engines.

:class:`AsyncMultiEngineClient` is the asynchronous client: every method returns a
Deferred and takes an explicit ``targets``. :class:`MultiEngineClient` is what users call:
the same methods, blocking by default, with ``targets``/``block`` defaults taken from the
instance, forwarded through :mod:`ipkernel.client.blocking`.
"""

from __future__ import annotations

import concurrent.futures
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.spread import pb

from ipkernel import paths
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.partition import join, split
from ipkernel.client.results import PendingResult, ResultList, outcomes_to_results
from ipkernel.controller.registry import check_targets
from ipkernel.errors import SerializationError
from ipkernel.security import KeyFile, read_key_file
from ipkernel.serialization import deserialize, deserialize_failure, serialize
from ipkernel.wire.connect import login
from ipkernel.wire.errors import exception_from_failure

Targets = str | int | list[int]


def find_key_file(furl_or_file: str | Path | None, name: str) -> tuple[KeyFile, str]:
    """Read a key file: a path, a ``pb+tls://`` URL, or ``None`` for the default location."""
    if isinstance(furl_or_file, str) and furl_or_file.startswith("pb+tls://"):
        return KeyFile.parse(furl_or_file), "the key given"
    path = Path(furl_or_file) if furl_or_file is not None else paths.security_dir() / name
    return read_key_file(path), str(path)


class AsyncMultiEngineClient:
    """The MultiEngine interface as Deferreds; build one with :meth:`connect`."""

    def __init__(self, avatar: pb.RemoteReference, source: str = "the key file") -> None:
        self._avatar = avatar
        self.source = source

    @classmethod
    def connect(cls, reactor: Any, keyfile: KeyFile, source: str = "the key file") -> Deferred:
        """Log in to the controller of ``keyfile``; fires with a connected client."""
        return login(reactor, keyfile, source=source).addCallback(cls, source)

    def disconnect(self) -> None:
        """Close the connection to the controller."""
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    # Plumbing: every engine call goes through _call / _call_each.

    def _remote(self, method: str, *args: Any) -> Deferred:
        try:
            d = self._avatar.callRemote(method, *args)
        except pb.DeadReferenceError:
            from ipkernel.errors import ControllerUnreachable

            raise ControllerUnreachable(
                f"the connection to the controller ({self.source}) is closed; create a new client"
            ) from None
        return d.addErrback(_translate)

    def _call(
        self,
        targets: Targets,
        command: str,
        args: list,
        method: str | None = None,
        container: type = list,
    ) -> Deferred:
        check_targets(targets)
        d = self._remote("call", targets, command, args)
        return d.addCallback(self._results, method or command, container)

    def _call_each(
        self, targets: list[int], command: str, per_target: list, method: str
    ) -> Deferred:
        d = self._remote("call_each", targets, command, per_target)
        return d.addCallback(self._results, method)

    @staticmethod
    def _results(pairs: list, method: str, container: type = list) -> list:
        ids = [engine_id for engine_id, _ in pairs]
        outcomes = [outcome for _, outcome in pairs]
        return outcomes_to_results(
            outcomes, ids, method, deserialize, deserialize_failure, container=container
        )

    def _resolve(self, targets: Targets) -> Deferred:
        """The target ids, in order (one round trip for ``'all'``)."""
        ids = check_targets(targets)
        if ids is not None:
            return succeed(ids)
        return self.get_ids()

    # The MultiEngine interface.

    def get_ids(self) -> Deferred:
        """Fires with the registered engine ids, ascending."""
        return self._remote("get_ids")

    def execute(self, code: str, targets: Targets = "all") -> Deferred:
        """Run ``code`` on the targets; fires with a :class:`ResultList` of result dicts."""
        if not isinstance(code, str):
            raise TypeError(f"execute() needs a string of code, not {type(code).__name__}")
        return self._call(targets, "execute", [code], container=ResultList)

    def run(self, filename: str | Path, targets: Targets = "all") -> Deferred:
        """Execute the contents of the local file ``filename`` on the targets."""
        return self.execute(Path(filename).read_text(), targets)

    def push(self, namespace: dict, targets: Targets = "all") -> Deferred:
        """Bind each ``name: value`` of ``namespace`` on the targets; fires with ``[None, ...]``."""
        return self._call(targets, "push", [_frames(namespace)])

    def pull(self, keys: str | Sequence[str], targets: Targets = "all") -> Deferred:
        """Fetch one name (``[v0, v1, ...]``) or several (``[[a0, b0], [a1, b1], ...]``)."""
        return self._call(targets, "pull", [_key_list(keys)])

    def zip_pull(self, keys: Sequence[str], targets: Targets = "all") -> Deferred:
        """Like ``pull`` of several names, grouped by name: ``[(a0, a1, ...), (b0, ...)]``."""
        keys = _key_list(keys)
        if isinstance(keys, str):
            keys = [keys]
        return self.pull(keys, targets).addCallback(lambda rows: list(zip(*rows, strict=True)))

    def push_function(self, namespace: dict, targets: Targets = "all") -> Deferred:
        """Bind functions on the targets (sent by value, closures included)."""
        return self._call(targets, "push_function", [_frames(namespace)])

    def pull_function(self, keys: str | Sequence[str], targets: Targets = "all") -> Deferred:
        """Fetch functions defined on the targets."""
        return self._call(targets, "pull_function", [_key_list(keys)])

    def get_result(self, i: int | None = None, targets: Targets = "all") -> Deferred:
        """The stored result dict of execution ``i`` (the last by default) on each target."""
        return self._call(targets, "get_result", [i], container=ResultList)

    def reset(self, targets: Targets = "all") -> Deferred:
        """Empty the targets' namespaces (``id`` and ``mpi`` are bound again)."""
        return self._call(targets, "reset", [])

    def keys(self, targets: Targets = "all") -> Deferred:
        """The names bound in each target's namespace."""
        return self._call(targets, "keys", [])

    def kill(self, controller: bool = False, targets: Targets = "all") -> Deferred:
        """Stop the target engines, and the controller too with ``controller=True``."""
        check_targets(targets)
        return self._remote("kill", targets, bool(controller)).addCallback(
            lambda pairs: [None] * len(pairs)
        )

    def clear_queue(self, targets: Targets = "all") -> Deferred:
        """Drop queued, not yet started commands on the targets."""
        check_targets(targets)
        return self._remote("clear_queue", targets)

    def queue_status(self, targets: Targets = "all") -> Deferred:
        """Fires with ``[(id, {'queue': [...], 'pending': name or None}), ...]``."""
        check_targets(targets)
        return self._remote("queue_status", targets).addCallback(
            lambda rows: [(engine_id, dict(status)) for engine_id, status in rows]
        )

    def set_properties(self, properties: dict, targets: Targets = "all") -> Deferred:
        """Update the targets' properties with ``properties``."""
        return self._call(targets, "set_properties", [_frames(properties)])

    def get_properties(
        self, keys: Sequence[str] | None = None, targets: Targets = "all"
    ) -> Deferred:
        """Each target's properties dict (only ``keys`` when given)."""
        return self._call(targets, "get_properties", [None if keys is None else _key_list(keys)])

    def has_properties(self, keys: str | Sequence[str], targets: Targets = "all") -> Deferred:
        """For each target, whether it has each key."""
        return self._call(targets, "has_properties", [_key_list(keys)])

    def del_properties(self, keys: str | Sequence[str], targets: Targets = "all") -> Deferred:
        """Remove properties on the targets."""
        return self._call(targets, "del_properties", [_key_list(keys)])

    def clear_properties(self, targets: Targets = "all") -> Deferred:
        """Remove every property on the targets."""
        return self._call(targets, "clear_properties", [])

    @inlineCallbacks
    def scatter(self, key: str, seq: Sequence, targets: Targets = "all"):
        """Split ``seq`` into contiguous near-equal parts, one per target, bound to ``key``.

        Parts differ in size by at most one, larger first, in target order.
        """
        _key_list(key)
        ids = yield self._resolve(targets)
        parts = split(seq, len(ids))
        per_target = [[_frames({key: part})] for part in parts]
        result = yield self._call_each(ids, "push", per_target, "scatter")
        return result

    def gather(self, key: str, targets: Targets = "all") -> Deferred:
        """Concatenate each target's ``key`` back together, in target order."""
        return self._call(targets, "pull", [_key_list(key)], "gather").addCallback(join)

    @inlineCallbacks
    def map(self, func: Callable, seq: Sequence, targets: Targets = "all"):
        """``[func(x) for x in seq]``, computed on the targets (one part each), in order."""
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        ids = yield self._resolve(targets)
        parts = split(seq, len(ids))
        per_target = [[serialize((func, part))] for part in parts]
        results = yield self._call_each(ids, "apply", per_target, "map")
        return join(results) if _is_array(seq) else [x for part in results for x in part]


def _translate(failure):
    """Raise the client-side exception for a failed remote call."""
    raise exception_from_failure(failure)


def _frames(namespace: dict) -> list[bytes]:
    if not isinstance(namespace, dict):
        raise TypeError(f"expected a dict of names to values, not {type(namespace).__name__}")
    for key in namespace:
        if not isinstance(key, str):
            raise TypeError(f"names must be strings, not {key!r}")
    try:
        return serialize(namespace)
    except SerializationError:
        # Name the value that failed: serializing each one alone says which.
        for key, value in namespace.items():
            serialize(value, name=key)
        raise


def _key_list(keys: str | Iterable[str]) -> str | list[str]:
    if isinstance(keys, str):
        return keys
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"names must be strings, not {key!r}")
    return keys


def _is_array(seq: object) -> bool:
    return type(seq).__module__ == "numpy" and type(seq).__name__ == "ndarray"


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
    ),
    untargeted=("get_ids",),
)
class MultiEngineClient:
    """The MultiEngine client (blocking by default).

    ``MultiEngineClient()`` reads ``<security-dir>/ipcontroller-mec.furl``; pass a path
    (or the key's URL) to use another. ``targets`` (default ``'all'``) and ``block``
    (default ``True``) are the defaults of every method that acts on engines; each call
    can override them with the keywords of the same names.
    """

    def __init__(self, furl_or_file: str | Path | None = None, *, timeout: float = 10.0) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.MEC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncMultiEngineClient = self._bridge.call(
            AsyncMultiEngineClient.connect, self._bridge.reactor, keyfile, source
        )
        self.targets: Targets = "all"
        self.block: bool = True
        self._pending: weakref.WeakSet[PendingResult] = weakref.WeakSet()

    def __getitem__(self, key: str) -> Any:
        """``mec['a']`` pulls ``a`` from the current targets."""
        return self.pull(key)

    def __setitem__(self, key: str, value: Any) -> None:
        """``mec['a'] = v`` pushes ``a = v`` to the current targets."""
        self.push({key: value})

    def barrier(self, pending_results: Iterable[PendingResult]) -> None:
        """Wait until every :class:`PendingResult` given is done (errors are not raised)."""
        concurrent.futures.wait([pr.future for pr in pending_results])

    def flush(self) -> None:
        """Drop the results this client's non-blocking calls hold (others' are untouched)."""
        pending, self._pending = self._pending, weakref.WeakSet()
        for pr in pending:
            pr.forget()

    def mapper(self, dist: str = "b", targets: Targets | None = None, block: bool | None = None):
        """An object whose ``map`` uses these settings (``dist='b'``: contiguous blocks)."""
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        return Mapper(self, targets, block)

    def parallel(self, targets: Targets | None = None, block: bool | None = None):
        """Decorator: ``@mec.parallel()`` turns ``f`` into ``seq -> map(f, seq)``."""
        mapper = self.mapper(targets=targets, block=block)

        def decorate(func: Callable) -> Callable:
            def parallel_func(seq: Sequence) -> Any:
                return mapper.map(func, seq)

            parallel_func.__name__ = getattr(func, "__name__", "parallel_func")
            parallel_func.__doc__ = func.__doc__
            return parallel_func

        return decorate

    def close(self) -> None:
        """Disconnect from the controller."""
        self._bridge.reactor.callFromThread(self._async.disconnect)


class Mapper:
    """``map`` with fixed ``targets`` and ``block`` (see ``mapper()``)."""

    def __init__(self, client: Any, targets: Targets | None, block: bool | None) -> None:
        self.client = client
        self.targets = targets
        self.block = block

    def map(self, func: Callable, seq: Sequence) -> Any:
        """``[func(x) for x in seq]`` on the chosen targets."""
        return self.client.map(func, seq, targets=self.targets, block=self.block)
