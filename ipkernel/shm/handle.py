"""The :class:`Handle` of a segment: what a receiver needs to open it, small and relayable."""

from __future__ import annotations

from dataclasses import dataclass

from ipkernel.shm.layout import MAX_PIECES

__all__ = ["Handle"]


@dataclass(frozen=True)
class Handle:
    """What a receiver needs to open a segment: small, and safe to relay.

    ``host`` is the sender's :func:`~ipkernel.shm.host_identity`, ``pid`` and ``fd``
    locate its descriptor, ``token`` is the random part of the segment's name, ``size``
    its size. A large segment is made of several memory files, its *pieces* (see
    :mod:`ipkernel.shm.layout`): ``fd`` is the first one's descriptor, ``more`` the
    others', in order.
    """

    host: str
    pid: int
    fd: int
    token: str
    size: int
    more: tuple[int, ...] = ()

    @property
    def fds(self) -> tuple[int, ...]:
        """The sender's descriptors of the pieces, in order."""
        return (self.fd, *self.more)

    def to_wire(self) -> list:
        """A list of plain values (bytes, int, a list of int), for PB."""
        wire = [self.host.encode(), self.pid, self.fd, self.token.encode(), self.size]
        return wire + [list(self.more)] if self.more else wire

    @classmethod
    def from_wire(cls, value: object) -> Handle:
        """The inverse of :meth:`to_wire`; ``ValueError`` if ``value`` is not one."""
        if not isinstance(value, (list, tuple)) or len(value) not in (5, 6):
            raise ValueError(f"not a segment handle: {value!r:.200}")
        host, pid, fd, token, size = value[:5]
        more = tuple(value[5]) if len(value) == 6 and isinstance(value[5], (list, tuple)) else ()
        if len(value) == 6 and not more:
            raise ValueError(f"not a segment handle: {value!r:.200}")
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        if not (
            isinstance(host, str)
            and isinstance(token, str)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in (pid, fd, size, *more))
            and pid > 0
            and min((fd, *more)) >= 0
            and size >= 0
            and token.isalnum()
            and len(more) < MAX_PIECES
        ):
            raise ValueError(f"not a segment handle: {value!r:.200}")
        return cls(host, pid, fd, token, size, more)
