"""Large payloads on the wire: which form an object takes, and shared-memory payloads.

A serialized object (:class:`ipkernel.serialization.Serialized`: a small header and its
parts, the pickle stream and the out-of-band buffers) crosses a PB connection in one of
three forms, chosen by its sender:

inline
    small payloads (under :data:`INLINE_LIMIT`) as frames, a list of ``bytes`` inside the
    message itself.
stream
    an :class:`~ipkernel.wire.streams.OutgoingPayload`: the parts follow the message in
    chunks, with credit flow control, relayed by the controller (:mod:`ipkernel.wire.streams`).
shared memory
    a :class:`SharedPayload`: the sender wrote the parts into a segment
    (:mod:`ipkernel.shm`) and the message carries its handle; the controller passes it
    through, the receiver maps it.

Here: the transport setting (:func:`transport_mode`, ``$IPKERNEL_TRANSPORT``), the
shared-memory payload and how its reference unjellies, an engine's policy for its large
results (:class:`EnginePayloads`), and finding the payloads inside received arguments
(:func:`find_payloads`, :func:`when_received`). Nothing here unpickles anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread.jelly import InsecureJelly, Jellyable, setUnjellyableForClass

from ipkernel import shm
from ipkernel.errors import SerializationError, SharedMemoryError
from ipkernel.frames import Serialized, read_header
from ipkernel.wire.streams import OutgoingPayload, ReceivedPayload, authenticated_table

__all__ = [
    "INLINE_LIMIT",
    "TRANSPORT_ENV",
    "EnginePayloads",
    "SharedPayload",
    "find_payloads",
    "transport_mode",
    "when_received",
]

#: Payloads smaller than this (in bytes, parts only) travel inline, inside the message.
INLINE_LIMIT = 64 * 1024

#: The environment variable that chooses the transport: ``auto`` (shared memory where
#: possible, the default) or ``stream`` (always the network).
TRANSPORT_ENV = "IPKERNEL_TRANSPORT"

SHARED_TYPE = b"ipkernel.shared"

_log = Logger()


def transport_mode(value: str | None = None) -> str:
    """``'auto'`` or ``'stream'``: ``value`` if given, else ``$IPKERNEL_TRANSPORT``.

    :raises ValueError: for any other value.
    """
    if value is None:
        value = os.environ.get(TRANSPORT_ENV) or "auto"
    mode = value.strip().lower()
    if mode not in ("auto", "stream"):
        raise ValueError(
            f"transport must be 'auto' or 'stream', not {value!r} (from {TRANSPORT_ENV} "
            "or the transport option)"
        )
    return mode


class SharedPayload(Jellyable):
    """A payload in a shared-memory segment: the header, the segment's handle and layout.

    Made by the sender (:meth:`write`), which keeps the segment open until the receiver
    has opened it. The controller passes it through. A client or an engine opens it as
    soon as it arrives; :meth:`open` gives the header and the parts (private mappings of
    the segment, see :func:`ipkernel.shm.map_parts`). ``owner`` is the id of the engine
    that made it (it waits for a release), or None when a client made it.
    """

    def __init__(
        self,
        header: bytes,
        handle: shm.Handle,
        offsets: list[int],
        owner: int | None = None,
        segment: shm.Segment | None = None,
    ) -> None:
        self.header = header
        self.handle = handle
        self.offsets = offsets
        self.owner = owner
        #: The sender's segment (on the sending side only).
        self.segment = segment
        self._parts: list[Any] | None = None
        self._error: BaseException | None = None

    @classmethod
    def write(cls, serialized: Serialized, owner: int | None = None) -> SharedPayload:
        """Write ``serialized`` into a new segment.

        :raises SharedMemoryError: if no segment can be made.
        """
        segment = shm.Segment.write(serialized.parts)
        return cls(serialized.header, segment.handle, segment.offsets, owner, segment)

    @property
    def nbytes(self) -> int:
        return self.handle.size

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        owner = -1 if self.owner is None else self.owner
        handle = jellier.jelly(self.handle.to_wire())
        return [SHARED_TYPE, self.header, handle, jellier.jelly(list(self.offsets)), owner]

    def map(self) -> None:
        """Open and map the segment now (once); errors are kept for :meth:`open`."""
        if self._parts is not None or self._error is not None:
            return
        try:
            lengths = read_header(self.header)
            if len(lengths) != len(self.offsets):
                raise SharedMemoryError("a segment handle that does not match its header")
            self._parts = shm.map_parts(self.handle, self.offsets, lengths)
        except (SharedMemoryError, SerializationError) as exc:
            self._error = exc

    def when_received(self) -> Deferred:
        return succeed(self)

    def open(self) -> tuple[bytes, list[Any]]:
        """The header and the mapped parts; raises SharedMemoryError if it cannot be read."""
        self.map()
        if self._error is not None:
            raise self._error
        assert self._parts is not None
        return self.header, self._parts

    def close(self) -> None:
        """Sender side: close the segment (receivers that opened it keep their copy)."""
        if self.segment is not None:
            self.segment.close()


class EnginePayloads:
    """An engine's payload policy: how its large results leave.

    A result under :data:`INLINE_LIMIT` bytes goes inline. A larger one goes through
    shared memory when the request's ``options`` carry a ``reply_to`` probe that this
    engine can open (the client is on this host, as this user) and the transport is not
    forced to ``stream``; the segment is kept by ``keeper`` until the client releases it
    (``release_shm``) or exits. Otherwise it is streamed.

    :param engine_id: returns the engine's current id (the owner named in handles).
    :param transport: ``'auto'`` or ``'stream'``; default ``$IPKERNEL_TRANSPORT``.
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

    def pack(self, serialized: Serialized, options: dict | None) -> Any:
        """Frames, a :class:`SharedPayload` or an :class:`OutgoingPayload`."""
        if serialized.nbytes < INLINE_LIMIT:
            return serialized.frames()
        probe = self._reply_probe(options)
        if probe is not None and self.keeper is not None:
            try:
                payload = SharedPayload.write(serialized, owner=self._engine_id())
            except SharedMemoryError as exc:
                _log.info("answering through the network: {error}", error=str(exc))
            else:
                assert payload.segment is not None
                self.keeper.keep(payload.segment, probe.pid)
                return payload
        return OutgoingPayload(serialized)

    def release(self, tokens: list[str]) -> int:
        """Close the segments a client has opened."""
        return 0 if self.keeper is None else self.keeper.release(tokens)

    def close_all(self) -> None:
        """Close every segment still held (the controller connection is gone)."""
        if self.keeper is not None:
            self.keeper.close_all()

    def _reply_probe(self, options: dict | None) -> shm.Handle | None:
        if self.transport != "auto" or not options or not shm.available():
            return None
        try:
            probe = shm.Handle.from_wire(options.get("reply_to"))
        except ValueError:
            return None
        if probe.host != shm.host_identity() or not shm.can_open(probe):
            return None
        return probe


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
    from twisted.internet.defer import gatherResults

    d = gatherResults(pending, consumeErrors=True)

    def first_error(failure: Failure) -> Failure:
        return failure.value.subFailure  # type: ignore[no-any-return]

    return d.addCallbacks(lambda _: None, first_error)


# Unjelly: what a shared-memory reference becomes on arrival.


class _SharedReference:
    """Unjellies ``[b"ipkernel.shared", header, handle, offsets, owner]``."""

    def unjellyFor(self, unjellier: Any, obj: list) -> Any:  # noqa: N802 - jelly's name
        table = authenticated_table(unjellier)
        if len(obj) != 5:
            raise InsecureJelly("malformed shared-memory reference")
        _, header, handle, offsets, owner = obj
        offsets = unjellier.unjelly(offsets) if isinstance(offsets, list) else offsets
        try:
            parsed = shm.Handle.from_wire(unjellier.unjelly(handle))
        except ValueError as exc:
            raise InsecureJelly(str(exc)) from None
        if (
            not isinstance(header, bytes)
            or not isinstance(offsets, list)
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or not isinstance(owner, int)
        ):
            raise InsecureJelly("malformed shared-memory reference")
        payload = SharedPayload(header, parsed, offsets, None if owner < 0 else owner)
        if not table.relay:
            table.shared_received(payload)
        return payload


setUnjellyableForClass(SHARED_TYPE, _SharedReference)
