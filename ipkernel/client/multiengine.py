"""The MultiEngine client: run code and move data on chosen engines.

:class:`AsyncMultiEngineClient` is the asynchronous client: every method returns a
Deferred and takes an explicit ``targets``. :class:`MultiEngineClient` is what users call:
the same methods, blocking by default, with ``targets``/``block`` defaults taken from the
instance, forwarded through :mod:`ipkernel.client.blocking`.

Large data (see :mod:`ipkernel.wire.transfer`): an object of
:data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more is sent to an engine on this
host (same user) through shared memory, and to other engines as a stream of chunks
relayed by the controller; results come back the same way. ``transport='stream'`` (or
``IPKERNEL_TRANSPORT=stream``) sends everything over the network.
"""

from __future__ import annotations

import collections
import concurrent.futures
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.spread import pb

from ipkernel import paths, shm
from ipkernel.client.blocking import forwarded, get_bridge
from ipkernel.client.interrupts import interrupting
from ipkernel.client.partition import join, split
from ipkernel.client.px import activate
from ipkernel.client.results import PendingResult, ResultList, outcomes_to_results
from ipkernel.errors import SerializationError, SharedMemoryError
from ipkernel.frames import Serialized
from ipkernel.interfaces.multiengine import check_targets
from ipkernel.security import KeyFile, read_key_file
from ipkernel.serialization import deserialize, deserialize_failure, dump
from ipkernel.wire.connect import call_controller, login
from ipkernel.wire.streams import OutgoingPayload, ReceivedPayload
from ipkernel.wire.transfer import INLINE_LIMIT, SharedPayload, transport_mode

Targets = str | int | list[int]


def find_key_file(furl_or_file: str | Path | None, name: str) -> tuple[KeyFile, str]:
    """Read a key file: a path, a ``pb+tls://`` URL, or ``None`` for the default location."""
    if isinstance(furl_or_file, str) and furl_or_file.startswith("pb+tls://"):
        return KeyFile.parse(furl_or_file), "the key given"
    path = Path(furl_or_file) if furl_or_file is not None else paths.security_dir() / name
    return read_key_file(path), str(path)


#: Commands whose results may be large: the client offers to take them through shared
#: memory (see IEngine.call's ``options``).
_REPLY_COMMANDS = frozenset({"pull", "pull_function", "apply"})


class _Turn:
    """A request's place in line (see :class:`_Turns`)."""

    def __init__(self, turns: _Turns) -> None:
        self._turns = turns
        self.request: Callable[[], Deferred] | None = None
        self.done = False
        #: Fires with the request's result once it has been sent and answered.
        self.result: Deferred = Deferred()

    def ready(self, request: Callable[[], Deferred]) -> Deferred:
        """This turn's request is ready: send it when every earlier one has been sent."""
        if not self.done:
            self.request = request
            self._turns.flush()
        return self.result

    def skip(self) -> None:
        """Give up the turn (its call failed before it could send anything)."""
        if not self.done and self.request is None:
            self.request = lambda: succeed(None)
            self._turns.flush()


class _Turns:
    """Requests leave in the order their calls were made.

    A call that must first ask the controller something (the engines' hosts for a large
    push, the target ids for a scatter) reserves its turn when it is made; later calls
    queue behind it until it has sent its request, so a non-blocking large push followed
    by an ``execute`` still reaches each engine's queue first.
    """

    def __init__(self) -> None:
        self._line: collections.deque[_Turn] = collections.deque()

    def reserve(self) -> _Turn:
        turn = _Turn(self)
        self._line.append(turn)
        return turn

    def send(self, request: Callable[[], Deferred]) -> Deferred:
        """Send ``request()`` now, or once the calls before it have sent theirs."""
        if not self._line:
            return request()
        return self.reserve().ready(request)

    def flush(self) -> None:
        line = self._line
        while line and line[0].request is not None:
            turn = line.popleft()
            turn.done = True
            maybeDeferred(turn.request).chainDeferred(turn.result)


class AsyncMultiEngineClient:
    """The MultiEngine interface as Deferreds; build one with :meth:`connect`.

    ``transport`` is ``'auto'`` (shared memory with engines on this host, streams
    otherwise) or ``'stream'`` (always the network); the default is
    ``$IPKERNEL_TRANSPORT``, else ``'auto'``.
    """

    def __init__(
        self,
        avatar: pb.RemoteReference,
        source: str = "the key file",
        transport: str | None = None,
        reactor: Any = None,
    ) -> None:
        self._avatar = avatar
        self.source = source
        self.transport = transport_mode(transport)
        self._turns = _Turns()
        self._reactor = reactor
        # Engine registration infos by id, for choosing how to send large payloads.
        self._engines: dict[int, dict] = {}
        self._shared_ok: dict[int, bool] = {}
        # Engine-made shared-memory results opened here, to release: owner -> tokens.
        self._to_release: dict[int, list[str]] = {}
        streams = getattr(avatar.broker, "streams", None)
        if streams is not None:
            streams.on_shared_opened = self._shared_opened

    @classmethod
    def connect(
        cls,
        reactor: Any,
        keyfile: KeyFile,
        source: str = "the key file",
        transport: str | None = None,
    ) -> Deferred:
        """Log in to the controller of ``keyfile``; fires with a connected client."""
        transport_mode(transport)  # a bad value fails before connecting
        return login(reactor, keyfile, source=source).addCallback(cls, source, transport, reactor)

    def disconnect(self) -> None:
        """Close the connection to the controller."""
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    # Plumbing: every engine call goes through _call / _call_each.

    def _remote(self, method: str, *args: Any) -> Deferred:
        return call_controller(self._avatar, self.source, method, *args)

    def _call(
        self,
        targets: Targets,
        command: str,
        args: list,
        method: str | None = None,
        container: type = list,
    ) -> Deferred:
        check_targets(targets)
        options = self._reply_options(command)
        extra = () if options is None else (options,)
        d = self._turns.send(lambda: self._remote("call", targets, command, args, *extra))
        return d.addCallback(self._results, method or command, container)

    def _call_each(
        self,
        targets: list[int],
        command: str,
        per_target: list,
        method: str,
        turn: _Turn | None = None,
    ) -> Deferred:
        """``command`` with ``per_target[i]`` on ``targets[i]``, in ``turn`` if given."""
        options = self._reply_options(command)
        extra = () if options is None else (options,)

        def request() -> Deferred:
            return self._remote("call_each", targets, command, per_target, *extra)

        d = self._turns.send(request) if turn is None else turn.ready(request)
        return d.addCallback(self._results, method)

    def _results(self, pairs: list, method: str, container: type = list) -> Deferred | list:
        ids = [engine_id for engine_id, _ in pairs]
        outcomes = [outcome for _, outcome in pairs]
        arriving = [
            outcome[1].when_received()
            for outcome in outcomes
            if isinstance(outcome, (list, tuple))
            and len(outcome) == 2
            and isinstance(outcome[1], ReceivedPayload)
        ]

        def decode(_: object = None) -> list:
            # A payload that did not arrive raises its TransferError in deserialize:
            # that target's failure, inside the CompositeError.
            return outcomes_to_results(
                outcomes, ids, method, deserialize, deserialize_failure, container=container
            )

        if not arriving:
            return decode()
        return DeferredList(arriving, consumeErrors=True).addCallback(decode)

    # Large payloads

    def _reply_options(self, command: str) -> dict | None:
        """Offer to take ``command``'s results through shared memory, where that can work."""
        if command not in _REPLY_COMMANDS or self.transport != "auto":
            return None
        probe = shm.local_probe()
        return None if probe is None else {"reply_to": probe.to_wire()}

    def _shared_opened(self, owner: int, token: str) -> None:
        # Called as each engine-made segment is opened here (while the answer is being
        # read); the releases go out together once the answer has been handled.
        if not self._to_release:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            reactor.callLater(0, self._release_shared)
        self._to_release.setdefault(owner, []).append(token)

    def _release_shared(self) -> None:
        batch, self._to_release = self._to_release, {}
        if not batch or self._avatar.broker.disconnected:
            return
        owners = list(batch)
        try:
            d = self._avatar.callRemote(
                "call_each", owners, "release_shm", [[batch[o]] for o in owners]
            )
        except pb.DeadReferenceError:
            return
        # An engine that went away has closed its segments already.
        d.addErrback(lambda f: None)

    def _can_share(self, engine_id: int) -> bool:
        """Whether a payload for ``engine_id`` may go through shared memory."""
        if self.transport != "auto" or not shm.available():
            return False
        known = self._shared_ok.get(engine_id)
        if known is None:
            info = self._engines.get(engine_id) or {}
            known = False
            if info.get("host_id") == shm.host_identity() and info.get("shm_probe"):
                try:
                    known = shm.can_open(shm.Handle.from_wire(info["shm_probe"]))
                except ValueError:
                    known = False
            self._shared_ok[engine_id] = known
        return known

    @inlineCallbacks
    def _engine_ids(self, targets: Targets):
        """The target ids, in order, with their registration infos known here."""
        ids = check_targets(targets)
        if ids is None or any(i not in self._engines for i in ids):
            rows = yield self._remote("get_engine_info", targets)
            for engine_id, info in rows:
                if self._engines.get(engine_id) != info:
                    self._engines[engine_id] = dict(info)
                    self._shared_ok.pop(engine_id, None)
            ids = [engine_id for engine_id, _ in rows]
        return ids

    @inlineCallbacks
    def _send_each(self, ids: list[int], command: str, serialized: list, method: str, turn: _Turn):
        """Run ``command(payload)`` on each target, ``serialized[i]`` going to ``ids[i]``.

        Small payloads go inline; large ones through shared memory where the engine can
        read this process's segments, as streams otherwise. The request leaves in
        ``turn``. Segments are closed, and streams still running aborted, once the
        engines have answered.
        """
        payloads: list[Any] = []
        shared: dict[int, SharedPayload] = {}
        try:
            for engine_id, ser in zip(ids, serialized, strict=True):
                payloads.append(self._payload_for(engine_id, ser, shared))
            per_target = [[p] for p in payloads]
            result = yield self._call_each(ids, command, per_target, method, turn)
        finally:
            turn.skip()
            for payload in payloads:
                if isinstance(payload, OutgoingPayload):
                    payload.cancel("the call ended before the payload was sent")
            for payload in shared.values():
                payload.close()
        return result

    def _payload_for(
        self, engine_id: int, ser: Serialized, shared: dict[int, SharedPayload]
    ) -> Any:
        if ser.nbytes < INLINE_LIMIT:
            return ser.frames()
        if self._can_share(engine_id):
            payload = shared.get(id(ser))
            if payload is None:
                try:
                    payload = shared[id(ser)] = SharedPayload.write(ser)
                except SharedMemoryError:
                    self._shared_ok[engine_id] = False
                    return OutgoingPayload(ser)
            return payload
        return OutgoingPayload(ser)

    def _send_same(self, targets: Targets, command: str, ser: Serialized, method: str) -> Deferred:
        """``command(payload)`` on every target, the same object for all."""
        if ser.nbytes < INLINE_LIMIT:
            return self._call(targets, command, [ser.frames()], method)
        return self._send_large(self._turns.reserve(), targets, command, ser, method)

    @inlineCallbacks
    def _send_large(self, turn: _Turn, targets: Targets, command: str, ser: Serialized, method):
        try:
            ids = yield self._engine_ids(targets)
        except BaseException:
            turn.skip()
            raise
        result = yield self._send_each(ids, command, [ser] * len(ids), method, turn)
        return result

    def _resolve(self, targets: Targets) -> Deferred:
        """The target ids, in order (one round trip for ``'all'``)."""
        ids = check_targets(targets)
        if ids is not None:
            return succeed(ids)
        return self.get_ids()

    def get_engine_info(self, targets: Targets = "all") -> Deferred:
        """Fires with ``{id: info}``: each target's registration info (pid, host, ...)."""
        check_targets(targets)
        return self._remote("get_engine_info", targets).addCallback(
            lambda rows: {engine_id: dict(info) for engine_id, info in rows}
        )

    def transfer_stats(self) -> Deferred:
        """Fires with the controller's open streams and the bytes it holds for them."""
        return self._remote("transfer_stats").addCallback(dict)

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
        """Bind each ``name: value`` of ``namespace`` on the targets; fires with ``[None, ...]``.

        Large values are not copied here before they are sent (except into shared
        memory): with ``block=False``, do not change an array until the call is done.
        """
        check_targets(targets)
        return self._send_same(targets, "push", _serialized(namespace), "push")

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
        check_targets(targets)
        return self._send_same(targets, "push_function", _serialized(namespace), "push_function")

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
        d = self._turns.send(lambda: self._remote("kill", targets, bool(controller)))
        return d.addCallback(lambda pairs: [None] * len(pairs))

    def clear_queue(self, targets: Targets = "all") -> Deferred:
        """Drop queued, not yet started commands on the targets."""
        check_targets(targets)
        return self._turns.send(lambda: self._remote("clear_queue", targets))

    def queue_status(self, targets: Targets = "all") -> Deferred:
        """Fires with ``[(id, {'queue': [...], 'pending': name or None}), ...]``."""
        check_targets(targets)
        d = self._turns.send(lambda: self._remote("queue_status", targets))
        return d.addCallback(lambda rows: [(engine_id, dict(status)) for engine_id, status in rows])

    def set_properties(self, properties: dict, targets: Targets = "all") -> Deferred:
        """Update the targets' properties with ``properties``."""
        return self._call(targets, "set_properties", [_serialized(properties).frames()])

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
        check_targets(targets)
        turn = self._turns.reserve()  # before asking for the ids: keeps calls in order
        try:
            ids = yield self._resolve(targets)
            parts = split(seq, len(ids))
            serialized = [_serialized({key: part}) for part in parts]
            if all(ser.nbytes < INLINE_LIMIT for ser in serialized):
                per_target = [[ser.frames()] for ser in serialized]
                result = yield self._call_each(ids, "push", per_target, "scatter", turn)
            else:
                yield self._engine_ids(ids)
                result = yield self._send_each(ids, "push", serialized, "scatter", turn)
        finally:
            turn.skip()
        return result

    def gather(self, key: str, targets: Targets = "all") -> Deferred:
        """Concatenate each target's ``key`` back together, in target order."""
        return self._call(targets, "pull", [_key_list(key)], "gather").addCallback(join)

    @inlineCallbacks
    def map(self, func: Callable, seq: Sequence, targets: Targets = "all"):
        """``[func(x) for x in seq]``, computed on the targets (one part each), in order."""
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        check_targets(targets)
        turn = self._turns.reserve()  # before asking for the ids: keeps calls in order
        try:
            ids = yield self._resolve(targets)
            parts = split(seq, len(ids))
            serialized = [dump((func, part)) for part in parts]
            if all(ser.nbytes < INLINE_LIMIT for ser in serialized):
                per_target = [[ser.frames()] for ser in serialized]
                results = yield self._call_each(ids, "apply", per_target, "map", turn)
            else:
                yield self._engine_ids(ids)
                results = yield self._send_each(ids, "apply", serialized, "map", turn)
        finally:
            turn.skip()
        return join(results) if _is_array(seq) else [x for part in results for x in part]

    def interrupt(self, targets: Targets = "all") -> Deferred:
        """Raise ``KeyboardInterrupt`` in the code running on the targets now (sent past
        the queues: queued work still runs, namespaces stay); fires with ``[None, ...]``."""
        check_targets(targets)
        return self._remote("interrupt", targets).addCallback(self._results, "interrupt")


def _serialized(namespace: dict) -> Serialized:
    if not isinstance(namespace, dict):
        raise TypeError(f"expected a dict of names to values, not {type(namespace).__name__}")
    for key in namespace:
        if not isinstance(key, str):
            raise TypeError(f"names must be strings, not {key!r}")
    try:
        return dump(namespace)
    except SerializationError:
        # Name the value that failed: serializing each one alone says which.
        for key, value in namespace.items():
            dump(value, name=key)
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
    untargeted=("get_ids", "get_engine_info", "transfer_stats"),
)
class MultiEngineClient:
    """The MultiEngine client (blocking by default).

    ``MultiEngineClient()`` reads ``<security-dir>/ipcontroller-mec.furl``; pass a path
    (or the key's URL) to use another. ``targets`` (default ``'all'``) and ``block``
    (default ``True``) are the defaults of every method that acts on engines; each call
    can override them with the keywords of the same names. ``transport='stream'`` sends
    large data over the network even to engines on this host (default: ``'auto'``, or
    ``$IPKERNEL_TRANSPORT``).
    """

    def __init__(
        self,
        furl_or_file: str | Path | None = None,
        *,
        timeout: float = 10.0,
        transport: str | None = None,
    ) -> None:
        keyfile, source = find_key_file(furl_or_file, paths.MEC_FURL)
        self._bridge = get_bridge()
        self._async: AsyncMultiEngineClient = self._bridge.call(
            AsyncMultiEngineClient.connect, self._bridge.reactor, keyfile, source, transport
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
        return parallel_decorator(self.mapper(targets=targets, block=block))

    def close(self) -> None:
        """Disconnect from the controller."""
        self._bridge.reactor.callFromThread(self._async.disconnect)

    def activate(self) -> None:
        """Make this client the one the IPython magics (``%px``, ``%autopx``, ``%result``)
        use, loading them into the running IPython or Jupyter; RuntimeError outside."""
        activate(self)


def parallel_decorator(mapper: Any) -> Callable[[Callable], Callable]:
    """A decorator turning ``f`` into ``seq -> mapper.map(f, seq)`` (``parallel()``)."""

    def decorate(func: Callable) -> Callable:
        def parallel_func(seq: Sequence) -> Any:
            return mapper.map(func, seq)

        parallel_func.__name__ = getattr(func, "__name__", "parallel_func")
        parallel_func.__doc__ = func.__doc__
        return parallel_func

    return decorate


class Mapper:
    """``map`` with fixed ``targets`` and ``block`` (see ``mapper()``)."""

    def __init__(self, client: Any, targets: Targets | None, block: bool | None) -> None:
        self.client = client
        self.targets = targets
        self.block = block

    def map(self, func: Callable, seq: Sequence) -> Any:
        """``[func(x) for x in seq]`` on the chosen targets."""
        return self.client.map(func, seq, targets=self.targets, block=self.block)
