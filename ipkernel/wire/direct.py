"""Direct links: a large payload between a client and an engine, past the controller.

Relayed, every byte of a stream crosses the controller, which decrypts and encrypts it
again (:mod:`ipkernel.wire.relay`). A *direct link* is a TLS connection between a
MultiEngine client and one engine, each end pinned to the other's certificate
(:mod:`ipkernel.security.peer_identity`; the controller introduces them, see
:mod:`ipkernel.wire.direct_listener` and :mod:`ipkernel.client.direct_links`). The
command still goes through the controller, in the engine's queue, as before; only its
payload's bytes take the link:

- the sender puts a :class:`DirectPayload` in the message, where an
  :class:`~ipkernel.wire.outgoing.OutgoingPayload` would go. It opens a stream on the
  link at once and jellies into a small *direct reference* ``[b"ipkernel.direct",
  sender, receiver, sid, size, header]`` (the two ends' certificate digests, the stream's
  id on the link, its size and the payload's header), which the controller passes on
  like any argument, as a :class:`PassedDirect`, without looking inside;
- the receiver turns the reference into a
  :class:`~ipkernel.wire.received.ReceivedPayload` of the stream on its end of the link,
  and only then grants the sender credit: the stream starts with none. So the bytes flow
  once the command has reached the engine (or the answer the client), as relayed bytes
  would, and the engine runs the command once they are all in, as for any stream.

Failures end like those of any stream: a link that closes aborts its streams (the
command fails with :class:`~ipkernel.errors.TransferError`); a reference naming a link
that is gone, or a stream its sender gave up, is a payload that never arrives. A sender
may give a timeout for the first credit (engines do, for their answers: a client that
never asks would hold the engine's queue). A :class:`DirectPayload` whose link closed
before its message left is sent through the controller after all.
"""

from __future__ import annotations

import collections
import hashlib
import ssl
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.python.failure import Failure
from twisted.spread import jelly, pb

from ipkernel.errors import TransferError
from ipkernel.frames import Serialized
from ipkernel.wire.broker import Broker
from ipkernel.wire.direct_reference import DIRECT_TYPE, link_between, register_link
from ipkernel.wire.outgoing import LocalSource, OutgoingPayload, connection_streams
from ipkernel.wire.stream_table import StreamTable
from ipkernel.wire.tls import client_context, connect_tls

__all__ = [
    "DirectPayload",
    "LinkBroker",
    "LinkClientFactory",
    "LinkServerFactory",
    "dial_link",
    "digest",
]


def digest(certificate_der: bytes) -> bytes:
    """The SHA-256 of a certificate (DER): what names a link's end in references."""
    return hashlib.sha256(certificate_der).digest()


class LinkBroker(Broker):
    """One end of a direct link: a :class:`~ipkernel.wire.broker.Broker` whose streams
    are received at both ends (nothing on a link is relayed), authenticated as soon as it
    is connected (the TLS layer has checked the peer's certificate before that).

    :attr:`local` and :attr:`peer` are the two ends' certificate digests.
    """

    def __init__(
        self,
        isClient: bool = True,  # noqa: N803 - PB's factories pass it by this name
        security: jelly.SecurityOptions = jelly.globalSecurity,
    ) -> None:
        super().__init__(isClient, security)
        self.streams = StreamTable(
            self._send_expression, self.send_stream_data, relay=False, odd=isClient
        )
        self.local = b""
        self.peer = b""
        #: Streams the sender gave up before their reference arrived here (recent ones).
        self.abandoned: collections.deque[int] = collections.deque(maxlen=256)

    #: References to link streams are refused on the link itself.
    is_link = True

    @property
    def open(self) -> bool:
        """Whether the link is connected (and registered)."""
        return link_between(self.local, self.peer) is self

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        self.raise_limits()
        self.local = self.factory.local
        self.peer = digest(self.transport.getPeerCertificate() or b"")
        register_link(self, True)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        register_link(self, False)
        super().connectionLost(reason)

    def proto_ipk_abort(self, sid: object, reason: object) -> None:
        """As for any stream; a stream not open here yet is remembered as abandoned, so
        that its reference, should it still come, is a payload that never arrives."""
        if self._stream_allowed() and isinstance(sid, int) and sid not in self.streams.incoming:
            if sid not in self.streams.outgoing:
                self.abandoned.append(sid)
        super().proto_ipk_abort(sid, reason)

    def close(self) -> None:
        """Close the link (its streams are aborted)."""
        if self.transport is not None:
            self.transport.loseConnection()


class LinkServerFactory(pb.PBServerFactory):
    """The engine's end: links built on :class:`LinkBroker`; ``local`` is the engine's
    certificate digest."""

    protocol = LinkBroker
    noisy = False

    def __init__(self, local: bytes) -> None:
        super().__init__(pb.Root())
        self.local = local


class LinkClientFactory(pb.PBClientFactory):
    """The client's end of one link; ``local`` is the client's certificate digest.

    :meth:`getRootObject` fires once the engine has accepted the client's certificate
    (under TLS 1.3 the engine checks it after the client's handshake has ended).
    """

    protocol = LinkBroker
    noisy = False

    def __init__(self, local: bytes) -> None:
        super().__init__()
        self.local = local
        self._given_up = False
        self._connector: Any = None

    def startedConnecting(self, connector: Any) -> None:  # noqa: N802 - Twisted's name
        self._connector = connector

    def give_up(self) -> None:
        """Close the link if it is up, stop dialling or abort the handshake if it is on
        its way, and refuse the link if it comes up later."""
        self._given_up = True
        self.disconnect()
        if self._connector is not None:
            self._connector.disconnect()

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        return None if self._given_up else super().buildProtocol(addr)


class DirectPayload(OutgoingPayload):
    """An :class:`~ipkernel.wire.outgoing.OutgoingPayload` whose bytes take ``link``.

    Put it in a message as any outgoing payload (once): the message carries a direct
    reference and the stream waits on the link for the receiver's credit. With
    ``credit_timeout`` (seconds, on ``clock``), a stream still without credit by then is
    aborted. If the link has closed by the time the message is written, the payload goes
    as an ordinary stream on the message's own connection.
    """

    def __init__(
        self,
        serialized: Serialized,
        link: LinkBroker,
        clock: Any = None,
        credit_timeout: float | None = None,
    ) -> None:
        super().__init__(serialized)
        self.link = link
        self._clock = clock
        self._credit_timeout = credit_timeout

    def jellyFor(self, jellier: Any) -> Any:  # noqa: N802 - jelly's name
        link = self.link
        if connection_streams(jellier) is None or not link.open:
            return super().jellyFor(jellier)
        if self._used:
            raise TransferError("an outgoing payload can be sent only once")
        self._used = True
        ser = self.serialized
        table = link.streams
        out = self._stream = table.open_outgoing(ser.nbytes, LocalSource(ser.parts))
        # No credit until the receiver holds the reference: the data must not reach it
        # before the stream is open there.
        out.limit = 0
        table.message_sent()
        out.done.addBoth(self._finish)
        if self._credit_timeout is not None and self._clock is not None:
            timer = self._clock.callLater(self._credit_timeout, _never_asked, out)
            out.done.addBoth(_cancel_timer, timer)
        return [DIRECT_TYPE, link.local, link.peer, out.sid, ser.nbytes, ser.header]


def _never_asked(out: Any) -> None:
    if out.limit == 0:
        out.abort("the receiver never asked for the payload", tell_peer=True)


def _cancel_timer(result: object, timer: Any) -> object:
    if timer.active():
        timer.cancel()
    return result


def dial_link(
    reactor: Any,
    identity: Any,
    host: str,
    port: int,
    fingerprint: str,
    timeout: float,
    peer_timeout: float | None = None,
    context: ssl.SSLContext | None = None,
) -> Deferred:
    """Open a direct link to the engine listening at ``host:port`` whose certificate has
    ``fingerprint``, showing ``identity``'s certificate (a
    :class:`~ipkernel.security.peer_identity.PeerIdentity`). ``context``: that identity's
    :func:`~ipkernel.wire.tls.client_context`, made here if not given (building one takes
    milliseconds: a client dialling several engines makes it once).

    Fires with the client end's :class:`LinkBroker` once the engine has accepted it;
    fails with :class:`~ipkernel.errors.TransferError` saying why not (no connection
    within ``timeout`` seconds, another certificate, refused) or ``ValueError`` for a
    malformed fingerprint. ``peer_timeout``: see :func:`ipkernel.wire.tls.listen_tls`.
    """
    factory = LinkClientFactory(bytes.fromhex(identity.fingerprint))
    pin = connect_tls(
        reactor,
        host,
        port,
        factory,
        fingerprint,
        timeout=timeout,
        peer_timeout=peer_timeout,
        context=context or client_context(identity),
    )
    where = f"{host}:{port}"

    def failed(failure: Failure) -> None:
        factory.give_up()
        if pin.mismatch_seen:
            why = "it showed another certificate than the one it was introduced with"
        elif failure.check(ConnectError, defer.TimeoutError, defer.CancelledError):
            why = f"no connection within {timeout:g} s ({failure.getErrorMessage().strip()})"
        else:
            why = f"the connection was closed ({failure.getErrorMessage().strip()})"
        raise TransferError(f"no direct link to {where}: {why}")

    d = factory.getRootObject()
    d.addTimeout(timeout, reactor)
    return d.addCallbacks(lambda root: root.broker, failed)
