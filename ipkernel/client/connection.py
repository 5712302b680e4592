"""What both asynchronous clients are: a logged-in connection to one controller.

:class:`ControllerConnection` holds the avatar, calls the controller, closes the
connection, and shows itself in ``repr()`` without asking the controller anything: the
controller's address, how many engines the last answer about all of them showed, and
whether the connection is closed. :func:`describe` makes that text, for the blocking
clients too.

When the controller goes away (it crashed, or was restarted with ``--reuse-keys``), a
call in flight fails with :class:`~ipkernel.errors.ControllerRestarted`, and the next call
logs in again with the same key file (:meth:`ControllerConnection.reconnect`), waiting up
to :attr:`ControllerConnection.reconnect_timeout` seconds for the controller to be back.
A subclass puts back what it set up on the connection in :meth:`_reconnected`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel.errors import ControllerRestarted, ControllerUnreachable, NoEnginesRegistered
from ipkernel.wire.connect import call_controller, relogin

# Seconds between attempts to log in again: the first, and at most.
_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0

__all__ = ["ControllerConnection", "describe"]


class ControllerConnection:
    """A connection to the controller, logged in as ``avatar``.

    ``source`` names the key file in error messages.
    """

    #: Seconds a call waits for a controller that went away to accept a new login before
    #: it fails with :class:`~ipkernel.errors.ControllerUnreachable` (0: try once).
    reconnect_timeout: float = 0.0

    def __init__(self, avatar: pb.RemoteReference, source: str = "the key file") -> None:
        self._avatar = avatar
        # How to log in again (None over a connection login() did not make).
        self._relogin = relogin(avatar)
        self._reconnecting: list[Deferred] | None = None
        self._pause: Deferred | None = None
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
        if self._pause is not None:
            self._pause.cancel()
        transport = self._avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    def close(self) -> Deferred:
        """Disconnect; fires with ``None``."""
        self.disconnect()
        return succeed(None)

    def reconnect(self) -> Deferred:
        """Log in again with the same key file, if the connection was lost; fires with
        ``None`` once connected (at once if still connected).

        Tries for :attr:`reconnect_timeout` seconds (at least once). Fails with
        :class:`~ipkernel.errors.ControllerUnreachable` if the controller is not back by
        then, or the connection cannot be made again (the client was closed, or was not
        made from a key file), or with :class:`~ipkernel.errors.StaleKeyFile` if the
        controller came back with new keys (no ``--reuse-keys``).
        """
        if self.connected:
            return succeed(None)
        if self.closed or self._relogin is None:
            return fail(
                ControllerUnreachable(
                    f"the connection to the controller ({self.source}) is closed; create a "
                    "new client"
                )
            )
        d: Deferred = Deferred()
        if self._reconnecting is not None:
            self._reconnecting.append(d)
        else:
            self._reconnecting = [d]
            self._log_in_again().addBoth(self._reconnect_done)
        return d

    @inlineCallbacks
    def _log_in_again(self):
        relogin = self._relogin
        assert relogin is not None
        clock = relogin.reactor
        deadline = clock.seconds() + self.reconnect_timeout
        delay = _FIRST_DELAY
        while True:
            try:
                avatar = yield relogin()
                break
            except ControllerUnreachable as exc:
                if clock.seconds() + delay > deadline or self.closed:
                    raise ControllerUnreachable(
                        f"the connection to the controller was lost, and logging in again "
                        f"failed: {exc}. If the controller is restarting (ipcontroller "
                        "--reuse-keys), call again once it is up: the client logs in again "
                        "by itself"
                    ) from None
            self._pause = deferLater(clock, delay, lambda: None)
            try:
                yield self._pause
            except CancelledError:
                raise ControllerUnreachable(
                    f"the client was closed while it waited for the controller ({self.source})"
                ) from None
            finally:
                self._pause = None
            delay = min(delay * 2, _MAX_DELAY)
        if self.closed:
            if avatar.broker.transport is not None:
                avatar.broker.transport.loseConnection()
            raise ControllerUnreachable("the client was closed while it logged in again")
        old_streams = getattr(self._avatar.broker, "streams", None)
        new_streams = getattr(avatar.broker, "streams", None)
        if old_streams is not None and new_streams is not None:
            new_streams.on_shared_opened = old_streams.on_shared_opened
        self._avatar = avatar
        self.address = _peer_address(avatar)
        yield self._reconnected()

    def _reconnect_done(self, result: object) -> None:
        waiting, self._reconnecting = self._reconnecting or [], None
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _reconnected(self) -> Deferred | None:
        """Logged in again after the connection was lost: put back what this client set up
        on the connection before calls go on (a Deferred to wait for, or ``None``)."""
        return None

    def _remote(self, method: str, *args: Any) -> Deferred:
        """Call the controller's ``method``; errors arrive as ipkernel's exceptions.

        Logs in again first if the connection was lost (see :meth:`reconnect`); fails
        with :class:`~ipkernel.errors.ControllerRestarted` if it is lost while the call is
        in flight.
        """
        if not self.connected and not self.closed and self._relogin is not None:
            return self.reconnect().addCallback(lambda _: self._remote(method, *args))
        d = call_controller(self._avatar, self.source, method, *args)
        return d.addErrback(self._call_failed, method)

    def _call_failed(self, failure: Failure, method: str) -> Failure:
        if failure.check(pb.PBConnectionLost, ConnectionLost, ConnectionDone) and not self.closed:
            raise ControllerRestarted(
                f"the connection to the controller at {self.address} was lost while "
                f"{method} was in flight: the controller stopped or restarted. Call again "
                f"once it is back: the client logs in again by itself ({self.source}). The "
                "engines keep their namespaces; whether this call ran is not known"
            )
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
