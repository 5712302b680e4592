"""TLS for ipkernel's connections: Python's ``ssl`` sockets as Twisted TCP transports.

Every connection between ipkernel processes is TLS 1.2 or later, the controller's
certificate pinned by its SHA-256 fingerprint (see :mod:`ipkernel.security`). This module
provides the transports: :func:`listen_tls` and :func:`connect_tls` work like
``listenTCP``/``connectTCP``, with TCP connections whose socket is a non-blocking
:class:`ssl.SSLSocket`, so OpenSSL reads records from and writes them to the kernel
itself.

Why not Twisted's ``TLSMemoryBIOProtocol`` (pyOpenSSL over memory BIOs): moving bulk
data it costs about twice the CPU per byte of a plain ``ssl`` socket (measured here: 270
against 90 ms per 100 MB sent, 235 against 130 received). Each byte is copied into and
out of the memory BIOs (which also zero what they grow), records are encrypted and
decrypted one Python call at a time, and the TCP transport copies again when it joins
its buffers. Here:

- a write of any size is queued as it is (a ``memoryview`` of a numpy array included,
  never joined) and encrypted straight from the caller's buffer when the socket can take
  it; while a large write goes out the socket is corked (``TCP_CORK``), so that the
  kernel sends the 16 KiB records OpenSSL writes one by one as full-sized segments, and
  uncorked before the transport returns to the reactor, so nothing waits in the kernel;
- reading decrypts straight into a buffer: the protocol's own when it offers one
  (``get_buffer(hint)`` / ``buffer_updated(nbytes)``, as asyncio's buffered protocols do;
  the PB broker hands out the destination of a large payload chunk, so the bytes land
  where they belong with no intermediate copy), otherwise a scratch buffer whose
  contents go to ``dataReceived``. Each record (at most 16 KiB) is delivered as soon as
  it is read, so the protocol chooses where every record goes: the data after a chunk's
  header never passes through the scratch buffer.

Pinning: the connecting side accepts no certificate authority and no host name. After the
handshake (which proves that the server holds the private key of the certificate it
showed) it compares that certificate's fingerprint with the pin, in constant time, and
only then builds and connects the protocol, so not a byte of application data goes to
another server. A mismatch drops the connection and sets :attr:`ClientPin.mismatch_seen`
(the client factory sees a lost connection, as for any failure to connect).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import os
import socket
import ssl
import tempfile
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

__all__ = [
    "ClientPin",
    "client_context",
    "connect_tls",
    "listen_tls",
    "server_context",
]

_log = Logger()

# A scratch buffer for protocols that take dataReceived (and for small messages).
_SCRATCH = 256 * 1024
# Most plaintext read, and written, per reactor turn and connection, so that one busy
# connection does not starve the others (small calls are answered during large transfers).
_READ_BUDGET = 256 * 1024
_WRITE_BUDGET = 512 * 1024
# Most plaintext handed to SSL_write at once.
_WRITE_PIECE = 1024 * 1024

# Writes at least this large are corked (see _TLSMixin._send_queued).
_CORK_FROM = 64 * 1024
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)

_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


def server_context(identity: Any) -> ssl.SSLContext:
    """The listening side's context for ``identity`` (a ControllerIdentity): TLS 1.2+."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
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
    return ctx


def client_context() -> ssl.SSLContext:
    """The connecting side's context: TLS 1.2+, no CA and no host name (pinned instead)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    # The server's certificate is checked against the pin once the handshake is done.
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= _OPTIONS
    return ctx


class ClientPin:
    """The fingerprint a connecting side accepts, and what it saw.

    :attr:`mismatch_seen` and :attr:`presented_fingerprint` describe the latest connection
    made with this pin (as :class:`ipkernel.security.PinnedClientTLS` does).
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


class _TLSMixin:
    """TLS on a Twisted TCP connection; mixed into ``tcp.Server`` and ``tcp.Client``.

    The protocol is connected only after the handshake (and, on the connecting side, the
    pin check); until then ``self.protocol`` is a placeholder that ignores everything.
    """

    socket: Any
    protocol: Any
    reactor: Any
    connected: int
    disconnecting: int
    disconnected: int

    def _start_tls(self, context: ssl.SSLContext, server_side: bool) -> None:
        # wrap_socket takes over the file descriptor: the same number, so the reactor's
        # registrations (made after this) are unaffected.
        self.socket = context.wrap_socket(
            self.socket, server_side=server_side, do_handshake_on_connect=False
        )
        self.socket.setblocking(False)
        self.fileno = self.socket.fileno
        self._handshaken = False
        self._queue: collections.deque[memoryview] = collections.deque()
        self._queued = 0
        self._scratch: memoryview | None = None
        self._read_wants_write = False
        self._corkable = _TCP_CORK is not None
        # With windowed acknowledgements, Nagle plus delayed ACK would stall streams.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _handshake(self) -> Any:
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLWantWriteError:
            self.startWriting()  # type: ignore[attr-defined]
            return None
        except (ssl.SSLError, OSError) as exc:
            _log.info("TLS handshake failed: {error}", error=str(exc))
            return main.CONNECTION_LOST
        self._handshaken = True
        protocol = self._handshake_done()
        if protocol is None:
            return main.CONNECTION_LOST
        self.protocol = protocol
        protocol.makeConnection(self)
        if self._queue:
            self.startWriting()  # type: ignore[attr-defined]
        if self.socket.pending():
            # Application data that came with the end of the handshake.
            return self.doRead()
        return None

    def _handshake_done(self) -> Any:
        """The protocol to connect now, or None to drop the connection."""
        raise NotImplementedError

    # Reading

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        if not self._handshaken:
            return self._handshake()
        if self._read_wants_write:
            return None
        sock = self.socket
        protocol = self.protocol
        buffered = callable(getattr(protocol, "get_buffer", None))
        budget = _READ_BUDGET
        while True:
            if buffered:
                buf = protocol.get_buffer(-1)
                if not len(buf):
                    _log.error("get_buffer() gave an empty buffer: dropping the connection")
                    return main.CONNECTION_LOST
            else:
                if self._scratch is None:
                    self._scratch = memoryview(bytearray(_SCRATCH))
                buf = self._scratch
            n = 0
            result = None
            try:
                # At most one record (16 KiB), delivered at once: the protocol may want
                # the next bytes somewhere else (a stream chunk's header is followed by
                # its data, which goes straight into place).
                n = sock.recv_into(buf)
                if not n:
                    result = main.CONNECTION_DONE
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self.startWriting()  # type: ignore[attr-defined]
                return None
            except ssl.SSLZeroReturnError:
                result = main.CONNECTION_DONE  # the peer's close_notify
            except ssl.SSLError as exc:
                _log.info("TLS error: {error}", error=str(exc))
                result = main.CONNECTION_LOST
            except OSError as exc:
                if exc.errno in _WOULD_BLOCK:
                    return None
                result = main.CONNECTION_LOST
            if n:
                if buffered:
                    protocol.buffer_updated(n)
                else:
                    protocol.dataReceived(bytes(buf[:n]))
            if result is not None:
                return result
            if self.disconnected or self.protocol is not protocol:
                return None
            budget -= n
            # Decrypted bytes OpenSSL still holds never wake the reactor: take them now.
            if budget <= 0 and not sock.pending():
                return None

    # Writing

    def write(self, data: Any) -> None:
        """Send ``data`` (bytes or any buffer, kept as is until sent).

        What the socket takes at once is sent at once (a small call does not wait for the
        next reactor turn); the rest waits, in order, for the socket to be writable.
        """
        if self.disconnecting or self.disconnected:
            return
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        idle = not self._queue
        self._queue.append(view)
        self._queued += view.nbytes
        if not self._handshaken:
            return
        if idle and self._send_queued() is not None:
            pass  # an error: doWrite meets it again and reports the lost connection
        if self._queue or self.disconnecting:
            self.startWriting()  # type: ignore[attr-defined]

    def writeSequence(self, data: Any) -> None:  # noqa: N802 - Twisted's name
        for piece in data:
            self.write(piece)

    def doWrite(self) -> Any:  # noqa: N802 - Twisted's name
        if not self._handshaken:
            return self._handshake()
        if self._read_wants_write:
            self._read_wants_write = False
            result = self.doRead()
            if result is not None:
                return result
        result = self._send_queued()
        if result is not None or self._queue:
            return result  # lost, or more to send once the socket can take it
        self.stopWriting()  # type: ignore[attr-defined]
        if self.disconnecting:
            return self._close_notify()
        return None

    def _send_queued(self) -> Any:
        """Send from the queue until it is empty, the socket is full or the budget spent.

        Returns None, or ``CONNECTION_LOST`` if the connection failed.
        """
        # OpenSSL writes each record (16 KiB) to the kernel by itself. Corked, the kernel
        # packs them into full-sized segments: several times fewer packets, and
        # acknowledgements, for both ends to process. Uncorking sends the rest at once.
        cork = self._corkable and self._queued >= _CORK_FROM
        if cork:
            self._cork(True)
        try:
            return self._send_some()
        finally:
            if cork:
                self._cork(False)

    def _cork(self, on: bool) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, on)
        except OSError:
            self._corkable = False

    def _send_some(self) -> Any:
        sock = self.socket
        queue = self._queue
        budget = _WRITE_BUDGET
        while queue and budget > 0:
            view = queue[0]
            # After a WANT_WRITE, OpenSSL must be given the same bytes again: the head of
            # the queue is only shortened once a send has succeeded.
            piece = view[:_WRITE_PIECE]
            try:
                sent = sock.send(piece)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return None
            except ssl.SSLError as exc:
                _log.info("TLS error: {error}", error=str(exc))
                return main.CONNECTION_LOST
            except OSError as exc:
                if exc.errno in _WOULD_BLOCK:
                    return None
                return main.CONNECTION_LOST
            self._queued -= sent
            budget -= sent
            if sent == view.nbytes:
                queue.popleft()
            else:
                queue[0] = view[sent:]
        return None

    def _close_notify(self) -> Any:
        # Say goodbye in TLS, without waiting for the peer's answer (a hostile peer
        # would never send one), then close.
        try:
            self.socket.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        return main.CONNECTION_DONE

    def getPeerCertificate(self) -> bytes | None:  # noqa: N802 - Twisted's name
        """The peer's certificate, DER, if it showed one."""
        try:
            return self.socket.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None


class _Waiting(Protocol):
    """The protocol of a connection whose TLS handshake is not done yet: ignores all."""


class _Server(_TLSMixin, tcp.Server):
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
        self._start_tls(server.context, server_side=True)

    def _handshake_done(self) -> Any:
        return self._pending_protocol


class _Port(tcp.Port):
    transport = _Server

    def __init__(
        self, port: int, factory: Any, context: ssl.SSLContext, interface: str, reactor: Any
    ) -> None:
        super().__init__(port, _DeferConnection(factory), 50, interface, reactor)
        self.context = context


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


class _Client(_TLSMixin, tcp.Client):
    _handshake_timer: Any = None

    def _connectDone(self) -> None:  # noqa: N802 - Twisted's name
        self.protocol = _Waiting()
        self.connected = 1
        self.logstr = "TLS,client"
        # The connector's timeout stops at TCP; the handshake gets one of the same length.
        connector = self.connector
        connector.cancelTimeout()
        self._handshake_timer = self.reactor.callLater(connector.timeout, self._handshake_timed_out)
        self._start_tls(connector.context, server_side=False)
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
    ) -> None:
        super().__init__(host, port, factory, timeout, None, reactor)
        self.context = context
        self.pin = pin

    def _makeTransport(self) -> _Client:  # noqa: N802 - Twisted's name
        return _Client(self.host, self.port, self.bindAddress, self, self.reactor)


def listen_tls(
    reactor: Any, port: int, factory: Any, context: ssl.SSLContext, interface: str = ""
) -> Any:
    """Listen on ``port`` with TLS (``context``: see :func:`server_context`)."""
    listening = _Port(port, factory, context, interface, reactor)
    listening.startListening()
    return listening


def connect_tls(
    reactor: Any,
    host: str,
    port: int,
    factory: Any,
    fingerprint: str,
    timeout: float = 30,
) -> ClientPin:
    """Dial ``host:port`` with TLS, accepting only the certificate ``fingerprint`` names.

    Returns the :class:`ClientPin`, which says after a failure whether the server showed
    another certificate. ``ValueError`` if ``fingerprint`` is not 64 hex digits.
    """
    pin = ClientPin(fingerprint)
    _Connector(host, port, factory, timeout, reactor, client_context(), pin).connect()
    return pin
