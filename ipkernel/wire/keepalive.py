"""Noticing a peer whose host stopped answering: the kernel's TCP keepalive, not a ping.

A peer process that dies is noticed at once: its kernel closes the connection. A peer
whose host vanishes (powered off, its network cut) closes nothing; the connection looks
idle, and only silence tells. An application-level ping cannot measure that silence
fairly: an engine busy for minutes in a C extension that holds the GIL cannot run the
Python that would answer it, though it is alive. Its kernel, however, acknowledges every
TCP segment whatever Python is doing. So the kernel does the watching
(:func:`watch_peer`), with times derived from one ``timeout``:

- ``TCP_KEEPIDLE`` / ``TCP_KEEPINTVL``: an idle connection gets a keepalive probe (an
  empty segment the peer's kernel must acknowledge) after about a third of ``timeout``
  without receiving anything, then every third of it;
- ``TCP_USER_TIMEOUT``: the kernel drops the connection once ``timeout`` has passed with
  data or probes sent and nothing received (no acknowledgement, no data);
- ``TCP_KEEPCNT``: the same deadline where ``TCP_USER_TIMEOUT`` does not exist.

The kernel then closes the connection; the TLS transport, seeing it end, asks the kernel
why (:func:`went_silent`: OpenSSL does not keep the ``ETIMEDOUT``) and reports
:class:`PeerSilent`. Nothing here runs on a Python timer: the times are the kernel's,
counted from the last segment received from the peer.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
from typing import Any

from twisted.internet.error import ConnectionLost

__all__ = ["DEFAULT_PEER_TIMEOUT", "PeerSilent", "keepalive_settings", "watch_peer", "went_silent"]

#: Seconds of silence after which an engine connection is dropped, unless told otherwise.
DEFAULT_PEER_TIMEOUT = 30.0

# Linux's struct tcp_info (a stable, append-only ABI): the state is its first byte,
# tcpi_last_ack_recv (milliseconds since anything was last received) the u32 at 56.
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_TCP_INFO_SIZE = 60
_TCP_CLOSE = 7
_LAST_ACK_RECV = struct.Struct("=I")
_LAST_ACK_RECV_AT = 56


class PeerSilent(ConnectionLost):
    """The peer's host sent nothing, not even a TCP acknowledgement, for the timeout.

    ``PeerSilent(timeout)``: the timeout in seconds.
    """

    def __str__(self) -> str:
        timeout = self.args[0] if self.args else None
        after = f" for {timeout:g} s" if isinstance(timeout, (int, float)) else ""
        return f"its host sent nothing, not even a TCP acknowledgement,{after}"


def keepalive_settings(timeout: float) -> tuple[int, int, int, int]:
    """``(idle, interval, count, user_timeout_ms)`` for a deadline of ``timeout`` seconds.

    ``idle`` and ``interval`` (whole seconds, at least 1) are a third of ``timeout``;
    ``count`` probes after ``idle`` reach ``timeout``. :raises ValueError: ``timeout`` is
    not positive.
    """
    if not timeout > 0:
        raise ValueError(f"the peer timeout must be a positive number of seconds, not {timeout!r}")
    interval = max(1, round(timeout / 3))
    count = max(1, math.ceil((timeout - interval) / interval))
    return interval, interval, count, max(1, round(timeout * 1000))


def watch_peer(sock: Any, timeout: float) -> bool:
    """Have the kernel drop ``sock``'s connection after ``timeout`` seconds of silence.

    ``sock`` is a connected TCP socket (or an ``ssl.SSLSocket`` over one). Returns False,
    changing nothing, if it is not a TCP socket or the system has no keepalive settings.
    """
    idle, interval, count, user_timeout = keepalive_settings(timeout)
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), count),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), user_timeout),
    ]
    try:
        for level, name, value in options:
            if name is not None:
                sock.setsockopt(level, name, value)
    except OSError:
        return False
    return True


def went_silent(sock: Any, timeout: float) -> bool:
    """Whether the kernel dropped ``sock``'s connection because the peer was silent.

    True when the connection is closed at the TCP level (no FIN from the peer, whose
    connection would still be half-open here) and nothing, not even an
    acknowledgement, came from the peer for ``timeout`` seconds: the deadline
    :func:`watch_peer` set. Read from ``TCP_INFO`` (Linux); False where that is not
    available.
    """
    if _TCP_INFO is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return False
    if len(info) < _TCP_INFO_SIZE:
        return False
    (last_ack_received_ms,) = _LAST_ACK_RECV.unpack_from(info, _LAST_ACK_RECV_AT)
    return info[0] == _TCP_CLOSE and last_ack_received_ms >= timeout * 1000
