"""The data path: which form a serialized object takes on the wire, and finding it again.

A serialized object (:class:`ipkernel.frames.Serialized`: a small header and its parts,
the pickle stream and the out-of-band buffers) crosses a PB connection in one of three
forms, chosen by its sender with :func:`payload_for`:

inline
    small payloads (under :data:`INLINE_LIMIT`, see :func:`is_inline`) as frames, a list
    of ``bytes`` inside the message itself.
stream
    an :class:`~ipkernel.wire.outgoing.OutgoingPayload`: the parts follow the message in
    chunks, with credit flow control, relayed by the controller
    (:mod:`ipkernel.wire.stream_protocol`), or over a direct link between the client and
    the engine (a :class:`~ipkernel.wire.direct.DirectPayload`).
shared memory
    a :class:`~ipkernel.wire.shared.SharedPayload`: the sender wrote the parts into a
    segment (:mod:`ipkernel.shm`) and the message carries its handle; the controller
    passes it through, the receiver maps it.

Here too: the transport setting (:func:`transport_mode`, ``$IPKERNEL_TRANSPORT``), an
engine's policy for its large results (:class:`EnginePayloads`), and finding the
payloads inside received arguments (:func:`find_payloads`, :func:`when_received`).
Nothing here unpickles anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipkernel import shm
from ipkernel.errors import SharedMemoryError
from ipkernel.frames import Serialized
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.shared import SharedPayload

__all__ = [
    "INLINE_LIMIT",
    "TRANSPORT_ENV",
    "EnginePayloads",
    "find_payloads",
    "is_inline",
    "payload_for",
    "transport_mode",
    "when_received",
]

#: Payloads smaller than this (in bytes, parts only) travel inline, inside the message.
INLINE_LIMIT = 64 * 1024

#: The environment variable that chooses the transport: ``auto`` (shared memory where
#: possible, the default), ``stream`` (always the network: over a direct link between
#: client and engine where one can be made, see :mod:`ipkernel.wire.direct`, else through
#: the controller) or ``relay`` (always the network, always through the controller).
TRANSPORT_ENV = "IPKERNEL_TRANSPORT"

_log = Logger()


def transport_mode(value: str | None = None) -> str:
    """``'auto'``, ``'stream'`` or ``'relay'``: ``value`` if given, else
    ``$IPKERNEL_TRANSPORT``.

    :raises ValueError: for any other value.
    """
    if value is None:
        value = os.environ.get(TRANSPORT_ENV) or "auto"
    mode = value.strip().lower()
    if mode not in ("auto", "stream", "relay"):
        raise ValueError(
            f"transport must be 'auto', 'stream' or 'relay', not {value!r} (from "
            f"{TRANSPORT_ENV} or the transport option)"
        )
    return mode


def is_inline(serialized: Serialized) -> bool:
    """Whether ``serialized`` travels inline, as frames inside its message (it is under
    :data:`INLINE_LIMIT` bytes); otherwise :func:`payload_for` sends it apart."""
    return serialized.nbytes < INLINE_LIMIT


def payload_for(
    serialized: Serialized, share: bool = False, owner: int | None = None
) -> list[bytes] | SharedPayload | OutgoingPayload:
    """What to put in a message to send ``serialized``: the one choice of its form.

    Frames if it :func:`is_inline`; else, if ``share`` (the receiver can open this
    process's segments, see :func:`ipkernel.shm.same_host`), a new
    :class:`~ipkernel.wire.shared.SharedPayload` naming ``owner`` (the engine that waits
    for its release; None for a client); else, or if no segment can be made (logged), an
    :class:`~ipkernel.wire.outgoing.OutgoingPayload` stream. Never raises for the
    transport: a caller that asked to share and got a stream knows sharing failed.
    """
    if is_inline(serialized):
        return serialized.frames()
    if share:
        try:
            return SharedPayload.write(serialized, owner)
        except SharedMemoryError as exc:
            _log.info("sending through the network, not shared memory: {error}", error=str(exc))
    return OutgoingPayload(serialized)


class EnginePayloads:
    """An engine's payload policy: how its large results leave.

    A result goes as :func:`payload_for` chooses: shared memory when the request's
    ``options`` carry a ``reply_to`` probe of a process on this host that this engine
    can open (see :func:`ipkernel.shm.same_host`) and the transport is not forced to
    ``stream``; the segment is kept by ``keeper`` until the client releases it
    (``release_shm``) or exits.

    :param engine_id: returns the engine's current id (the owner named in handles).
    :param transport: ``'auto'``, ``'stream'`` or ``'relay'``; default
        ``$IPKERNEL_TRANSPORT``.
    """

    def __init__(
        self,
        keeper: shm.SegmentKeeper | None,
        engine_id: Callable[[], int],
        transport: str | None = None,
    ) -> None:
        self.keeper = keeper
        self._engine_id = engine_id
        self.transport = transport_mode(transport)

    def pack(self, serialized: Serialized, options: dict | None, stable: bool = True) -> Any:
        """Frames, a :class:`~ipkernel.wire.shared.SharedPayload` or an
        :class:`~ipkernel.wire.outgoing.OutgoingPayload` for ``serialized``.

        ``stable=False`` says the value's buffers may change before a stream has read
        them (a later task of the same batch runs first): a stream then sends a copy.
        """
        if is_inline(serialized):
            return serialized.frames()
        probe = self._reply_probe(options)
        share = probe is not None and self.keeper is not None
        payload = payload_for(serialized, share, self._engine_id() if share else None)
        if isinstance(payload, SharedPayload):
            assert probe is not None and self.keeper is not None and payload.segment is not None
            self.keeper.keep(payload.segment, probe.pid)
        elif not stable:
            copies = [bytes(part) for part in serialized.parts]
            payload = OutgoingPayload(Serialized.from_parts(serialized.header, copies))
        return payload

    def release(self, tokens: list[str]) -> int:
        """Close the segments a client has opened."""
        return 0 if self.keeper is None else self.keeper.release(tokens)

    def close_all(self) -> None:
        """Close every segment still held (the controller connection is gone)."""
        if self.keeper is not None:
            self.keeper.close_all()

    def _reply_probe(self, options: dict | None) -> shm.Handle | None:
        if self.transport != "auto" or not options:
            return None
        try:
            probe = shm.Handle.from_wire(options.get("reply_to"))
        except ValueError:
            return None
        return probe if shm.same_host(probe) else None


def find_payloads(value: Any, depth: int = 3) -> list[Any]:
    """The received payloads (stream or shared) inside ``value``'s lists, tuples and dicts."""
    found: list[Any] = []
    _find(value, depth, found)
    return found


def _find(value: Any, depth: int, found: list[Any]) -> None:
    if isinstance(value, (ReceivedPayload, SharedPayload)):
        found.append(value)
    elif depth > 0:
        if isinstance(value, (list, tuple)):
            for item in value:
                if type(item) is not bytes:
                    _find(item, depth - 1, found)
        elif isinstance(value, dict):
            for item in value.values():
                _find(item, depth - 1, found)


def when_received(payloads: Sequence[Any]) -> Deferred:
    """Fire once every payload is whole; fail with the first TransferError otherwise."""
    pending = [p.when_received() for p in payloads if isinstance(p, ReceivedPayload)]
    if not pending:
        return succeed(None)
    d = gatherResults(pending, consumeErrors=True)

    def first_error(failure: Failure) -> Failure:
        return failure.value.subFailure  # type: ignore[no-any-return]

    return d.addCallbacks(lambda _: None, first_error)
