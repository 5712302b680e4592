"""Shared-memory payloads: :class:`SharedPayload`, a segment's handle in a message.

A sender on the receiver's host (same user) writes a payload's parts into a segment
(:mod:`ipkernel.shm`) and sends only its handle; the controller passes the handle
through (or adopts the segment, :mod:`ipkernel.wire.kept`), and the receiver maps the
segment as soon as the reference arrives, so that its sender can let go. Whether a
payload travels this way is :mod:`ipkernel.wire.transfer`'s choice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.spread.jelly import InsecureJelly, Jellyable, setUnjellyableForClass

from ipkernel import shm
from ipkernel.errors import SerializationError, SharedMemoryError
from ipkernel.frames import Serialized, read_header
from ipkernel.wire.stream_table import authenticated_table

__all__ = ["SharedPayload"]

SHARED_TYPE = b"ipkernel.shared"


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
            # A client or an engine: open it now, so its sender can let go.
            payload.map()
            if payload.owner is not None and table.on_shared_opened is not None:
                table.on_shared_opened(payload.owner, parsed.token)
        return payload


setUnjellyableForClass(SHARED_TYPE, _SharedReference)
