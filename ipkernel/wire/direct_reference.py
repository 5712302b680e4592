"""Direct references: how a payload sent over a direct link is named in a message.

A :class:`~ipkernel.wire.direct.DirectPayload` jellies into ``[b"ipkernel.direct",
sender, receiver, sid, size, header]``: the two ends' certificate digests, the stream's
id on their link, the payload's size and header. Where it arrives decides what it
becomes (every broker registers this, see :mod:`ipkernel.wire.broker`):

- at the controller (the server side of its connections, whose streams relay) a
  :class:`PassedDirect`, passed along like any argument and jellied again as it came;
- at a client or an engine, the :class:`~ipkernel.wire.received.ReceivedPayload` of that
  stream on this process's end of the link (:func:`link_between`), which only now asks
  the sender for the bytes; or, if the link is gone or the sender gave the stream up, a
  payload that never arrives (its command fails with
  :class:`~ipkernel.errors.TransferError`).

References are accepted only on a logged-in connection, never on a link itself.
"""

from __future__ import annotations

from typing import Any

from twisted.spread.jelly import InsecureJelly, Jellyable, setUnjellyableForClass

from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.stream_table import StreamTable, authenticated_table

__all__ = ["DIRECT_TYPE", "PassedDirect", "link_between", "links", "register_link"]

#: The tag of a direct reference in a jellied message.
DIRECT_TYPE = b"ipkernel.direct"

#: The open link ends of this process (:class:`ipkernel.wire.direct.LinkBroker`) by
#: (this end's digest, the other end's digest). Both ends of a link may live in one
#: process (tests): their keys differ.
links: dict[tuple[bytes, bytes], Any] = {}


def link_between(local: bytes, peer: bytes) -> Any:
    """The open link from this process's end ``local`` to ``peer`` (digests), if any."""
    return links.get((local, peer))


def register_link(link: Any, open_: bool) -> None:
    """Record ``link`` (with ``local`` and ``peer`` digests) as open, or forget it."""
    key = (link.local, link.peer)
    if open_:
        links[key] = link
    elif links.get(key) is link:
        del links[key]


class PassedDirect(Jellyable):
    """A direct reference passing through the controller: forwarded as it came."""

    def __init__(self, reference: list) -> None:
        self._reference = reference
        #: The payload's size in bytes (its bytes never come here).
        self.nbytes = reference[4]

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        return list(self._reference)


class _DirectReference:
    """Unjellies ``[b"ipkernel.direct", sender, receiver, sid, size, header]``."""

    def unjellyFor(self, unjellier: Any, obj: list) -> Any:  # noqa: N802 - jelly's name
        table = authenticated_table(unjellier)
        if getattr(unjellier.invoker, "is_link", False):
            raise InsecureJelly("direct references do not travel on direct links")
        if len(obj) != 6:
            raise InsecureJelly("malformed direct reference")
        _, sender, receiver, sid, total, header = obj
        if not (
            isinstance(sender, bytes)
            and isinstance(receiver, bytes)
            and isinstance(sid, int)
            and isinstance(total, int)
            and isinstance(header, bytes)
            and sid > 0
            and total >= 0
        ):
            raise InsecureJelly("malformed direct reference")
        if table.relay:
            return PassedDirect(list(obj))
        link = links.get((receiver, sender))
        if link is None:
            return _never_arriving(sid, total, header, "the direct link it was sent on closed")
        if sid in link.abandoned:
            return _never_arriving(sid, total, header, "its sender gave it up")
        return link.streams.open_incoming(sid, total, header)


def _ignore(*args: object) -> None:
    pass


def _never_arriving(sid: int, total: int, header: bytes, reason: str) -> ReceivedPayload:
    """A received payload that failed already (its stream can no longer come)."""
    table = StreamTable(_ignore, _ignore, relay=False, odd=False)
    payload = table.open_incoming(sid, total, header)
    table.connection_lost(f"a payload sent over a direct link did not arrive: {reason}")
    return payload  # type: ignore[no-any-return]


setUnjellyableForClass(DIRECT_TYPE, _DirectReference)
