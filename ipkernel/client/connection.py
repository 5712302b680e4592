"""What both asynchronous clients are: a logged-in connection to one controller.

:class:`ControllerConnection` holds the avatar, calls the controller, closes the
connection, and shows itself in ``repr()`` without asking the controller anything: the
controller's address, how many engines the last answer about all of them showed, and
whether the connection is closed. :func:`describe` makes that text, for the blocking
clients too.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel.errors import NoEnginesRegistered
from ipkernel.wire.connect import call_controller

__all__ = ["ControllerConnection", "describe"]


class ControllerConnection:
    """A connection to the controller, logged in as ``avatar``.

    ``source`` names the key file in error messages.
    """

    def __init__(self, avatar: pb.RemoteReference, source: str = "the key file") -> None:
        self._avatar = avatar
        self.source = source
        #: ``host:port`` of the controller, or ``None`` over a transport without one.
        self.address: str | None = _peer_address(avatar)
        #: True once :meth:`disconnect` (or :meth:`close`) was called.
        self.closed = False
        #: How many engines the controller's last answer about all of them showed;
        #: ``None`` before any. Kept for ``repr()``; nothing asks the controller for it.
        self.last_engine_count: int | None = None

    @property
    def broker(self) -> pb.Broker:
        """The connection's PB broker (its ``transport`` is ``None`` once it is gone)."""
        return self._avatar.broker

    @property
    def connected(self) -> bool:
        """Whether the connection to the controller is still open."""
        return not self._avatar.broker.disconnected

    def disconnect(self) -> None:
        """Close the connection to the controller (work already sent runs on)."""
        self.closed = True
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    def close(self) -> Deferred:
        """Disconnect; fires with ``None``."""
        self.disconnect()
        return succeed(None)

    def _remote(self, method: str, *args: Any) -> Deferred:
        """Call the controller's ``method``; errors arrive as ipkernel's exceptions."""
        return call_controller(self._avatar, self.source, method, *args).addErrback(
            self._saw_no_engines
        )

    def _saw_no_engines(self, failure: Failure) -> Failure:
        if failure.check(NoEnginesRegistered):
            self.last_engine_count = 0
        return failure

    def __repr__(self) -> str:
        return describe(type(self).__name__, self)


def describe(name: str, connection: ControllerConnection, **settings: Any) -> str:
    """``<name host:port, 4 engines, key=value, ...>`` for a client over ``connection``.

    The engine count is the last one seen (``engines unknown`` before any); a closed
    connection shows ``closed``, one the controller's side ended ``disconnected``.
    """
    if connection.closed:
        state = "closed"
    elif not connection.connected:
        state = "disconnected"
    elif connection.last_engine_count is None:
        state = "engines unknown"
    else:
        count = connection.last_engine_count
        state = f"{count} engine{'' if count == 1 else 's'}"
    head = f"{name} {connection.address or 'address unknown'}"
    return "<" + ", ".join([head, state, *(f"{k}={v!r}" for k, v in settings.items())]) + ">"


def _peer_address(avatar: pb.RemoteReference) -> str | None:
    transport = avatar.broker.transport
    peer = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
