"""Reading and writing TLS records on a Twisted TCP connection: :class:`TLSTransport`.

The connection's socket is a non-blocking :class:`ssl.SSLSocket`, so OpenSSL reads
records from and writes them to the kernel itself (the listening and connecting ends,
with their contexts and the pin check, are in :mod:`ipkernel.wire.tls`). Moving bulk
data this costs about half the CPU per byte of Twisted's ``TLSMemoryBIOProtocol``:

- a write of any size is queued as it is (a ``memoryview`` of a numpy array included,
  never joined) and encrypted straight from the caller's buffer when the socket can take
  it; while a large write goes out the socket is corked (``TCP_CORK``), so that the
  kernel sends the 16 KiB records OpenSSL writes one by one as full-sized segments, and
  uncorked before the transport returns to the reactor, so nothing waits in the kernel;
- reading decrypts straight into a buffer: the protocol's own when it offers one
  (``get_buffer(hint)`` / ``buffer_updated(nbytes)``, as asyncio's buffered protocols do;
  the PB broker hands out the destination of a large payload chunk, so the bytes land
  where they belong with no intermediate copy), otherwise a scratch buffer whose
  contents go to ``dataReceived``. A protocol's buffer is filled record after record
  (OpenSSL reads one, at most 16 KiB, at a time) up to its size before the protocol
  hears of it: a protocol that offers a buffer just large enough for what it expects
  next (the rest of a chunk, say) chooses where the bytes after it go. ``dataReceived``
  gets each record as it is read.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import socket
import ssl
import struct
import termios
from typing import Any

from twisted.internet import main
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipkernel.wire import fork_safety
from ipkernel.wire.keepalive import PeerSilent, watch_peer, went_silent

__all__ = ["TLSTransport"]

_log = Logger()

# A scratch buffer for protocols that take dataReceived (and for small messages).
_SCRATCH = 256 * 1024
# Most plaintext read, and written, per reactor turn and connection, so that one busy
# connection does not starve the others (small calls are answered during large transfers).
_READ_BUDGET = 256 * 1024
_WRITE_BUDGET = 512 * 1024
# Most plaintext handed to SSL_write at once.
_WRITE_PIECE = 1024 * 1024

# Writes at least this large are corked (see TLSTransport._send_queued).
_CORK_FROM = 64 * 1024
# A TLS 1.3 record's bytes beyond its plaintext: header, content type, tag.
_RECORD_OVERHEAD = 22
_FIONREAD = termios.FIONREAD
_NO_BYTES = bytes(4)
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
# What a read returns when nothing more can be read now.
_STOP = object()


def _unread(fd: int) -> int:
    """How many bytes the kernel holds for ``fd``, not read yet (0 if it cannot say)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, _FIONREAD, _NO_BYTES))[0]
    except OSError:
        return 0


class TLSTransport:
    """TLS on a Twisted TCP connection; mixed into ``tcp.Server`` and ``tcp.Client``.

    The subclass calls :meth:`_start_tls` once the TCP connection exists and provides
    :meth:`_handshake_done`. The protocol is connected only after the handshake (and, on
    the connecting side, the pin check); until then ``self.protocol`` is a placeholder
    that ignores everything.
    """

    socket: Any
    protocol: Any
    reactor: Any
    connected: int
    disconnecting: int
    disconnected: int

    #: Seconds of silence after which the kernel drops the connection (see
    #: :mod:`ipkernel.wire.keepalive`), or None if nothing watches the peer.
    peer_timeout: float | None = None

    def _start_tls(
        self, context: ssl.SSLContext, server_side: bool, peer_timeout: float | None = None
    ) -> None:
        # Before the handshake: a peer that vanishes during it is dropped too.
        if peer_timeout is not None and watch_peer(self.socket, peer_timeout):
            self.peer_timeout = peer_timeout
        # wrap_socket takes over the file descriptor: the same number, so the reactor's
        # registrations (made after this) are unaffected.
        self.socket = context.wrap_socket(
            self.socket, server_side=server_side, do_handshake_on_connect=False
        )
        self.socket.setblocking(False)
        self.fileno = self.socket.fileno
        fork_safety.register(self.socket)
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

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """Close as TCP does; a watched peer dropped by the kernel for its silence is
        reported as :class:`~ipkernel.wire.keepalive.PeerSilent`.

        However the end was seen (an error or an end of file from OpenSSL, which keeps
        no errno, or the reactor's hang-up), the kernel still knows, until the socket is
        closed, that it gave up on the peer.
        """
        sock = getattr(self, "socket", None)
        timeout = self.peer_timeout
        if (
            sock is not None
            and timeout is not None
            and not reason.check(PeerSilent)
            and went_silent(sock, timeout)
        ):
            reason = Failure(PeerSilent(timeout))
        super().connectionLost(reason)  # type: ignore[misc]

    # Reading

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        if not self._handshaken:
            return self._handshake()
        if self._read_wants_write:
            return None
        protocol = self.protocol
        buffered = callable(getattr(protocol, "get_buffer", None))
        # The C object under the SSLSocket, called directly: its Python wrappers cost
        # about a microsecond per record (thousands of records per 100 MB). A Python
        # without that attribute gets the public methods, which take the same arguments.
        sock = self.socket
        tls = getattr(sock, "_sslobj", sock)
        if tls is None:
            return main.CONNECTION_LOST  # closed or unwrapped
        read, pending = tls.read, tls.pending
        budget = _READ_BUDGET
        # What the kernel held when last asked, less what has been read since: while it
        # covers a record, the next read will not find the socket empty.
        unread = 0
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
            # OpenSSL reads at most one record (16 KiB) at a time. A protocol's own buffer
            # is filled with record after record, up to its size, before it hears of them
            # (the rest of a large string goes into place in one piece); dataReceived
            # gets each record as it is read.
            got = 0
            while True:
                n, result = self._recv_into(read, buf[got:] if got else buf)
                got += n
                budget -= n
                if result is not None:
                    break
                # Decrypted bytes OpenSSL still holds never wake the reactor: take them
                # now. Else, with nothing in the kernel either (the usual end of a small
                # message), stop rather than have OpenSSL try a read that fails (an
                # exception, several microseconds): more arriving later makes the socket
                # readable again. The kernel is asked once per several records.
                if not pending():
                    if budget <= 0:
                        result = _STOP
                        break
                    unread -= n + _RECORD_OVERHEAD
                    if unread < _RECORD_OVERHEAD:
                        unread = _unread(self.fileno())
                        if not unread:
                            result = _STOP
                            break
                if not buffered or got == len(buf):
                    break
            if got:
                if buffered:
                    protocol.buffer_updated(got)
                else:
                    protocol.dataReceived(bytes(buf[:got]))
            if result is _STOP:
                return None
            if result is not None:
                return result
            if self.disconnected or self.protocol is not protocol:
                return None

    def _recv_into(self, read: Any, buf: memoryview) -> tuple[int, Any]:
        """Read into ``buf`` with ``read`` (the SSL object's): ``(bytes read, None)``;
        ``(0, _STOP)`` when nothing can be read now; ``(0, reason)`` when the connection
        is over."""
        try:
            n = read(len(buf), buf)
        except ssl.SSLWantReadError:
            return 0, _STOP
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self.startWriting()  # type: ignore[attr-defined]
            return 0, _STOP
        except ssl.SSLZeroReturnError:
            return 0, main.CONNECTION_DONE  # the peer's close_notify
        except ssl.SSLEOFError:
            return 0, main.CONNECTION_DONE  # closed without one, as SSLSocket reports it
        except ssl.SSLError as exc:
            _log.info("TLS error: {error}", error=str(exc))
            return 0, main.CONNECTION_LOST
        except OSError as exc:
            if exc.errno in _WOULD_BLOCK:
                return 0, _STOP
            return 0, main.CONNECTION_LOST
        return n, (None if n else main.CONNECTION_DONE)

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
