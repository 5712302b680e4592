"""TLS for ipkernel's connections: Python's ``ssl`` sockets as Twisted TCP transports.

Every connection between ipkernel processes is TLS 1.2 or later, the controller's
certificate pinned by its SHA-256 fingerprint (see :mod:`ipkernel.security`). This module
provides the listening and connecting ends: :func:`listen_tls` and :func:`connect_tls`
work like ``listenTCP``/``connectTCP``, with TCP connections whose socket is a
non-blocking :class:`ssl.SSLSocket`, read and written by
:class:`~ipkernel.wire.tls_transport.TLSTransport`.

Why not Twisted's ``TLSMemoryBIOProtocol`` (pyOpenSSL over memory BIOs): moving bulk
data it costs about twice the CPU per byte of a plain ``ssl`` socket (measured here: 270
against 90 ms per 100 MB sent, 235 against 130 received). Each byte is copied into and
out of the memory BIOs (which also zero what they grow), records are encrypted and
decrypted one Python call at a time, and the TCP transport copies again when it joins
its buffers. How the transport avoids that is in :mod:`ipkernel.wire.tls_transport`.

Pinning: the connecting side accepts no certificate authority and no host name. After the
handshake (which proves that the server holds the private key of the certificate it
showed) it compares that certificate's fingerprint with the pin, in constant time, and
only then builds and connects the protocol, so not a byte of application data goes to
another server. A mismatch drops the connection and sets :attr:`ClientPin.mismatch_seen`
(the client factory sees a lost connection, as for any failure to connect).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import tempfile
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from ipkernel.wire.tls_transport import TLSTransport

__all__ = [
    "ClientPin",
    "client_context",
    "connect_tls",
    "listen_tls",
    "server_context",
]

#: Connections the kernel queues for a listening port before the controller accepts them
#: (capped by ``net.core.somaxconn``). Twisted's default, 50, turns most of a burst of a
#: thousand engines away, and each then waits a second or more to try again.
BACKLOG = 1024

_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def server_context(identity: Any) -> ssl.SSLContext:
    """The listening side's context for ``identity`` (a ControllerIdentity, or a
    :class:`~ipkernel.security.peer_identity.PeerIdentity`): TLS 1.2+."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
    _load_identity(ctx, identity)
    return ctx


def _load_identity(ctx: ssl.SSLContext, identity: Any) -> None:
    key_pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # load_cert_chain reads files only: a private directory (0700) that lives for the call.
    with tempfile.TemporaryDirectory(prefix="ipkernel-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, identity.certificate_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)


def client_context(identity: Any = None) -> ssl.SSLContext:
    """The connecting side's context: TLS 1.2+, no CA and no host name (pinned instead);
    it presents ``identity``'s certificate when given (a direct link's client)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    # The server's certificate is checked against the pin once the handshake is done.
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= _OPTIONS
    if identity is not None:
        _load_identity(ctx, identity)
    return ctx


class ClientPin:
    """The fingerprint a connecting side accepts, and what it saw.

    :attr:`mismatch_seen` and :attr:`presented_fingerprint` describe the latest connection
    made with this pin, so a refused certificate can be reported as a stale key file.
    """

    def __init__(self, fingerprint: str) -> None:
        normalized = fingerprint.lower() if isinstance(fingerprint, str) else ""
        if len(normalized) != 64 or any(c not in "0123456789abcdef" for c in normalized):
            raise ValueError("the fingerprint must be 64 hex digits (a SHA-256)")
        self.fingerprint = normalized
        self.mismatch_seen = False
        self.presented_fingerprint: str | None = None

    def accepts(self, der: bytes | None) -> bool:
        """Whether ``der`` (the server's certificate) is the pinned one; remembers it."""
        presented = hashlib.sha256(der or b"").hexdigest()
        self.presented_fingerprint = presented
        self.mismatch_seen = not (der and hmac.compare_digest(presented, self.fingerprint))
        return not self.mismatch_seen


class _Waiting(Protocol):
    """The protocol of a connection whose TLS handshake is not done yet: ignores all."""


class _Server(TLSTransport, tcp.Server):
    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        super().__init__(sock, _Waiting(), client, server, sessionno, reactor)
        # The port built a placeholder around the factory's protocol (_DeferConnection).
        self._pending_protocol = getattr(protocol, "protocol", protocol)
        self._start_tls(server.context, server_side=True, peer_timeout=server.peer_timeout)

    def _handshake_done(self) -> Any:
        accept = self.server.accept_peer
        if accept is not None and not accept(self.getPeerCertificate()):
            return None
        return self._pending_protocol


class _Port(tcp.Port):
    transport = _Server

    def __init__(
        self,
        port: int,
        factory: Any,
        context: ssl.SSLContext,
        interface: str,
        reactor: Any,
        peer_timeout: float | None,
        accept_peer: Any,
    ) -> None:
        super().__init__(port, _DeferConnection(factory), BACKLOG, interface, reactor)
        self.context = context
        self.peer_timeout = peer_timeout
        self.accept_peer = accept_peer


class _DeferConnection:
    """Wraps the port's factory: the protocol it builds is connected after the handshake."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self.factory, name)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        protocol = self.factory.buildProtocol(addr)
        return None if protocol is None else _Placeholder(protocol)


class _Placeholder:
    """What the port connects at once; the server transport connects ``protocol`` later."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's name
        pass


class _Client(TLSTransport, tcp.Client):
    _handshake_timer: Any = None

    def _connectDone(self) -> None:  # noqa: N802 - Twisted's name
        self.protocol = _Waiting()
        self.connected = 1
        self.logstr = "TLS,client"
        # The connector's timeout stops at TCP; the handshake gets one of the same length.
        connector = self.connector
        connector.cancelTimeout()
        self._handshake_timer = self.reactor.callLater(connector.timeout, self._handshake_timed_out)
        self._start_tls(connector.context, server_side=False, peer_timeout=connector.peer_timeout)
        self.startReading()
        result = self._handshake()
        if result is not None:
            self.loseConnection()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if not self._handshaken:
            self.abortConnection()

    def _stop_handshake_timer(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self._stop_handshake_timer()
        super().connectionLost(reason)

    def _handshake_done(self) -> Any:
        self._stop_handshake_timer()
        if not self.connector.pin.accepts(self.getPeerCertificate()):
            return None
        protocol = self.connector.buildProtocol(self.getPeer())
        if protocol is not None:
            self.logstr = f"{self._getLogPrefix(protocol)},client"
        return protocol


class _Connector(tcp.Connector):
    def __init__(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float,
        reactor: Any,
        context: ssl.SSLContext,
        pin: ClientPin,
        peer_timeout: float | None,
    ) -> None:
        super().__init__(host, port, factory, timeout, None, reactor)
        self.context = context
        self.pin = pin
        self.peer_timeout = peer_timeout

    def _makeTransport(self) -> _Client:  # noqa: N802 - Twisted's name
        return _Client(self.host, self.port, self.bindAddress, self, self.reactor)

    def disconnect(self) -> None:
        """Stop dialling, or end the connection: at once (aborted) while its handshake
        is not done, since nothing of it is worth waiting for."""
        transport = self.transport
        if self.state == "connected" and transport is not None and not transport._handshaken:
            transport.abortConnection()
        else:
            super().disconnect()


def listen_tls(
    reactor: Any,
    port: int,
    factory: Any,
    context: ssl.SSLContext,
    interface: str = "",
    peer_timeout: float | None = None,
    accept_peer: Callable[[bytes | None], bool] | None = None,
) -> Any:
    """Listen on ``port`` with TLS (``context``: see :func:`server_context`).

    With ``peer_timeout`` (seconds), each connection is dropped once the peer's host has
    sent nothing for that long (see :mod:`ipkernel.wire.keepalive`); it then ends with
    :class:`~ipkernel.wire.keepalive.PeerSilent`. With ``accept_peer``, a connection is
    dropped after its handshake, before any application data, unless
    ``accept_peer(der)`` is true of the certificate the peer showed (DER, or None).
    Raises ``twisted.internet.error.CannotListenError``.
    """
    listening = _Port(port, factory, context, interface, reactor, peer_timeout, accept_peer)
    listening.startListening()
    return listening


def connect_tls(
    reactor: Any,
    host: str,
    port: int,
    factory: Any,
    fingerprint: str,
    timeout: float = 30,
    peer_timeout: float | None = None,
    context: ssl.SSLContext | None = None,
) -> ClientPin:
    """Dial ``host:port`` with TLS, accepting only the certificate ``fingerprint`` names.

    Returns the :class:`ClientPin`, which says after a failure whether the server showed
    another certificate. ``ValueError`` if ``fingerprint`` is not 64 hex digits.
    ``timeout`` bounds the TCP connection and, again, the handshake. ``peer_timeout``: as
    for :func:`listen_tls`. ``context``: a :func:`client_context` (one showing a
    certificate, say); by default one that shows none.
    """
    pin = ClientPin(fingerprint)
    if context is None:
        context = client_context()
    connector = _Connector(host, port, factory, timeout, reactor, context, pin, peer_timeout)
    connector.connect()
    return pin
