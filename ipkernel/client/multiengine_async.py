"""The asynchronous MultiEngine client: run code and move data on chosen engines, as
Deferreds, for Twisted code.

::

    mec = yield AsyncMultiEngineClient.connect(reactor, read_key_file(path))
    yield mec.execute("a = id * 2")
    values = yield mec.pull("a", targets=[0, 1])

Every method returns a Deferred and takes an explicit ``targets``. Requests leave in the
order the calls were made (:mod:`ipkernel.client.ordering`); large data goes through
shared memory to engines on this host and as streams to others
(:mod:`ipkernel.client.engine_payloads`). The blocking
:class:`~ipkernel.client.multiengine_blocking.MultiEngineClient` forwards to this one.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks
from twisted.spread import pb

from ipkernel.client.connection import ControllerConnection
from ipkernel.client.engine_payloads import EnginePayloads
from ipkernel.client.executors import call_function
from ipkernel.client.ordering import Turn, Turns
from ipkernel.client.partition import ListPart, join, join_owned, split_lazily
from ipkernel.client.results import ResultList, outcomes_to_results
from ipkernel.errors import SerializationError
from ipkernel.frames import Serialized
from ipkernel.interfaces.multiengine import check_targets
from ipkernel.security import KeyFile
from ipkernel.security.roles import MULTIENGINE
from ipkernel.serialization import deserialize, deserialize_failure, dump
from ipkernel.wire.connect import login
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.transfer import is_inline, transport_mode

__all__ = ["AsyncMultiEngineClient", "Targets"]

#: What ``targets`` may be: ``'all'``, an engine id, or a list of ids.
Targets = str | int | list[int]


class AsyncMultiEngineClient(ControllerConnection):
    """The MultiEngine interface as Deferreds; build one with :meth:`connect`.

    Call its methods from the thread of ``reactor``, the reactor its connection runs in
    (it also schedules the release of engines' shared-memory results). ``transport`` is
    ``'auto'`` (shared memory with engines on this host, streams otherwise), ``'stream'``
    (always the network: direct links to engines where possible) or ``'relay'`` (always
    through the controller); the default is ``$IPKERNEL_TRANSPORT``, else ``'auto'``.
    """

    def __init__(
        self,
        avatar: pb.RemoteReference,
        reactor: Any,
        source: str = "the key file",
        transport: str | None = None,
    ) -> None:
        super().__init__(avatar, source)
        self._payloads = EnginePayloads(avatar, reactor, transport)
        self._turns = Turns()

    @property
    def transport(self) -> str:
        """How large data travels: ``'auto'``, ``'stream'`` or ``'relay'``."""
        return self._payloads.transport

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
        d = login(reactor, keyfile, MULTIENGINE, source=source)
        return d.addCallback(cls, reactor, source, transport)

    # Plumbing: every engine call goes through _call / _call_each.

    def _count_engines(self, rows: list, targets: Targets) -> list:
        """Keep how many engines an answer for ``'all'`` covers (for ``repr``)."""
        if targets == "all":
            self.last_engine_count = len(rows)
        return rows

    def _call(
        self,
        targets: Targets,
        command: str,
        args: list,
        method: str | None = None,
        container: type = list,
    ) -> Deferred:
        check_targets(targets)
        options = self._payloads.reply_options(command, targets)
        extra = () if options is None else (options,)
        d = self._turns.send(lambda: self._remote("call", targets, command, args, *extra))
        d.addCallback(self._count_engines, targets)
        return d.addCallback(self._results, method or command, container)

    def _call_each(
        self,
        targets: list[int],
        command: str,
        per_target: list,
        method: str,
        turn: Turn | None = None,
    ) -> Deferred:
        """``command`` with ``per_target[i]`` on ``targets[i]``, in ``turn`` if given."""
        options = self._payloads.reply_options(command, targets)
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

    # Large payloads (see ipkernel.client.engine_payloads)

    @inlineCallbacks
    def _send_each(
        self,
        ids: list[int],
        command: str,
        serialized: list,
        method: str,
        turn: Turn,
        extra: Sequence = (),
    ):
        """Run ``command(payload, *extra)`` on each target, ``serialized[i]`` going to
        ``ids[i]``.

        The request leaves in ``turn``. Segments are closed, and streams still running
        aborted, once the engines have answered.
        """
        payloads: list[Any] = []
        try:
            payloads = self._payloads.pack(ids, serialized)
            per_target = [[p, *extra] for p in payloads]
            result = yield self._call_each(ids, command, per_target, method, turn)
        finally:
            turn.skip()
            self._payloads.sent(payloads)
        return result

    @inlineCallbacks
    def _send_pipelined(
        self,
        ids: list[int],
        command: str,
        serialize: Callable[[int], Serialized],
        method: str,
        turn: Turn,
    ):
        """Run ``command(payload)`` on each target, ``serialize(i)`` going to ``ids[i]``,
        one request per target, in ``turn``: each request leaves (the transport writes at
        once) before the next payload is serialized. Fires as :meth:`_call_each` would.
        """
        payloads: list[Any] = []
        options = self._payloads.reply_options(command, ids)
        extra = () if options is None else (options,)

        def request() -> Deferred:
            calls = []
            for index, engine_id in enumerate(ids):
                try:
                    payloads.extend(self._payloads.pack([engine_id], [serialize(index)]))
                except BaseException:
                    for call in calls:  # their answers are dropped with this failure
                        call.addErrback(lambda f: None)
                    raise
                calls.append(
                    self._remote("call_each", [engine_id], command, [[payloads[-1]]], *extra)
                )
            d = gatherResults(calls, consumeErrors=True)
            d.addErrback(lambda failure: failure.value.subFailure)
            return d.addCallback(lambda rows: [pair for row in rows for pair in row])

        try:
            pairs = yield turn.ready(request)
        finally:
            turn.skip()
            self._payloads.sent(payloads)
        result = yield self._results(pairs, method)
        return result

    def _send_same(
        self, targets: Targets, command: str, ser: Serialized, method: str, extra: Sequence = ()
    ) -> Deferred:
        """``command(payload, *extra)`` on every target, the same object for all."""
        if is_inline(ser):
            return self._call(targets, command, [ser.frames(), *extra], method)
        return self._send_large(self._turns.reserve(), targets, command, ser, method, extra)

    @inlineCallbacks
    def _send_large(
        self, turn: Turn, targets: Targets, command: str, ser: Serialized, method, extra
    ):
        try:
            ids = yield self._payloads.engine_ids(self._remote, targets)
        except BaseException:
            turn.skip()
            raise
        result = yield self._send_each(ids, command, [ser] * len(ids), method, turn, extra)
        return result

    @inlineCallbacks
    def _resolve(self, targets: Targets):
        """The target ids, in order (one round trip for ``'all'``).

        Fails with the controller's :class:`~ipkernel.errors.NoEnginesRegistered` when
        ``'all'`` finds no engine.
        """
        ids = check_targets(targets)
        if ids is None:
            ids = yield self.get_ids()
            if not ids:
                # Asked to resolve 'all' itself, the controller fails with its error (or,
                # should an engine have registered meanwhile, gives its id).
                ids = yield self._payloads.engine_ids(self._remote, targets)
        return ids

    def get_engine_info(self, targets: Targets = "all") -> Deferred:
        """Fires with ``{id: info}``: each target's registration info (pid, host, ...)."""
        check_targets(targets)
        d = self._remote("get_engine_info", targets).addCallback(self._count_engines, targets)
        return d.addCallback(lambda rows: {engine_id: dict(info) for engine_id, info in rows})

    def transfer_stats(self) -> Deferred:
        """Fires with the controller's open streams and the bytes it holds for them."""
        return self._remote("transfer_stats").addCallback(dict)

    # The MultiEngine interface.

    def get_ids(self) -> Deferred:
        """Fires with the registered engine ids, ascending."""
        return self._remote("get_ids").addCallback(self._count_engines, "all")

    def execute(self, code: str, targets: Targets = "all") -> Deferred:
        """Run ``code`` on the targets; fires with a :class:`ResultList` of result dicts."""
        if not isinstance(code, str):
            raise TypeError(f"execute() needs a string of code, not {type(code).__name__}")
        return self._call(targets, "execute", [code], container=ResultList)

    def run(self, filename: str | Path, targets: Targets = "all") -> Deferred:
        """Execute the contents of the local file ``filename`` on the targets."""
        return self.execute(Path(filename).read_text(), targets)

    def push(self, namespace: dict, targets: Targets = "all", share: bool = False) -> Deferred:
        """Bind each ``name: value`` of ``namespace`` on the targets; fires with ``[None, ...]``.

        Large values are not copied here before they are sent (except into shared
        memory): with ``block=False``, do not change an array until the call is done.

        ``share=True`` pushes read-only data: numpy arrays (and anything else pickled
        out of band) arrive read-only, a ``bytes`` value arrives as a read-only
        ``memoryview``. Engines on this host then all map the one shared-memory copy this
        call writes, and none can change it (a write raises ``ValueError: assignment
        destination is read-only``), so it is never copied there: pushing 1 GB to 8
        local engines costs the machine about 1 GB. Engines elsewhere get their own
        (read-only) copy as usual.
        """
        check_targets(targets)
        if share:
            namespace = _shareable(namespace)
        extra = [True] if share else []
        return self._send_same(targets, "push", _serialized(namespace), "push", extra)

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
        d.addCallback(self._count_engines, targets)
        return d.addCallback(lambda pairs: [None] * len(pairs))

    def clear_queue(self, targets: Targets = "all") -> Deferred:
        """Drop queued, not yet started commands on the targets."""
        check_targets(targets)
        return self._turns.send(lambda: self._remote("clear_queue", targets))

    def queue_status(self, targets: Targets = "all") -> Deferred:
        """Fires with ``[(id, {'queue': [...], 'pending': name or None}), ...]``."""
        check_targets(targets)
        d = self._turns.send(lambda: self._remote("queue_status", targets))
        d.addCallback(self._count_engines, targets)
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

        Parts differ in size by at most one, larger first, in target order. Large parts
        are pickled one after the other, each sent as soon as it is ready, so an engine
        unpickles its part while the next is being pickled; if a part cannot be
        serialized, the engines before it have had theirs. A list is read while its
        parts are pickled: with ``block=False``, do not change it until the call is done.
        """
        _key_list(key)
        check_targets(targets)
        turn = self._turns.reserve()  # before asking for the ids: keeps calls in order
        try:
            ids = yield self._resolve(targets)
            parts = split_lazily(seq, len(ids))
            serialized = [_serialized({key: parts[0]})]
            if is_inline(serialized[0]):
                serialized += [_serialized({key: part}) for part in parts[1:]]
            if all(is_inline(ser) for ser in serialized) and len(serialized) == len(ids):
                per_target = [[ser.frames()] for ser in serialized]
                result = yield self._call_each(ids, "push", per_target, "scatter", turn)
            else:
                yield self._payloads.engine_ids(self._remote, ids)
                made = serialized + [None] * (len(ids) - len(serialized))

                def serialize(index: int) -> Serialized:
                    ser = made[index]
                    if ser is None:
                        ser = _serialized({key: parts[index]})
                    made[index] = parts[index] = None  # each part freed once it has left
                    return ser

                result = yield self._send_pipelined(ids, "push", serialize, "scatter", turn)
        finally:
            turn.skip()
        return result

    def gather(self, key: str, targets: Targets = "all") -> Deferred:
        """Concatenate each target's ``key`` back together, in target order."""
        return self._call(targets, "pull", [_key_list(key)], "gather").addCallback(join_owned)

    @inlineCallbacks
    def map(self, func: Callable, seq: Sequence, targets: Targets = "all"):
        """``[func(x) for x in seq]``, computed on the targets (one part each), in order."""
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        check_targets(targets)
        turn = self._turns.reserve()  # before asking for the ids: keeps calls in order
        try:
            ids = yield self._resolve(targets)
            parts = split_lazily(seq, len(ids))
            serialized = [dump((func, part)) for part in parts]
            if all(is_inline(ser) for ser in serialized):
                per_target = [[ser.frames()] for ser in serialized]
                results = yield self._call_each(ids, "apply", per_target, "map", turn)
            else:
                yield self._payloads.engine_ids(self._remote, ids)
                results = yield self._send_each(ids, "apply", serialized, "map", turn)
        finally:
            turn.skip()
        return join(results) if _is_array(seq) else [x for part in results for x in part]

    def apply(
        self,
        func: Callable,
        args: Sequence = (),
        kwargs: dict | None = None,
        targets: Targets = "all",
    ) -> Deferred:
        """``func(*args, **kwargs)`` on each target (in its ``__main__``); fires with the
        return values in target order, or fails with a ``CompositeError``."""
        check_targets(targets)
        call = dump((call_function, [(func, tuple(args), dict(kwargs or {}))]))
        d = self._send_same(targets, "apply", call, "apply")
        return d.addCallback(lambda rows: [row[0] for row in rows])

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
            dump(list(value) if isinstance(value, ListPart) else value, name=key)
        raise


def _shareable(namespace: dict) -> dict:
    """``namespace`` with each ``bytes`` value wrapped to travel out of band (so that it
    can be shared, as a read-only ``memoryview``, instead of rebuilt on each engine)."""
    if not isinstance(namespace, dict):
        return namespace  # _serialized says what is wrong
    return {
        key: pickle.PickleBuffer(value) if type(value) is bytes else value
        for key, value in namespace.items()
    }


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
